/**
 * img resize: grow or shrink an image's virtual size.
 */
import { parseArgs } from '../parse-args.js';
import { ImageError, parseSize, unsupported, type ResizePreallocation } from '@img/block';
import { ExitCode, UsageError } from '../common.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { type Handler, commonNoOutput, openForCommand, quietOption, quietIo } from './shared.js';

/** A size that starts with a minus ("-10G"): an argument of resize, not an option (qemu-img reads it so). */
const NEGATIVE_SIZE = /^-\d+(?:\.\d+)?[a-z]*$/i;

const PREALLOCATION: readonly ResizePreallocation[] = ['off', 'metadata', 'falloc', 'full'];

/** img resize. */
export const resize: Handler = async (argv, io) => {
  // "-10G" would read as options -1, -0, -G: take it out before parsing and put it back as the size.
  const dash = argv.indexOf('--');
  const at = argv.findIndex((a, i) => NEGATIVE_SIZE.test(a) && (dash < 0 || i < dash));
  const parsed = parseArgs({ command: 'resize', args: at < 0 ? argv : argv.filter((_, i) => i !== at), options: { ...commonNoOutput, ...quietOption, shrink: { type: 'boolean' }, preallocation: { type: 'string' } }, allowPositionals: true });
  const { values } = parsed;
  io = quietIo(io, values.quiet);
  const positionals = at < 0 ? parsed.positionals : [...parsed.positionals, argv[at]!];
  if (values.help) {
    io.stdout('Usage: img resize [-q] [-f fmt] [--preallocation=off|metadata|falloc|full] [--shrink] <file> [+|-]<size>\n\n  --preallocation  what to allocate for the space a grow adds (qcow2, raw; default off)\n\nExample:\n  img resize disk.qcow2 +10G\n');
    return 0;
  }
  if (positionals.length !== 2) throw new UsageError('expected <file> [+|-]<size>');
  const [path, sizeText] = positionals as [string, string];
  const preallocation = values.preallocation ?? 'off';
  if (!PREALLOCATION.includes(preallocation as ResizePreallocation)) throw new UsageError(`invalid preallocation mode '${preallocation}' (off, metadata, falloc or full)`);
  const disk = await openForCommand(path, values, false);
  try {
    if (!disk.resize) throw unsupported(disk.format, path, 'resizing is not supported for this format');
    const delta = sizeText.startsWith('+') ? 1 : sizeText.startsWith('-') ? -1 : 0;
    const amount = parseSize(delta ? sizeText.slice(1) : sizeText);
    const target = delta === 0 ? amount : disk.size + delta * amount;
    // As qemu-img: 0 is no size either ("New image size must be positive").
    if (target <= 0) throw new UsageError(`the new size must be positive, not ${target} bytes`);
    if (target < disk.size && preallocation !== 'off') throw new UsageError('preallocation can only be used for growing images');
    if (target < disk.size && !values.shrink) {
      throw new UsageError(`shrinking ${path} from ${disk.size} to ${target} bytes deletes the data past the new end: pass --shrink to do it`);
    }
    // Ctrl-C or SIGTERM stop a preallocating grow between pieces; the image then gets its old size back
    // (what was preallocated goes), as an interrupted qemu-img resize leaves it, so running the same
    // relative resize again does not grow it twice.
    const old = disk.size;
    const controller = new AbortController();
    const removeSignalHandlers = abortOnSignals(controller);
    try {
      await disk.resize(target, { shrink: values.shrink ?? false, preallocation: preallocation as ResizePreallocation, signal: controller.signal });
    } catch (e) {
      const aborted = ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED';
      // A preallocating grow that fails (a full disk) gives the old size back too, as qemu-img leaves it; the
      // failure is what is reported then, whether or not that works.
      if (target > old && preallocation !== 'off' && disk.size !== old) {
        const restored = disk.resize(old, { shrink: true }).then(() => disk.flush());
        await (aborted ? restored : restored.catch(() => undefined));
      }
      if (!aborted) throw e;
      // qcow2's falloc and full grows cut the file back when stopped; metadata frees its clusters but leaves them in
      // the file, as a shrink does: compact cuts them off.
      const space = disk.format === 'qcow2' && preallocation === 'metadata' ? `; img compact ${path} returns the space the preallocation took` : '';
      throw new ExitCode(interruptedStatus(), `interrupted; ${path} keeps its old size (${old} bytes)${space}`);
    } finally {
      removeSignalHandlers();
    }
    await disk.flush();
  } finally {
    await disk.close();
  }
  io.stdout('Image resized.\n');
  return 0;
};
