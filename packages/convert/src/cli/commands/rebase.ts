/**
 * img rebase: change an image's backing file (safe or -u).
 */
import { imageOpenOptions } from '../qemu-objects.js';
import { parseArgs } from '../parse-args.js';
import { isNoSpace, noSpaceExit } from '../no-space.js';
import { ImageError, invalidArg, type Disk } from '@img/block';
import { resolveRelative } from '@img/block/node';
import { checkCacheModes, ExitCode, UsageError } from '../common.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { qemuProgressPrinter } from '../progress.js';
import { defaultRegistry } from '../../formats.js';
import { openImageFile } from '../../node.js';
import { qemuResolverWith } from '../../node/qemu-names.js';
import { assertNotRead, filesOf, identityOfPath, identityOfStorage } from '../../node/same-file.js';
import { rebaseDisk } from '../../maintain.js';
import { type Handler, commonNoOutput, oneOf, onePath, quietOption, quietIo, shareOption, storedBackingFormat } from './shared.js';

const HELP = `Usage: img rebase [-q] [-p] [-U] [-f fmt] [-u] [-c] -b <backing> [-F fmt] <file>

Changes the backing file. Safe mode (default) copies whatever would change into the image first;
-u only rewrites the name. -b "" removes the backing file.

Options (qemu-img 7.2's letters; 10.1's names and its -B beside them):
  -f, --format <fmt>              format of <file> (probed when absent)
  -b, --backing <backing>         the new backing file ("" for none)
  -F, -B, --backing-format <fmt>  its format (qemu-img 10.1 spells it -B, 7.2 -F: both work)
  -u, --backing-unsafe            only rewrite the name and format; copy nothing
  -c, --compress                  write the clusters safe mode copies compressed (qcow2, as qemu 8.2)
  -p, --progress                  show progress on stderr
  -U, --force-share               read the backing files without locks (the image itself is locked)
  -t <cache>, -T <src_cache>      qemu's cache modes: checked as qemu-img checks them; img picks its own caching
  -q, --quiet                     print nothing on stdout, and no progress (-q wins over -p)

Example:
  img rebase -b new-base.qcow2 -F qcow2 overlay.qcow2
  img rebase -c -b "" overlay.qcow2      # flatten into a compressed standalone image
`;

/** img rebase. */
export const rebase: Handler = async (argv, io) => {
  const parsed = parseArgs({
    command: 'rebase',
    args: argv,
    options: {
      ...commonNoOutput,
      ...quietOption,
      format: { type: 'string' },
      b: { type: 'string' },
      backing: { type: 'string' },
      F: { type: 'string' },
      B: { type: 'string' },
      'backing-format': { type: 'string' },
      u: { type: 'boolean' },
      'backing-unsafe': { type: 'boolean' },
      c: { type: 'boolean' },
      compress: { type: 'boolean' },
      p: { type: 'boolean' },
      progress: { type: 'boolean' },
      t: { type: 'string' },
      T: { type: 'string' },
      ...shareOption,
    },
    allowPositionals: true,
  });
  const { positionals } = parsed;
  io = quietIo(io, parsed.values.quiet);
  if (parsed.values.help) {
    io.stdout(HELP);
    return 0;
  }
  checkCacheModes(parsed.values.t, parsed.values.T);
  // -U, as qemu-img: the backing files (old and new) are read without locks; the image itself is always locked.
  const forceShare = parsed.values['force-share'] ?? false;
  const progress = (parsed.values.p || parsed.values.progress) && !parsed.values.quiet ? { onProgress: qemuProgressPrinter(io, 2) } : {};
  // qemu-img 7.2's letters and 10.1's names for the same options (10.1 spells the backing format -B, 7.2 -F).
  const values = {
    f: oneOf('-f', parsed.values.f, '--format', parsed.values.format),
    b: oneOf('-b', parsed.values.b, '--backing', parsed.values.backing),
    F: oneOf('-F', parsed.values.F, '-B', parsed.values.B, '--backing-format', parsed.values['backing-format']),
    u: (parsed.values.u || parsed.values['backing-unsafe']) ?? false,
    c: (parsed.values.c || parsed.values.compress) ?? false,
  };
  const path = onePath(positionals);
  const registry = defaultRegistry();
  values.F = storedBackingFormat(registry, values.F);
  if (values.b === undefined) throw new UsageError('expected -b <backing> (use -b "" to remove the backing file)');
  const name = values.b === '' ? undefined : values.b;
  const disk = await openImageFile(path, {
    ...imageOpenOptions(path, values.f),
    readOnly: false,
    registry,
    noBacking: values.u ?? false,
    ...(forceShare ? { resolver: qemuResolverWith({ forceShare: true }) } : {}),
  });
  let next: Disk | undefined;
  try {
    // As qemu-img 7.2: a qcow2 is not given a backing file without its format (safe mode as well as -u).
    if (name !== undefined && disk.format === 'qcow2' && values.F === undefined) {
      throw invalidArg('qcow2', `${path}: could not change the backing file to '${name}': backing format must be specified (-F)`, { file: path, field: 'backing format' });
    }
    if (name !== undefined && !values.u) {
      next = await openImageFile(resolveRelative({ name, from: disk.storage }), { ...(values.F !== undefined ? { format: values.F } : {}), registry, forceShare });
      assertNotRead(identityOfStorage(disk.storage), filesOf(next), 'image');
    } else if (name !== undefined) {
      // Unsafe: the new backing file is not opened, but naming the image itself would make a cycle.
      const named = identityOfPath(resolveRelative({ name, from: disk.storage }));
      if (named) assertNotRead(identityOfStorage(disk.storage), [named], 'image');
    }
    // Ctrl-C and SIGTERM stop safe mode's copy between units, before the backing file is changed.
    const controller = new AbortController();
    const removeSignalHandlers = abortOnSignals(controller);
    try {
      await rebaseDisk(disk, next, name, values.F ?? next?.format, { unsafe: values.u, compress: values.c, ...progress, signal: controller.signal });
    } catch (e) {
      if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(interruptedStatus(), `interrupted; ${path} keeps its old backing file and reads as before: run img rebase again to finish`);
      if (isNoSpace(e)) throw noSpaceExit(e, `${path} keeps its old backing file and reads as before`);
      throw e;
    } finally {
      removeSignalHandlers();
    }
  } finally {
    await next?.close();
    await disk.close();
  }
  return 0;
};
