/**
 * The subcommands of img, loaded once img knows it runs one (see img.ts).
 */
import { rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ImageError, formatSize, hex, missingFileError, parseSize, unsupported, type Disk, type Extent, type ImageInfo, type Storage } from '@img/block';
import { FileStorage, fileResolver, resolveRelative } from '@img/block/node';
import { amendOptionsFromCli, createOptionsFromCli, printOptionHelp, readOptionText } from './options.js';
import { defaultRegistry } from '../formats.js';
import { imageFormatOf, openImageFile } from '../node.js';
import { assertNotRead, filesOf, identityOfPath, identityOfStorage } from '../node/same-file.js';
import { ExitCode, progressPrinter, UsageError, type Io } from './common.js';
import { humanInfo, qdictSorted, qemuFormatName, snapshotTable, type InfoLayer } from './info-human.js';
import { measureBitmaps, measureRaw } from './measure.js';
import { printfFixed } from './printf.js';
import { commitDisk, rebaseDisk } from '../maintain.js';
import { inspectImage } from '../inspect.js';
import { amendQcow2, QCOW2_AMEND_OPTIONS } from '@img/qcow2';
import { convertMain } from './img-convert.js';

type Handler = (argv: string[], io: Io) => Promise<number>;

const common = {
  f: { type: 'string' },
  output: { type: 'string' },
  untrusted: { type: 'boolean' },
  'force-format': { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** -U / --force-share (qemu-img's): read an image without taking its locks, for the commands that only read. */
const shareOption = { 'force-share': { type: 'boolean', short: 'U' } } as const;

function outputMode(value: string | undefined): 'human' | 'json' {
  if (value === undefined || value === 'human') return 'human';
  if (value === 'json') return 'json';
  throw new UsageError(`--output must be human or json, not "${value}"`);
}

function onePath(positionals: string[], what = '<file>'): string {
  if (positionals.length !== 1) throw new UsageError(`expected ${what}`);
  return positionals[0]!;
}

async function open(path: string, values: { f?: string; untrusted?: boolean; 'force-format'?: boolean; 'force-share'?: boolean }, readOnly = true): Promise<Disk> {
  return openImageFile(path, {
    ...(values.f !== undefined ? { format: values.f } : {}),
    readOnly,
    untrusted: values.untrusted ?? false,
    forceFormat: values['force-format'] ?? false,
    forceShare: values['force-share'] ?? false,
  });
}

/** qemu-img info's JSON for an image. */
export function infoJson(path: string, info: ImageInfo, actualSize: number): Record<string, unknown> {
  const out: Record<string, unknown> = {
    'virtual-size': info.virtualSize,
    filename: path,
    format: qemuFormatName(info.format),
    'actual-size': actualSize,
  };
  if (info.clusterSize !== undefined) out['cluster-size'] = info.clusterSize;
  if (info.backingFile !== undefined) out['backing-filename'] = info.backingFile;
  if (info.fullBackingFile !== undefined) out['full-backing-filename'] = info.fullBackingFile;
  if (info.backingFormat !== undefined) out['backing-filename-format'] = info.backingFormat;
  out['dirty-flag'] = info.dirty ?? false;
  if (info.snapshots?.length) {
    out.snapshots = info.snapshots.map((s) => ({
      id: s.id,
      name: s.name,
      'vm-state-size': s.vmStateSize,
      'date-sec': s.dateSec,
      'date-nsec': s.dateNsec,
      'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
      'vm-clock-nsec': s.vmClockNsec % 1e9,
      ...(s.icount !== undefined ? { icount: s.icount } : {}),
    }));
  }
  if (info.formatSpecific) out['format-specific'] = { type: qemuFormatName(info.format), data: info.formatSpecific };
  return out;
}

/**
 * A name stored in an image, read from where the image is (qemu's
 * path_combine): absolute names as they are, relative ones after the
 * image's directory as the image's path spells it ("dir/base.qcow2").
 */
function combinePath(imagePath: string, name: string): string {
  if (isAbsolute(name)) return name;
  return imagePath.slice(0, imagePath.lastIndexOf('/') + 1) + name;
}

/** The backing image (qcow2) or parent (VHD) of an open disk, if it has one open. */
function backingOf(disk: Disk): Disk | undefined {
  return disk.backing ?? (disk as { parent?: Disk }).parent;
}

async function describe(disk: Disk, path: string): Promise<InfoLayer> {
  const data: ImageInfo = { ...((await disk.info?.()) ?? { format: disk.format, virtualSize: disk.size }) };
  // The full name is the stored one read from the image's directory, as qemu-img names it (a relative image path gives a relative name).
  // VHD's is the parent locator that was found, which may name another file than the stored name.
  if (data.backingFile !== undefined && (data.fullBackingFile === undefined || data.format === 'qcow2')) data.fullBackingFile = combinePath(path, data.backingFile);
  let actual = 0;
  try {
    actual = (await stat(path)).blocks * 512;
  } catch {
    actual = 0;
  }
  // As qemu-img: the disk size of an image kept in several files (vmdk extents) counts them all.
  const extents = data.formatSpecific?.extents;
  if (Array.isArray(extents)) {
    for (const e of extents as Array<{ filename?: unknown }>) {
      if (typeof e.filename !== 'string' || e.filename === '' || e.filename === path) continue;
      actual += await stat(e.filename).then((s) => s.blocks * 512, () => 0);
    }
  }
  return { data, actual, path };
}

const info: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, ...shareOption, 'backing-chain': { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img info [-f fmt] [-U] [--backing-chain] [--output=human|json] [--untrusted] <file>\n\nExample:\n  img info --backing-chain disk.qcow2\n');
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  // Without --backing-chain the backing file is not needed: do not open it.
  const disk = await openImageFile(path, {
    ...(values.f !== undefined ? { format: values.f } : {}),
    untrusted: values.untrusted ?? false,
    forceFormat: values['force-format'] ?? false,
    forceShare: values['force-share'] ?? false,
    noBacking: !values['backing-chain'],
  });
  try {
    const layers = [await describe(disk, path)];
    if (values['backing-chain']) {
      // Each layer is named as the one above names it, as in qemu-img's list.
      for (let b = backingOf(disk); b; b = backingOf(b)) layers.push(await describe(b, layers[layers.length - 1]!.data.fullBackingFile ?? b.storage.name));
    }
    if (mode === 'json') {
      const objects = layers.map((l) => infoJson(l.path, l.data, l.actual));
      io.stdout(JSON.stringify(qdictSorted(values['backing-chain'] ? objects : objects[0]), null, 4) + '\n');
    } else {
      io.stdout(layers.map(humanInfo).join('\n'));
    }
    return 0;
  } finally {
    await disk.close();
  }
};

/** One entry of qemu-img map --output=json for an extent. */
export function mapEntry(e: Extent): Record<string, unknown> {
  const out: Record<string, unknown> = {
    start: e.offset,
    length: e.length,
    depth: e.depth ?? 0,
    present: e.kind !== 'hole',
    zero: e.kind !== 'data',
    data: e.kind === 'data',
  };
  if (e.hostOffset !== undefined) out.offset = e.hostOffset;
  return out;
}

/**
 * The names qemu-img gives the files of a chain: the image as the command
 * line names it, and each backing file and data file as the layer above
 * names it, read from that layer's directory. Keyed by resolved path (what
 * an extent's `file` resolves to).
 */
async function layerNames(disk: Disk, path: string): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let name = path;
  for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer)) {
    names.set(resolve(layer.storage.name), name);
    const info = await layer.info?.();
    const dataFile = info?.formatSpecific?.['data-file'];
    if (typeof dataFile === 'string') names.set(resolve(dirname(resolve(layer.storage.name)), dataFile), combinePath(name, dataFile));
    if (info?.backingFile === undefined) break;
    name = combinePath(name, info.backingFile);
  }
  return names;
}

