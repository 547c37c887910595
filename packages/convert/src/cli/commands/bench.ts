/**
 * img bench: qemu-img bench's sequential I/O benchmark, through the Disk
 * API (the path a program using the SDK takes): COUNT requests of
 * BUFFER_SIZE bytes, DEPTH in flight, the first at OFFSET and each next
 * STEP further on (wrapping at the end of the image, as qemu-img's do).
 */
import { parseArgs } from '../parse-args.js';
import { abortError, ImageError, parseSize, type Disk } from '@img/block';
import { ExitCode, UsageError } from '../common.js';
import { isCacheMode } from '../../cache-mode.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { type Handler, commonNoOutput, onePath, openForCommand, quietIo, quietOption, shareOption } from './shared.js';

/** Requests between two turns of the event loop (see run). */
const YIELD_EVERY = 256;

/** The most buffer memory a run takes (DEPTH buffers of BUFFER_SIZE): qemu-img allocates them all up front too. */
const MAX_BUFFER_BYTES = 1024 * 1024 * 1024;

const HELP = `Usage: img bench [-c count] [-d depth] [-f fmt] [--flush-interval=n] [--no-drain] [-o offset]
                 [--pattern=byte] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] <file>

Runs qemu-img bench's sequential I/O benchmark through img's Disk API: <count> read requests
(or write requests with -w) of <buffer_size> bytes each, <depth> in parallel, the first at
<offset> and each next <step_size> further on, wrapping at the end of the image. A request that
runs past the end of the image fails the run (exit 1), as with qemu-img.

  -c <count>             requests (default 75000)
  -d <depth>             requests in flight (default 64)
  -s <buffer_size>       bytes per request (default 4k; k, M, G suffixes)
  -S <step_size>         distance from one request to the next (default: the buffer size)
  -o <offset>            where the first request starts (default 0)
  -w                     write (zeros, or --pattern's byte) instead of reading
  --pattern=<byte>       the byte written (0-255)
  --flush-interval=<n>   with -w: flush every <n> requests, after those in flight (at least <depth>)
  --no-drain             with --flush-interval: flush without waiting for the requests in flight
  -t <cache>             the cache mode, as qemu-img's: none and directsync read and write around
                         the page cache (O_DIRECT); writethrough and directsync flush after each
                         write; writeback (the default) and unsafe do neither
  -U                     read without taking the image's locks (not with -w)
  -i <aio>, -n           qemu-img's AIO backends (threads, native, io_uring): accepted, values checked;
                         img has its own I/O path
  -q                     print nothing

Example:
  img bench -c 100000 -d 16 -s 4k disk.qcow2
  img bench -w -s 64k -c 16384 --flush-interval=1024 disk.qcow2
`;

/** A whole number at least `min` from `text`, or qemu-img's refusal. */
function count(text: string | undefined, fallback: number, min: number, refusal: string): number {
  if (text === undefined) return fallback;
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(refusal);
  return n;
}

/** A size with qemu-img's suffixes from `text`, or qemu-img's refusal for `what`. */
function size(text: string | undefined, fallback: number, what: string): number {
  if (text === undefined) return fallback;
  try {
    return parseSize(text, what);
  } catch {
    throw new UsageError(`Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`);
  }
}

