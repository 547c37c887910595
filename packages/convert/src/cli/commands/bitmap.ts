/**
 * img bitmap: qemu-img bitmap. Adds, removes, clears, enables, disables
 * and merges persistent dirty bitmaps of a qcow2 image, several operations
 * in one call, in the order given.
 */
import { statSync } from 'node:fs';
import { parseArgs } from '../parse-args.js';
import { isNoSpace, noSpaceExit } from '../no-space.js';
import { ImageError, invalidArg, parseSize, unsupported } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { editQcow2Bitmaps, readQcow2DirtyBitmap, type Qcow2BitmapOp, type Qcow2DirtyBitmap } from '@img/qcow2';
import { UsageError } from '../common.js';
import { defaultRegistry } from '../../formats.js';
import { type Handler, commonNoOutput, openForCommand, quietOption, quietIo } from './shared.js';

const HELP = `Usage: img bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--disabled] [-f fmt] <file> <bitmap>

Changes persistent dirty bitmap <bitmap> of a qcow2 image, as qemu-img bitmap:
  --add             create it, enabled (recording writes); -g sets its granularity
                    (a power of two from 512 to 2G; default: the cluster size, 4k..64k);
                    --disabled creates it disabled
  --remove          remove it
  --clear           clear every bit
  --enable          start recording writes
  --disable         stop recording writes
  --merge SOURCE    set every bit that bitmap SOURCE has set (of this image, or of
                    -b source_file, whose format -F gives)
Operations run in the order given; one that fails leaves the image unchanged.
'img info' lists the bitmaps.

Example:
  img bitmap --add -g 64k disk.qcow2 backup-0
`;

/** The operation names, as `--name` options. */
const OPS = ['add', 'remove', 'clear', 'enable', 'disable', 'merge'] as const;

/** img bitmap. */
export const bitmap: Handler = async (argv, io) => {
  const { values, positionals, tokens } = parseArgs({
    command: 'bitmap',
    args: argv,
    options: {
      ...commonNoOutput,
      ...quietOption,
      add: { type: 'boolean', multiple: true },
      remove: { type: 'boolean', multiple: true },
      clear: { type: 'boolean', multiple: true },
      enable: { type: 'boolean', multiple: true },
      disable: { type: 'boolean', multiple: true },
      disabled: { type: 'boolean' },
      merge: { type: 'string', multiple: true },
      b: { type: 'string' },
      F: { type: 'string' },
      g: { type: 'string' },
    },
    allowPositionals: true,
    tokens: true,
  });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(HELP);
    return 0;
  }
  const kinds = tokens.filter((t) => t.kind === 'option' && (OPS as readonly string[]).includes(t.name));
  if (kinds.length === 0) throw new UsageError('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  if (positionals.length !== 2) throw new UsageError('Expecting filename and bitmap name');
  const [path, name] = positionals as [string, string];
  const has = (op: string) => kinds.some((t) => t.kind === 'option' && t.name === op);
  if (values.g !== undefined && !has('add')) throw new UsageError('granularity only supported with --add');
  if (values.disabled && !has('add')) throw new UsageError('--disabled only supported with --add');
  if (values.b !== undefined && !has('merge')) throw new UsageError('Merge bitmap source file only supported with --merge');
  if (values.F !== undefined && values.b === undefined) throw new UsageError('-F only supported with -b');
  let granularity: number | undefined;
  if (values.g !== undefined) {
    try {
      granularity = parseSize(values.g, 'granularity');
    } catch {
      throw new UsageError('Invalid granularity specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
    }
    // As qemu-img: -g 0 is no granularity given (the default).
    if (granularity === 0) granularity = undefined;
  }

  // The format: qcow2 is the only one with persistent bitmaps.
  let format = values.f;
  if (format === undefined) {
    // The format alone: the image without its backing file, as qemu-img bitmap opens it (an encrypted backing file
    // needs no passphrase here).
    const probe = await openForCommand(path, values, true, undefined, { noBacking: true });
    format = probe.format;
    await probe.close();
  }
  format = defaultRegistry().require(format).name;
  if (format !== 'qcow2') {
    if (has('add')) throw unsupported(format, path, `Operation add on bitmap ${name} failed: Can't store persistent bitmaps to ${path}: Operation not supported`);
    const first = kinds[0]!;
    throw invalidArg(format, `${path}: Operation ${first.kind === 'option' ? first.name : ''} on bitmap ${name} failed: Dirty bitmap '${name}' not found`, { field: 'bitmap' });
  }

  // Bitmaps of another image (-b) are read first, read-only; the same file as the target is this image.
  const external = new Map<string, Qcow2DirtyBitmap>();
  const otherFile = values.b !== undefined && !sameFile(values.b, path) ? values.b : undefined;
  if (otherFile !== undefined) {
    const sourceFormat = values.F ?? (await probeFormat(otherFile, values));
    for (const source of values.merge ?? []) {
      if (external.has(source)) continue;
      external.set(source, await readSource(otherFile, sourceFormat, source, name));
    }
  }
  const ops: Qcow2BitmapOp[] = [];
  for (const t of kinds) {
    if (t.kind !== 'option') continue;
    const op = t.name as (typeof OPS)[number];
    if (op === 'add') ops.push({ op, name, ...(granularity !== undefined ? { granularity } : {}), ...(values.disabled ? { disabled: true } : {}) });
    else if (op === 'merge') ops.push({ op, name, source: external.get(t.value!) ?? t.value! });
    else ops.push({ op, name });
  }
  const storage = await FileStorage.open(path, { readOnly: false });
  try {
    await editQcow2Bitmaps(storage, ops, { resolver: fileResolver });
  } catch (e) {
    // Bitmaps never change what the guest reads.
    if (isNoSpace(e)) throw noSpaceExit(e, `${path} reads as before`);
    throw e;
  } finally {
    await storage.close();
  }
  return 0;
};

function sameFile(a: string, b: string): boolean {
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

async function probeFormat(path: string, values: { untrusted?: boolean; 'force-format'?: boolean }): Promise<string> {
  const disk = await openForCommand(path, values, true, undefined, { noBacking: true });
  const format = disk.format;
  await disk.close();
  return format;
}

/** Bitmap `source` of another image, refused with qemu-img's words where it has no such usable bitmap. */
async function readSource(file: string, format: string, source: string, name: string): Promise<Qcow2DirtyBitmap> {
  const fail = (why: string) => invalidArg('qcow2', `${file}: Operation merge on bitmap ${name} failed: ${why}`, { field: 'bitmap' });
  if (defaultRegistry().require(format).name !== 'qcow2') throw fail(`Dirty bitmap '${source}' not found`);
  const storage = await FileStorage.open(file, { readOnly: true });
  try {
    return await readQcow2DirtyBitmap(storage, source, file);
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_INVALID_ARG') throw fail(`Dirty bitmap '${source}' not found`);
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_CORRUPT' && ['bitmap flags', 'autoclear_features'].includes(String(e.data.field))) throw fail(`Bitmap '${source}' is inconsistent and cannot be used`);
    throw e;
  } finally {
    await storage.close();
  }
}
