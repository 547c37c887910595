/**
 * How a failed file system call reads as an ImageError: one sentence with
 * the path, what failed and the errno name, for node:fs rejections and for
 * the native helper's alike.
 */
import { constants as osConstants } from 'node:os';
import { ImageError, ioError, notAnImageFile, notFoundError } from '../errors.js';

/**
 * One sentence for a failed system call: "a.img: open failed: no such file
 * or directory (ENOENT)". Node's message repeats the code and the path
 * ("ENOENT: no such file or directory, open 'a.img'"): only its
 * description is kept. A directory where an image was expected is said so.
 */
export function fsError(path: string, what: string, cause: unknown): ImageError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const data = { errno: code };
  if (code === 'EISDIR') return notAnImageFile(path, 'a directory', data, cause);
  let text = (cause as Error | undefined)?.message ?? String(cause);
  if (code) {
    const syscall = (cause as NodeJS.ErrnoException).syscall;
    if (text.startsWith(`${code}: `)) text = text.slice(code.length + 2);
    if (syscall) text = text.replace(new RegExp(`, ${syscall}(?: '.*')?$`), '');
    text = `${text} (${code})`;
  }
  return (code === 'ENOENT' ? notFoundError : ioError)(path, `${what} failed: ${text}`, data, cause);
}

/** The errno name of a number ("EIO"), for fsError's message. */
export function errnoName(errno: number): string {
  return Object.entries(osConstants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
}

/**
 * A rejection of the native copy loop, its message ("write at 4096: No
 * space left on device") taken apart: what failed, and the description
 * with its first letter in lower case (the C library's starts with a
 * capital; node:fs's, which every other message quotes, does not).
 */
export function nativeCause(e: unknown): { code: string; what: string; description: string; syscall: string; offset: number } | undefined {
  const err = e as { errno?: unknown; message?: unknown; syscall?: unknown; offset?: unknown } | undefined;
  if (typeof err?.errno !== 'number') return undefined;
  const text = String(err.message);
  const colon = text.lastIndexOf(': ');
  const what = colon < 0 ? text : text.slice(0, colon);
  const told = colon < 0 ? text : text.slice(colon + 2);
  return { code: errnoName(err.errno), what, description: told.charAt(0).toLowerCase() + told.slice(1), syscall: String(err.syscall), offset: Number(err.offset) };
}
