/**
 * Storage over a local file: positional reads and writes (pread/pwrite,
 * pwritev) through node:fs's callback functions on the FileHandle's
 * descriptor, the rest through the FileHandle. flush() is fdatasync. Where the optional
 * native helper was built at install time, `ranges()` reports the file's
 * holes (SEEK_DATA/SEEK_HOLE) so a raw copy never reads them.
 */
import { read as fsRead, write as fsWrite, writev as fsWritev } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ERROR_CODES, ImageError } from '../errors.js';
import type { Storage, StorageRange } from '../storage.js';
import { seekAddon, type SeekAddon } from './seek.js';

/**
 * Reads up to this size first try the page cache on the calling thread
 * (RWF_NOWAIT): for a 4 KiB read, the pool's two thread handoffs cost
 * several times the copy. Larger reads go to the pool, where they run in
 * parallel.
 */
const NOWAIT_MAX = 256 * 1024;

export interface FileStorageOptions {
  readOnly?: boolean;
  /**
   * `writeback` (default): flush() is fdatasync. `unsafe`: flush() returns
   * at once and the page cache writes the file back in its own time, as
   * qemu-img's cache=unsafe (what `qemu-img convert` uses for its output).
   * Only for files that are thrown away if the process dies, such as a
   * conversion's output: every flush barrier of a format writer (one or two
   * per allocation) otherwise forces the data written so far to disk.
   */
  cache?: 'writeback' | 'unsafe';
}

/**
 * One sentence for a failed system call: "a.img: open failed: no such file
 * or directory (ENOENT)". Node's message repeats the code and the path
 * ("ENOENT: no such file or directory, open 'a.img'"): only its
 * description is kept. A directory where an image was expected is said so.
 */
function ioError(path: string, what: string, cause: unknown): ImageError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const data = { file: path, errno: code };
  if (code === 'EISDIR') return new ImageError(ERROR_CODES.INVALID_ARG, `${path}: is a directory, not an image file`, { cause, data });
  let text = (cause as Error | undefined)?.message ?? String(cause);
  if (code) {
    const syscall = (cause as NodeJS.ErrnoException).syscall;
    if (text.startsWith(`${code}: `)) text = text.slice(code.length + 2);
    if (syscall) text = text.replace(new RegExp(`, ${syscall}(?: '.*')?$`), '');
    text = `${text} (${code})`;
  }
  return new ImageError(code === 'ENOENT' ? ERROR_CODES.NOT_FOUND : ERROR_CODES.IO, `${path}: ${what} failed: ${text}`, { cause, data });
}

/**
 * A local file as Storage.
 *
 * @example
 * ```ts
 * await using disk = await openRaw(await FileStorage.open('disk.img'));
 * ```
 */
export class FileStorage implements Storage {
  readonly name: string;
  readonly readOnly: boolean;
  #fh: FileHandle;
  #closed = false;
  /** Reads and writes under way on the raw descriptor; close() waits for them (FileHandle's own close would not know of them). */
  #busy = 0;
  #idle: (() => void) | undefined;
  /**
   * Data and hole runs of the file (SEEK_DATA/SEEK_HOLE). Present only when
   * the native helper is available; otherwise callers read everything.
   */
  readonly ranges?: (offset: number, length: number) => Promise<StorageRange[]>;

  readonly cache: 'writeback' | 'unsafe';
  #nowait: SeekAddon['nowait'];

  private constructor(path: string, fh: FileHandle, readOnly: boolean, cache: 'writeback' | 'unsafe' = 'writeback') {
    this.name = path;
    this.#fh = fh;
    this.readOnly = readOnly;
    this.cache = cache;
    const addon = seekAddon();
    this.#nowait = addon?.nowait;
    if (addon) this.ranges = (offset, length) => this.#ranges(addon.seekRanges, offset, length);
  }

  async #ranges(seekRanges: (fd: number, offset: number, length: number) => Float64Array, offset: number, length: number): Promise<StorageRange[]> {
    this.#check();
    let runs: Float64Array;
    try {
      runs = seekRanges(this.#fh.fd, offset, length);
    } catch (e) {
      throw ioError(this.name, `lseek at ${offset}`, e);
    }
    const out: StorageRange[] = [];
    let pos = offset;
    for (let i = 0; i + 1 < runs.length; i += 2) {
      const start = runs[i]!;
      const end = runs[i + 1]!;
      if (start > pos) out.push({ offset: pos, length: start - pos, data: false });
      out.push({ offset: start, length: end - start, data: true });
      pos = end;
    }
    if (pos < offset + length) out.push({ offset: pos, length: offset + length - pos, data: false });
    return out;
  }

  /** Opens an existing file (read-only unless told otherwise). */
  static async open(path: string, options: FileStorageOptions = {}): Promise<FileStorage> {
    const readOnly = options.readOnly ?? true;
    try {
      return new FileStorage(path, await open(path, readOnly ? 'r' : 'r+'), readOnly, options.cache);
    } catch (e) {
      throw ioError(path, 'open', e);
    }
  }

