/**
 * A named pipe as a conversion's output (`img convert -O qcow2 a.raw
 * fifo`, or `/dev/stdout` when standard output is a pipe): the image is
 * written front to back, as to "-".
 *
 * A blocking open of a FIFO waits for a reader, and a blocking write for
 * the reader to read: either holds one of libuv's pool threads, which no
 * Ctrl-C can take back, and the command (which absorbs further signals
 * while it cleans up, see cli/interrupt.ts) would never end. So the pipe is
 * opened without blocking (ENXIO while nobody has it open for reading: tried
 * again every 50 ms until someone does, or the signal aborts) and written as
 * a socket on libuv's event loop, the way Node writes to a standard output
 * that is a pipe: an abort destroys it at once, whatever the reader does.
 */
import { constants, fstatSync, open, statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { abortError } from '@img/block';
import { fsError } from '@img/block/node';

/** How long to wait before trying again to open a pipe that nobody reads yet. */
const READER_POLL_MS = 50;

function openNonBlocking(path: string): Promise<number> {
  return new Promise((resolve, reject) => open(path, constants.O_WRONLY | constants.O_NONBLOCK, (e, fd) => (e ? reject(e) : resolve(fd))));
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Opens the FIFO `path` for writing once something reads it, as a socket
 * (see above). Rejects with ERR_IMG_ABORTED when `signal` aborts first, and
 * with the file system's error (ERR_IMG_IO, ERR_IMG_NOT_FOUND, ...) naming
 * `path` otherwise.
 */
export async function openPipeOutput(path: string, signal: AbortSignal | undefined, what: string): Promise<Socket> {
  const { Socket } = await import('node:net');
  for (;;) {
    if (signal?.aborted) throw abortError(signal, what);
    let fd: number;
    try {
      fd = await openNonBlocking(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw fsError(path, 'open', e);
      await pause(READER_POLL_MS, signal);
      continue;
    }
    return new Socket({ fd, readable: false, writable: true });
  }
}

/**
 * Whether `path` names this process's standard output and that is a pipe or
 * a socket (`/dev/stdout`, `/proc/self/fd/1` under `| gzip`, or a spawning
 * program's socket pair): written as "-" is. A socket cannot be opened by
 * name, and a pipe opened again would be a second writer of the same pipe.
 */
export function isStdoutStream(path: string): boolean {
  try {
    const named = statSync(path, { bigint: true, throwIfNoEntry: false });
    if (!named || !(named.isFIFO() || named.isSocket())) return false;
    const out = fstatSync(1, { bigint: true });
    return out.dev === named.dev && out.ino === named.ino;
  } catch {
    return false;
  }
}
