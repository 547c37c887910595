/**
 * A named pipe as a conversion's output (`img convert -O qcow2 a.raw
 * fifo`, or `/dev/stdout` when standard output is a pipe): the image is
 * written front to back, as to "-". And as its input (`img convert -f raw
 * <(zcat disk.raw.gz) out.qcow2`, a FIFO, `/dev/stdin` as a pipe): read
 * front to back, as "-" is.
 *
 * Nothing here waits for the other end, and nothing blocks a thread (a
 * thread blocked in a FIFO's open or read would hold the process even at
 * its exit, whatever a Ctrl-C asked). A pipe is taken only while its other
 * end is there: a reader for an output (a process substitution `>(...)`, a
 * reader already waiting in its open, a shell's `| gzip`), a writer for an
 * input (`<(...)`, `cat x |`, a writer waiting in its open: Linux counts it
 * before it waits). A FIFO nobody has open at the other end is refused at
 * once, as every FIFO named as an image was before ("is a FIFO, not an
 * image file", saying what is missing). Once taken, the pipe is read or
 * written as a socket on libuv's event loop, the way Node uses a standard
 * input or output that is a pipe: an abort destroys it at once, whatever
 * the other end does.
 */
import { closeSync, constants, fstatSync, open, read, statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { notAnImageFile, type ImageError } from '@img/block';
import { fsError } from '@img/block/node';

function openNonBlocking(path: string, mode: number): Promise<number> {
  return new Promise((resolve, reject) => open(path, mode | constants.O_NONBLOCK, (e, fd) => (e ? reject(e) : resolve(fd))));
}

/** A FIFO with nobody at its other end: refused as a FIFO named as an image always was, saying what is missing. */
function unpartnered(path: string, missing: string, cause?: unknown): ImageError {
  return notAnImageFile(path, 'a FIFO', {}, cause, `${missing} (a conversion streams through a pipe only while the other end is open)`);
}

/**
 * Opens the FIFO `path` for writing, as a socket (see above), if something
 * has it open for reading; else refuses it (ERR_IMG_INVALID_ARG). Other
 * failures are the file system's error naming `path`.
 */
export async function openPipeOutput(path: string): Promise<Socket> {
  const { Socket } = await import('node:net');
  let fd: number;
  try {
    fd = await openNonBlocking(path, constants.O_WRONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENXIO') throw unpartnered(path, 'nothing has it open for reading', e);
    throw fsError(path, 'open', e);
  }
  return new Socket({ fd, readable: false, writable: true });
}

/** Whether `path` names the open file `fd` of this process, and that is a pipe or a socket. */
function namesStream(path: string, fd: number): boolean {
  try {
    const named = statSync(path, { bigint: true, throwIfNoEntry: false });
    if (!named || !(named.isFIFO() || named.isSocket())) return false;
    const open = fstatSync(fd, { bigint: true });
    return open.dev === named.dev && open.ino === named.ino;
  } catch {
    return false;
  }
}

/**
 * Whether `path` names this process's standard output and that is a pipe or
 * a socket (`/dev/stdout`, `/proc/self/fd/1` under `| gzip`, or a spawning
 * program's socket pair): written as "-" is. A socket cannot be opened by
 * name, and a pipe opened again would be a second writer of the same pipe.
 */
export function isStdoutStream(path: string): boolean {
  return namesStream(path, 1);
}

/**
 * Whether `path` names this process's standard input and that is a pipe or
 * a socket (`/dev/stdin` under `cat disk.img | img convert ...`): read as
 * "-" is.
 */
export function isStdinStream(path: string): boolean {
  return namesStream(path, 0);
}

/** Whether `path` is a named pipe (after links: `/dev/fd/63` of a process substitution is one). */
export function isPipePath(path: string): boolean {
  try {
    return statSync(path, { throwIfNoEntry: false })?.isFIFO() === true;
  } catch {
    return false;
  }
}

/**
 * The bytes of the pipe `path`, front to back, until its writer closes it,
 * if something has it open for writing (a first read without blocking gives
 * bytes, or says EAGAIN: none yet); else (it gives 0 bytes: no writer)
 * refused, ERR_IMG_INVALID_ARG. Read as a socket (see above), which an
 * abort destroys at once.
 */
export async function* readPipe(path: string, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  let fd: number;
  try {
    fd = await openNonBlocking(path, constants.O_RDONLY);
  } catch (e) {
    throw fsError(path, 'open', e);
  }
  let first: Uint8Array | undefined;
  try {
    const buffer = new Uint8Array(64 * 1024);
    const n = await new Promise<number>((resolve, reject) => read(fd, buffer, 0, buffer.length, null, (e, got) => (e ? reject(e) : resolve(got)))).catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return -1;
      throw fsError(path, 'read', e);
    });
    if (n === 0) throw unpartnered(path, 'nothing has it open for writing');
    if (n > 0) first = buffer.subarray(0, n);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  const { Socket } = await import('node:net');
  const socket = new Socket({ fd, readable: true, writable: false });
  const onAbort = () => socket.destroy();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (first) yield first;
    for await (const chunk of socket) yield chunk as Uint8Array;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    socket.destroy();
  }
}