/** A map entry as qemu-img prints one: `{ "start": 0, "length": 512, ... }`, spaced as its JSON writer spaces it. */
function mapEntryText(entry: Record<string, unknown>): string {
  return `{ ${Object.entries(entry)
    .map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`)
    .join(', ')}}`;
}

const map: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, ...shareOption }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img map [-f fmt] [-U] [--output=human|json] <file>\n\nExample:\n  img map --output=json disk.qcow2\n');
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const disk = await open(path, values);
  try {
    if (mode === 'json') {
      const rows: string[] = [];
      for await (const e of disk.extents({ hostOffsets: true })) rows.push(mapEntryText(mapEntry(e)));
      io.stdout(`[${rows.join(',\n')}]\n`);
    } else {
      // qemu-img's columns: 16 wide, offsets in printf's %#x (plain 0 for zero).
      const hex16 = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
      const names = await layerNames(disk, path);
      io.stdout(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for await (const e of disk.extents({ hostOffsets: true })) {
        if (e.kind !== 'data') continue;
        if (e.hostOffset === undefined) {
          // As qemu-img: data that is not stored as itself at an offset of a file cannot be shown in this form.
          throw unsupported(disk.format, path, `the data at guest offset ${hex(e.offset)} is compressed, encrypted or external: it has no offset in the file to show (--output=json lists it)`, { offset: e.offset });
        }
        const file = e.file === undefined ? '' : (names.get(resolve(e.file)) ?? e.file);
        io.stdout(`${hex16(e.offset)}${hex16(e.length)}${hex16(e.hostOffset)}${file}\n`);
      }
    }
    return 0;
  } finally {
    await disk.close();
  }
};

const compare: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, ...shareOption, F: { type: 'string' }, strict: { type: 'boolean', short: 's' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout('Usage: img compare [-f fmt] [-F fmt] [-U] [--strict] <a> <b>\n\nExit status: 0 identical, 1 different, 2 error.\n\nExample:\n  img compare disk.img disk.qcow2\n');
    return 0;
  }
  try {
    if (positionals.length !== 2) throw new UsageError('expected <a> <b>');
    const a = await open(positionals[0]!, values);
    const b = await open(positionals[1]!, { ...values, f: values.F });
    try {
      const diff = await firstDifference(a, b, values.strict ?? false);
      if (diff === undefined) {
        io.stdout('Images are identical.\n');
        return 0;
      }
      io.stdout(diff.message + '\n');
      return 1;
    } finally {
      await a.close();
      await b.close();
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const text = ImageError.isInstance(e) ? `${e.code}: ${e.message}` : (e as Error).message;
    throw new ExitCode(2, text);
  }
};

/** Zero-or-hole ranges of a disk as a sorted list, for skipping reads that cannot differ. */
async function sparseRanges(disk: Disk): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  for await (const e of disk.extents()) if (e.kind !== 'data') out.push([e.offset, e.offset + e.length]);
  return out;
}

/** The first offset at which two disks differ, or undefined if they read the same. */
export async function firstDifference(a: Disk, b: Disk, strict: boolean): Promise<{ offset: number; message: string } | undefined> {
  if (strict && a.size !== b.size) return { offset: Math.min(a.size, b.size), message: `Strict mode: Image size mismatch!` };
  const common = Math.min(a.size, b.size);
  const za = await sparseRanges(a);
  const zb = await sparseRanges(b);
  const chunk = 1024 * 1024;
  const bufA = new Uint8Array(chunk);
  const bufB = new Uint8Array(chunk);
  let ia = 0;
  let ib = 0;
  const zeroUntil = (ranges: Array<[number, number]>, idx: number, pos: number): [number, number] => {
    while (idx < ranges.length && ranges[idx]![1] <= pos) idx++;
    const r = ranges[idx];
    return [idx, r && r[0] <= pos ? r[1] : pos];
  };
  let pos = 0;
  while (pos < common) {
    let endA: number;
    let endB: number;
    [ia, endA] = zeroUntil(za, ia, pos);
    [ib, endB] = zeroUntil(zb, ib, pos);
    const skip = Math.min(endA, endB, common);
    if (skip > pos) {
      pos = skip;
      continue;
    }
    const n = Math.min(chunk, common - pos);
    await a.readInto(pos, bufA.subarray(0, n));
    await b.readInto(pos, bufB.subarray(0, n));
    for (let i = 0; i < n; i++) {
      if (bufA[i] !== bufB[i]) {
        const at = pos + i;
        return { offset: at, message: `Content mismatch at offset ${at}!` };
      }
    }
    pos += n;
  }
  // The longer image must read as zeros past the shorter one's end.
  const longer = a.size > b.size ? a : b;
  for await (const e of longer.extents({ offset: common, length: longer.size - common })) {
    if (e.kind !== 'data') continue;
    for (let p = e.offset; p < e.offset + e.length; p += chunk) {
      const n = Math.min(chunk, e.offset + e.length - p);
      const view = bufA.subarray(0, n);
      await longer.readInto(p, view);
      const i = view.findIndex((x) => x !== 0);
      if (i >= 0) return { offset: p + i, message: `Content mismatch at offset ${p + i}!` };
    }
  }
  return undefined;
}

const create: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, o: { type: 'string', multiple: true }, b: { type: 'string' }, F: { type: 'string' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout('Usage: img create -f fmt [-o key=value,...] [-b backing -F fmt] <file> [size]\n\nExample:\n  img create -f qcow2 -o cluster_size=64k disk.qcow2 10G\n');
    return 0;
  }
  const registry = defaultRegistry();
  const format = values.f ?? 'raw';
  const driver = registry.require(format);
  const optionText = readOptionText(values.o);
  if (optionText.help) {
    printOptionHelp(io, `Supported ${driver.name} options:`, driver.createOptionTable ?? []);
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) throw new UsageError('expected <file> [size]');
  const path = positionals[0]!;
  const options = createOptionsFromCli(io, 'img create', driver, optionText.text);
  let size: number | undefined = positionals[1] !== undefined ? parseSize(positionals[1]) : undefined;
  if (options.size !== undefined) size = parseSize(String(options.size));
  // Files a format keeps beside the image (a vmdk monolithicFlat extent) are created through it.
  options.resolver = fileResolver;
  if (values.b !== undefined) {
    options.backingFile = values.b;
    if (values.F !== undefined) options.backingFormat = values.F;
    options.formats = registry;
    const target = identityOfPath(path);
    {
      // The size comes from the backing file, opened relative to the new image; and a new image
      // must not replace a file of its own backing chain (it would be read after being truncated).
      const backingPath = resolveRelative({ name: values.b, from: { name: path } as Storage });
      const backing = await openImageFile(backingPath, {
        ...(values.F !== undefined ? { format: values.F } : {}),
        registry,
      }).catch((e: unknown) => {
        // Say which image names the missing file, as a backing file missing at open does.
        if (ImageError.isInstance(e) && e.code === 'ERR_IMG_NOT_FOUND' && e.data.file === backingPath) {
          throw missingFileError(driver.name, path, 'backing file', values.b!, backingPath, { cause: e });
        }
        throw e;
      });
      try {
        assertNotRead(target, filesOf(backing), 'new image');
        size ??= backing.size;
      } finally {
        await backing.close();
      }
    }
  }
  if (size === undefined) throw new UsageError('expected a size (or a backing file to take it from)');
  const existed = identityOfPath(path) !== undefined;
  const storage = await FileStorage.create(path);
  try {
    const disk = await driver.create(storage, { ...options, size });
    await disk.flush();
    await disk.close();
  } catch (e) {
    await storage.close().catch(() => undefined);
    // As qemu-img: a failed create leaves no file behind (one that was there is already emptied).
    if (!existed) await rm(path, { force: true }).catch(() => undefined);
    throw e;
  }
  io.stdout(`Formatting '${path}', fmt=${qemuFormatName(driver.name)} size=${size}\n`);
  return 0;
};

/** A size that starts with a minus ("-10G"): an argument of resize, not an option (qemu-img reads it so). */
const NEGATIVE_SIZE = /^-\d+(?:\.\d+)?[a-z]*$/i;

const resize: Handler = async (argv, io) => {
  // "-10G" would read as options -1, -0, -G: take it out before parsing and put it back as the size.
  const dash = argv.indexOf('--');
  const at = argv.findIndex((a, i) => NEGATIVE_SIZE.test(a) && (dash < 0 || i < dash));
  const parsed = parseArgs({
    args: at < 0 ? argv : argv.filter((_, i) => i !== at),
    options: { ...common, shrink: { type: 'boolean' } },
    allowPositionals: true,
  });
  const { values } = parsed;
  const positionals = at < 0 ? parsed.positionals : [...parsed.positionals, argv[at]!];
  if (values.help) {
    io.stdout('Usage: img resize [-f fmt] [--shrink] <file> [+|-]<size>\n\nExample:\n  img resize disk.qcow2 +10G\n');
    return 0;
  }
  if (positionals.length !== 2) throw new UsageError('expected <file> [+|-]<size>');
  const [path, sizeText] = positionals as [string, string];
  const disk = await open(path, values, false);
  try {
    if (!disk.resize) throw unsupported(disk.format, path, 'resizing is not supported for this format');
    const delta = sizeText.startsWith('+') ? 1 : sizeText.startsWith('-') ? -1 : 0;
    const amount = parseSize(delta ? sizeText.slice(1) : sizeText);
    const target = delta === 0 ? amount : disk.size + delta * amount;
    if (target < 0) throw new UsageError('the new size would be negative');
    await disk.resize(target, { shrink: values.shrink ?? false });
    await disk.flush();
  } finally {
    await disk.close();
  }
  io.stdout('Image resized.\n');
  return 0;
};

const check: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, ...shareOption, r: { type: 'string' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout('Usage: img check [-f fmt] [-U] [-r leaks|all] [--output=human|json] <file>\n\nExit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks only.\n\nExample:\n  img check disk.qcow2\n');
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  if (values.r !== undefined && values.r !== 'leaks' && values.r !== 'all') throw new UsageError('-r takes leaks or all');
  if (values.r !== undefined && values['force-share']) throw new UsageError('-U reads without locks: it cannot go with -r, which writes');
  const registry = defaultRegistry();
  const storage = await FileStorage.open(path, { readOnly: values.r === undefined, forceShare: values['force-share'] ?? false });
  let result;
  try {
    // The format comes from the bytes alone (head and tail), as qemu-img check's probe: opening the image to learn it
    // would refuse the very metadata problems check is there to count. The check reads this file only, never its chain.
    const format = await imageFormatOf(storage, {
      registry,
      untrusted: values.untrusted ?? false,
      forceFormat: values['force-format'] ?? false,
      ...(values.f !== undefined ? { format: values.f } : {}),
    });
    const driver = registry.require(format);
    if (!driver.check) throw unsupported(driver.name, path, 'this format does not support checks');
    result = await driver.check(storage, values.r ? { repair: values.r as 'leaks' | 'all' } : {});
  } finally {
    await storage.close();
  }
  if (mode === 'json') {
    const out: Record<string, unknown> = {
      filename: path,
      format: qemuFormatName(result.format),
      'check-errors': result.checkErrors,
    };
    if (result.corruptions) out.corruptions = result.corruptions;
    if (result.leaks) out.leaks = result.leaks;
    if (result.corruptionsFixed) out['corruptions-fixed'] = result.corruptionsFixed;
    if (result.leaksFixed) out['leaks-fixed'] = result.leaksFixed;
    if (result.imageEndOffset !== undefined) out['image-end-offset'] = result.imageEndOffset;
    if (result.totalClusters !== undefined) out['total-clusters'] = result.totalClusters;
    if (result.allocatedClusters !== undefined) out['allocated-clusters'] = result.allocatedClusters;
    if (result.fragmentedClusters !== undefined) out['fragmented-clusters'] = result.fragmentedClusters;
    if (result.compressedClusters !== undefined) out['compressed-clusters'] = result.compressedClusters;
    io.stdout(JSON.stringify(qdictSorted(out), null, 4) + '\n');
  } else {
    for (const m of result.messages) io.stdout(m + '\n');
    if (result.corruptions === 0 && result.leaks === 0 && result.checkErrors === 0) io.stdout('No errors were found on the image.\n');
    if (result.corruptions) io.stdout(`\n${result.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
    if (result.leaks) io.stdout(`\n${result.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
    // qemu-img prints the allocation line only for an image with allocated clusters (the percentages divide by them).
    const { allocatedClusters: allocated, totalClusters: total } = result;
    if (allocated && total) {
      const pct = (n: number | undefined, of: number) => printfFixed((100 * (n ?? 0)) / of, 2);
      io.stdout(`${allocated}/${total} = ${pct(allocated, total)}% allocated, ${pct(result.fragmentedClusters, allocated)}% fragmented, ${pct(result.compressedClusters, allocated)}% compressed clusters\n`);
    }
    if (result.imageEndOffset !== undefined) io.stdout(`Image end offset: ${result.imageEndOffset}\n`);
  }
  if (result.checkErrors) return 1;
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
};

const commit: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, d: { type: 'boolean' }, p: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img commit [-f fmt] [-d] [-p] <file>\n\nWrites the image\'s data into its backing file. -d keeps the data in the image (by default it is emptied).\n\nExample:\n  img commit overlay.qcow2\n');
    return 0;
  }
  const path = onePath(positionals);
  const disk = await openImageFile(path, { ...(values.f !== undefined ? { format: values.f } : {}), readOnly: false, backingWritable: true });
  try {
    await commitDisk(disk, { keepTop: values.d ?? false, ...(values.p ? { onProgress: progressPrinter(io, false) } : {}) });
  } finally {
    await disk.close();
  }
  io.stdout('Image committed.\n');
  return 0;
};

const rebase: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, b: { type: 'string' }, F: { type: 'string' }, u: { type: 'boolean' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout(
      'Usage: img rebase [-f fmt] [-u] -b <backing> [-F fmt] <file>\n\nChanges the backing file. Safe mode (default) copies whatever would change into the image first;\n-u only rewrites the name. -b "" removes the backing file.\n\nExample:\n  img rebase -b new-base.qcow2 -F qcow2 overlay.qcow2\n',
    );
    return 0;
  }
  const path = onePath(positionals);
  if (values.b === undefined) throw new UsageError('expected -b <backing> (use -b "" to remove the backing file)');
  const registry = defaultRegistry();
  const name = values.b === '' ? undefined : values.b;
  const disk = await openImageFile(path, { ...(values.f !== undefined ? { format: values.f } : {}), readOnly: false, registry, noBacking: values.u ?? false });
  let next: Disk | undefined;
  try {
    if (name !== undefined && !values.u) {
      next = await openImageFile(resolveRelative({ name, from: disk.storage }), { ...(values.F !== undefined ? { format: values.F } : {}), registry });
      assertNotRead(identityOfStorage(disk.storage), filesOf(next), 'image');
    } else if (name !== undefined) {
      // Unsafe: the new backing file is not opened, but naming the image itself would make a cycle.
      const named = identityOfPath(resolveRelative({ name, from: disk.storage }));
      if (named) assertNotRead(identityOfStorage(disk.storage), [named], 'image');
    }
    await rebaseDisk(disk, next, name, values.F ?? next?.format, { unsafe: values.u ?? false });
  } finally {
    await next?.close();
    await disk.close();
  }
  return 0;
};

interface SnapshotDisk extends Disk {
  createSnapshot(name: string): Promise<unknown>;
  applySnapshot(idOrName: string): Promise<void>;
  deleteSnapshot(idOrName: string): Promise<void>;
}

const snapshot: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, ...shareOption, l: { type: 'boolean' }, c: { type: 'string' }, a: { type: 'string' }, d: { type: 'string' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout('Usage: img snapshot [-f fmt] (-l [-U] | -c <name> | -a <name> | -d <name>) <file>\n\n-l list, -c create, -a apply (revert to), -d delete.\n\nExample:\n  img snapshot -c before-upgrade disk.qcow2\n');
    return 0;
  }
  const path = onePath(positionals);
  const ops = [values.l ? 'l' : undefined, values.c, values.a, values.d].filter((x) => x !== undefined);
  if (ops.length !== 1) throw new UsageError('expected exactly one of -l, -c <name>, -a <name>, -d <name>');
  if (values['force-share'] && !values.l) throw new UsageError('-U reads without locks: it goes with -l only');
  const disk = await openImageFile(path, {
    ...(values.f !== undefined ? { format: values.f } : {}),
    readOnly: Boolean(values.l),
    noBacking: true,
    forceShare: values['force-share'] ?? false,
  });
  try {
    const s = disk as Partial<SnapshotDisk>;
    if (values.l) {
      const snaps = (await disk.info?.())?.snapshots ?? [];
      if (values.output === 'json') {
        io.stdout(JSON.stringify(infoJson(path, { format: disk.format, virtualSize: disk.size, snapshots: snaps }, 0).snapshots ?? [], null, 4) + '\n');
      } else if (snaps.length) {
        io.stdout(['Snapshot list:', ...snapshotTable(snaps)].join('\n') + '\n');
      }
      return 0;
    }
    if (typeof s.createSnapshot !== 'function') throw unsupported(disk.format, path, 'this format has no internal snapshots');
    if (values.c !== undefined) await s.createSnapshot.call(disk, values.c);
    if (values.a !== undefined) await s.applySnapshot!.call(disk, values.a);
    if (values.d !== undefined) await s.deleteSnapshot!.call(disk, values.d);
    await disk.flush();
    return 0;
  } finally {
    await disk.close();
  }
};

const measure: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, ...shareOption, O: { type: 'string' }, o: { type: 'string', multiple: true }, size: { type: 'string' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout('Usage: img measure -O fmt [-o key=value,...] [-f fmt] [-U] (--size N | <file>) [--output=human|json]\n\nExample:\n  img measure -O qcow2 --size 10G\n  img measure -O qcow2 disk.img\n');
    return 0;
  }
  const mode = outputMode(values.output);
  if (values.O === undefined) throw new UsageError('expected -O <output format>');
  if ((values.size === undefined) === (positionals.length === 0)) throw new UsageError('expected either --size <size> or <file>');
  const registry = defaultRegistry();
  const driver = registry.require(values.O);
  if (!driver.measure && driver.name !== 'raw') throw unsupported(driver.name, undefined, 'this format cannot be measured');
  const optionText = readOptionText(values.o);
  if (optionText.help) {
    printOptionHelp(io, `Supported ${driver.name} options:`, driver.createOptionTable ?? []);
    return 0;
  }
  const options = createOptionsFromCli(io, 'img measure', driver, optionText.text);
  let source: Disk | undefined;
  try {
    if (positionals.length) source = await open(onePath(positionals), values);
    const size = source?.size ?? parseSize(values.size!);
    const result = driver.measure ? await driver.measure({ size, options, ...(source ? { source } : {}) }) : measureRaw(size);
    // qemu-img gives the bitmaps figure for a qcow2 output measured from an image that can hold bitmaps.
    const bitmaps = source && driver.name === 'qcow2' ? await measureBitmaps(source, options) : undefined;
    if (mode === 'json') {
      io.stdout(JSON.stringify(qdictSorted({ ...(bitmaps !== undefined ? { bitmaps } : {}), required: result.required, 'fully-allocated': result.fullyAllocated }), null, 4) + '\n');
    } else {
      io.stdout(`required size: ${result.required}\nfully allocated size: ${result.fullyAllocated}\n${bitmaps !== undefined ? `bitmaps size: ${bitmaps}\n` : ''}`);
    }
    return 0;
  } finally {
    await source?.close();
  }
};

const inspect: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, deep: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout(
      'Usage: img inspect [-f fmt] [--deep] [--output=human|json] <file>\n\nInspects an untrusted image without opening anything it names: format (and mismatches),\nvirtual size, backing files, data files, parents, encryption, corruption. --deep also reads every\nallocated byte (finds compressed clusters that inflate wrongly). Exit 0 safe, 2 unsafe.\n\nExample:\n  img inspect -f qcow2 upload.qcow2\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const storage = await FileStorage.open(path);
  try {
    const report = await inspectImage(storage, { registry: defaultRegistry(), deep: values.deep ?? false, ...(values.f !== undefined ? { format: values.f } : {}) });
    if (mode === 'json') {
      const { info: _info, ...rest } = report;
      io.stdout(JSON.stringify({ filename: path, ...rest }, null, 4) + '\n');
    } else {
      io.stdout(`image: ${path}\nformat: ${report.format ?? 'unknown'}${report.declared && report.declared !== report.format ? ` (declared ${report.declared})` : ''}\n`);
      if (report.virtualSize !== undefined) io.stdout(`virtual size: ${formatSize(report.virtualSize)} (${report.virtualSize} bytes)\n`);
      io.stdout(`safe: ${report.safe ? 'yes' : 'no'}\n`);
      for (const f of report.findings) io.stdout(`  ${f.severity === 'unsafe' ? 'UNSAFE' : 'info'} ${f.code}: ${f.message}\n`);
    }
    return report.safe ? 0 : 2;
  } finally {
    await storage.close();
  }
};

const amend: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, o: { type: 'string', multiple: true } }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img amend [-f fmt] -o key=value[,...] <file>\n\nChanges format options in place (qcow2: lazy_refcounts=on|off, compat=0.10|1.1).\n\nExample:\n  img amend -o compat=0.10 disk.qcow2\n');
    return 0;
  }
  const path = onePath(positionals);
  const optionText = readOptionText(values.o);
  if (optionText.help) {
    printOptionHelp(io, 'Amend options for qcow2:', QCOW2_AMEND_OPTIONS);
    return 0;
  }
  if (Object.keys(optionText.text).length === 0) throw new UsageError('expected -o key=value[,...]');
  const options = amendOptionsFromCli(io, 'img amend', optionText.text);
  let format = values.f;
  if (format === undefined) {
    const probe = await open(path, values);
    format = probe.format;
    await probe.close();
  }
  if (defaultRegistry().require(format).name !== 'qcow2') throw unsupported(format, path, 'amend is supported for qcow2 images only');
  const storage = await FileStorage.open(path, { readOnly: false });
  try {
    await amendQcow2(storage, options);
  } finally {
    await storage.close();
  }
  return 0;
};

/** Each subcommand's body, by name. */
export const commands: Record<string, Handler> = {
  info,
  map,
  check,
  compare,
  create,
  resize,
  commit,
  rebase,
  snapshot,
  measure,
  amend,
  inspect,
  convert: (argv, io) => convertMain('img convert', argv, io),
};