  /**
   * Creates a file, truncating an existing one unless `exclusive`.
   *
   * The descriptor that created (or truncated) the file is closed and the
   * file opened again, as qemu-img does. ext4 (`auto_da_alloc`) marks a file
   * truncated to zero for "replace via truncate" and, when that descriptor
   * is closed, starts writeback of everything written through it: for a
   * 1 GiB conversion output that close took 0.6 s. Closed while still
   * empty, the mark costs nothing.
   */
  static async create(path: string, options: { exclusive?: boolean; cache?: FileStorageOptions['cache'] } = {}): Promise<FileStorage> {
    try {
      await (await open(path, options.exclusive ? 'wx' : 'w')).close();
      return new FileStorage(path, await open(path, 'r+'), false, options.cache);
    } catch (e) {
      throw ioError(path, 'create', e);
    }
  }

  /** The underlying file descriptor (for native helpers). */
  get fd(): number {
    return this.#fh.fd;
  }

  #check(): void {
    if (this.#closed) throw new ImageError(ERROR_CODES.CLOSED, `${this.name}: file is closed`);
  }

  #checkWritable(): void {
    this.#check();
    if (this.readOnly) throw new ImageError(ERROR_CODES.READ_ONLY, `${this.name}: file is open read-only`, { data: { file: this.name } });
  }

  async size(): Promise<number> {
    this.#check();
    try {
      return (await this.#fh.stat()).size;
    } catch (e) {
      throw ioError(this.name, 'stat', e);
    }
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    const n = await this.readInto(position, buf);
    return n === length ? buf : buf.subarray(0, n);
  }

  async readInto(position: number, target: Uint8Array): Promise<number> {
    this.#check();
    let done = 0;
    if (this.#nowait && target.length <= NOWAIT_MAX && target.length > 0) {
      const n = this.#nowait(false, this.#fh.fd, target, position);
      if (n === target.length) return n;
      if (n === -2) this.#nowait = undefined; // not supported here: stop asking
      else if (n > 0) done = n; // partly cached, or the end of the file: the pool does the rest
    }
    try {
      const fd = this.#fh.fd;
      while (done < target.length) {
        const bytesRead = await new Promise<number>((resolve, reject) => {
          this.#busy++;
          fsRead(fd, target, done, target.length - done, position + done, (e, n) => this.#settle(e, n, resolve, reject));
        });
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (e) {
      throw ioError(this.name, `read at ${position}`, e);
    }
    return done;
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    let done = 0;
    try {
      const fd = this.#fh.fd;
      while (done < data.length) {
        done += await new Promise<number>((resolve, reject) => {
          this.#busy++;
          fsWrite(fd, data, done, data.length - done, position + done, (e, n) => this.#settle(e, n, resolve, reject));
        });
      }
    } catch (e) {
      throw ioError(this.name, `write at ${position}`, e);
    }
  }

  /** Writes several buffers at consecutive positions with one writev call. */
  async writev(position: number, chunks: readonly Uint8Array[]): Promise<void> {
    this.#checkWritable();
    const total = chunks.reduce((n, c) => n + c.length, 0);
    try {
      const bytesWritten = await new Promise<number>((resolve, reject) => {
        this.#busy++;
        fsWritev(this.#fh.fd, chunks as Uint8Array[], position, (e, n) => this.#settle(e, n, resolve, reject));
      });
      if (bytesWritten < total) {
        // Short writev: finish the rest piece by piece.
        let skip = bytesWritten;
        let pos = position + bytesWritten;
        for (const c of chunks) {
          if (skip >= c.length) {
            skip -= c.length;
            continue;
          }
          const rest = c.subarray(skip);
          skip = 0;
          await this.write(pos, rest);
          pos += rest.length;
        }
      }
    } catch (e) {
      if (ImageError.isInstance(e)) throw e;
      throw ioError(this.name, `writev at ${position}`, e);
    }
  }

  async truncate(size: number): Promise<void> {
    this.#checkWritable();
    try {
      // Emptying an empty file changes nothing, but on ext4 it would mark the
      // file for writeback on close (see create): skip it.
      if (size === 0 && (await this.#fh.stat()).size === 0) return;
      await this.#fh.truncate(size);
    } catch (e) {
      throw ioError(this.name, 'truncate', e);
    }
  }

  async flush(): Promise<void> {
    this.#check();
    if (this.readOnly || this.cache === 'unsafe') return;
    try {
      await this.#fh.datasync();
    } catch (e) {
      throw ioError(this.name, 'fdatasync', e);
    }
  }

  /**
   * Completes a read or write made on the raw descriptor. They use node:fs's
   * callback functions, not FileHandle's methods: each FileHandle call builds
   * a promise request with its own stats array, which costs the calling
   * thread about as much again as the request itself (4 KiB writes at depth
   * 16: 92k/s through FileHandle, 145k/s with callbacks).
   */
  #settle(e: NodeJS.ErrnoException | null, n: number, resolve: (n: number) => void, reject: (e: unknown) => void): void {
    if (--this.#busy === 0) this.#idle?.();
    if (e) reject(e);
    else resolve(n);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The descriptor stays open until the requests on it have finished, so its number cannot be reused under them.
    while (this.#busy > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    this.#idle = undefined;
    try {
      await this.#fh.close();
    } catch (e) {
      throw ioError(this.name, 'close', e);
    }
  }
}
