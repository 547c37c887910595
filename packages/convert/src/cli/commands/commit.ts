/**
 * img commit: write an overlay's data into its backing file, or with -b
 * into any ancestor of its chain (qemu-img commit -b).
 */
import { imageOpenOptions } from '../qemu-objects.js';
import { parseArgs } from '../parse-args.js';
import { isNoSpace, noSpaceExit } from '../no-space.js';
import { ImageError } from '@img/block';
import { checkCacheModes, ExitCode, rateLimitOption } from '../common.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { qemuProgressPrinter } from '../progress.js';
import { openImageFile } from '../../node.js';
import { commitDisk } from '../../maintain.js';
import { commitIntoBase } from '../../node/commit-base.js';
import { type Handler, commonNoOutput, onePath, quietOption, quietIo } from './shared.js';

const HELP = `Usage: img commit [-q] [-f fmt] [-b base] [-d] [-r rate] [-p] <file>

Writes the image's data into its backing file. -d keeps the data in the image
(by default it is emptied). -b names an ancestor further down the chain: the
data of every layer above it goes into it, and (as qemu-img, -b implies -d)
the image and the layers in between keep theirs.

Options (qemu-img 10.1's long names beside the letters):
  -f, --format <fmt>   format of <file> (probed when absent)
  -b, --base <base>    the image of the chain to commit into (default: the backing file)
  -d, --drop           keep the data in <file> after the commit
  -p, --progress       show progress on stderr
  -q, --quiet          print nothing on stdout, and no progress (-q wins over -p)
  -r, --rate-limit <rate>  move at most <rate> bytes of data per second (k, M, G suffixes; 0: no limit)
  -t, --cache <mode>   qemu's cache mode: checked as qemu-img checks it; img picks its own caching

Example:
  img commit overlay.qcow2
  img commit -b base.qcow2 top.qcow2     # top -> mid -> base: base gets mid's and top's data
`;

/** img commit. */
export const commit: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    command: 'commit',
    args: argv,
    options: {
      ...commonNoOutput,
      ...quietOption,
      format: { type: 'string' },
      d: { type: 'boolean' },
      drop: { type: 'boolean' },
      b: { type: 'string' },
      base: { type: 'string' },
      p: { type: 'boolean' },
      progress: { type: 'boolean' },
      t: { type: 'string' },
      cache: { type: 'string' },
      r: { type: 'string' },
      'rate-limit': { type: 'string' },
    },
    allowPositionals: true,
  });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(HELP);
    return 0;
  }
  checkCacheModes(values.t ?? values.cache);
  const rateText = values.r ?? values['rate-limit'];
  const rate = rateText === undefined ? {} : { rateLimit: rateLimitOption(rateText) };
  const path = onePath(positionals);
  const format = values.f ?? values.format;
  const base = values.b ?? values.base;
  const progress = (values.p || values.progress) && !values.quiet ? { onProgress: qemuProgressPrinter(io) } : {};
  // Ctrl-C and SIGTERM stop the copy between chunks: the image still holds all its data, the base part of it.
  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  const signal = controller.signal;
  try {
    if (base !== undefined) {
      await commitIntoBase(path, base, { ...(format !== undefined ? { format } : {}), ...progress, ...rate, signal });
    } else {
      const disk = await openImageFile(path, { ...imageOpenOptions(path, format), readOnly: false, backingWritable: true });
      try {
        await commitDisk(disk, { keepTop: (values.d || values.drop) ?? false, ...progress, ...rate, signal });
      } finally {
        await disk.close();
      }
    }
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(interruptedStatus(), `interrupted; ${path} still holds all its data and its chain reads as before: run img commit again to finish`);
    if (isNoSpace(e)) throw noSpaceExit(e, `${path} still holds all its data and its chain reads as before`);
    throw e;
  } finally {
    removeSignalHandlers();
  }
  io.stdout('Image committed.\n');
  return 0;
};