/** img bench. */
export const bench: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    command: 'bench',
    args: argv,
    options: {
      ...commonNoOutput,
      ...quietOption,
      ...shareOption,
      c: { type: 'string' },
      d: { type: 'string' },
      s: { type: 'string' },
      S: { type: 'string' },
      o: { type: 'string' },
      w: { type: 'boolean' },
      pattern: { type: 'string' },
      'flush-interval': { type: 'string' },
      'no-drain': { type: 'boolean' },
      t: { type: 'string' },
      i: { type: 'string' },
      n: { type: 'boolean' },
    },
    allowPositionals: true,
  });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(HELP);
    return 0;
  }
  const requests = count(values.c, 75000, 0, 'Invalid request count specified');
  // qemu-img takes a depth of 0 and then never finishes: img refuses it.
  const depth = count(values.d, 64, 1, 'Invalid queue depth specified');
  const bufferSize = size(values.s, 4096, 'buffer size');
  const step = values.S === undefined ? bufferSize : size(values.S, 0, 'step_size');
  const offset = size(values.o, 0, 'offset');
  const write = values.w ?? false;
  const pattern = count(values.pattern, 0, 0, 'Invalid pattern byte specified');
  if (pattern > 255) throw new UsageError('Invalid pattern byte specified');
  const flushInterval = count(values['flush-interval'], 0, 0, 'Invalid flush interval specified');
  const drain = !(values['no-drain'] ?? false);
  if (values.t !== undefined && !isCacheMode(values.t)) throw new UsageError('Invalid cache mode');
  if (values.i !== undefined && !['threads', 'native', 'io_uring'].includes(values.i)) throw new UsageError(`Invalid aio option: ${values.i}`);
  if (flushInterval && !write) throw new UsageError('--flush-interval is only available in write tests');
  if (flushInterval && flushInterval < depth) throw new UsageError("Flush interval can't be smaller than depth");
  if (write && values['force-share']) throw new UsageError('-U reads without locks: it cannot go with -w, which writes');
  const buffers = Math.min(depth, Math.max(1, requests));
  if (buffers * bufferSize > MAX_BUFFER_BYTES) {
    throw new UsageError(`${buffers} requests of ${bufferSize} bytes in flight need ${buffers * bufferSize} bytes of buffers: at most ${MAX_BUFFER_BYTES} (lower -d or -s)`);
  }
  const path = onePath(positionals);
  const disk = await openForCommand(path, values, !write, undefined, {
    ...(values.t === 'none' || values.t === 'directsync' ? { direct: true } : {}),
    ...(values.t === 'unsafe' ? { cache: 'unsafe' as const } : {}),
  });
  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  try {
    io.stdout(`Sending ${requests} ${write ? 'write' : 'read'} requests, ${bufferSize} bytes each, ${depth} in parallel (starting at offset ${offset}, step size ${step})\n`);
    if (flushInterval) io.stdout(`Sending flush every ${flushInterval} requests\n`);
    const syncEach = write && (values.t === 'writethrough' || values.t === 'directsync');
    const seconds = await run(disk, { requests, depth, bufferSize, step, offset, write, syncEach, pattern, flushInterval, drain, buffers, signal: controller.signal });
    io.stdout(`Run completed in ${seconds.toFixed(3)} seconds.\n`);
    // Closing writes what a write test left in caches (the formats' tables): part of the run's cost, as in qemu-img.
    await disk.close();
  } catch (e) {
    await disk.close().catch(() => undefined);
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(interruptedStatus(), 'interrupted');
    throw e;
  } finally {
    removeSignalHandlers();
  }
  return 0;
};

interface Run {
  requests: number;
  depth: number;
  bufferSize: number;
  step: number;
  offset: number;
  write: boolean;
  /** Flush after each write (the writethrough cache modes). */
  syncEach: boolean;
  pattern: number;
  flushInterval: number;
  drain: boolean;
  buffers: number;
  signal: AbortSignal;
}

/** Runs the requests; resolves to the seconds they took, or rejects with the first failure (after those in flight settle). */
async function run(disk: Disk, r: Run): Promise<number> {
  const free = Array.from({ length: r.buffers }, () => new Uint8Array(r.bufferSize).fill(r.pattern));
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let offset = r.offset;
  const started = performance.now();
  try {
    for (let issued = 0; issued < r.requests && !failure; issued++) {
      // Reads the page cache answers complete without leaving the microtask queue (the main thread's RWF_NOWAIT
      // read): without a turn of the event loop now and then, Ctrl-C's handler never ran and a run of 3 M cached
      // reads went on to its end.
      if (issued % YIELD_EVERY === 0) await new Promise((resolve) => setImmediate(resolve));
      if (r.signal.aborted) throw abortError(r.signal, 'bench');
      if (r.flushInterval && issued > 0 && issued % r.flushInterval === 0) {
        if (r.drain) await Promise.all(inFlight);
        await disk.flush();
      }
      while (inFlight.size >= r.depth) await Promise.race(inFlight);
      if (failure) break;
      const buffer = free.pop()!;
      const at = offset;
      const request = r.write ? disk.write(at, buffer).then(() => (r.syncEach ? disk.flush() : undefined)) : disk.readInto(at, buffer).then(() => undefined);
      const p: Promise<void> = request
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => {
          inFlight.delete(p);
          free.push(buffer);
        });
      inFlight.add(p);
      offset += r.step;
      // As qemu-img: the position wraps at the end of the image (a request that then runs past the end fails).
      offset = disk.size > 0 ? offset % disk.size : 0;
    }
  } finally {
    await Promise.all(inFlight);
  }
  if (failure) {
    const e = failure.error;
    throw new ExitCode(1, `Failed request: ${ImageError.isInstance(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.message : String(e)}`);
  }
  return (performance.now() - started) / 1000;
}
