/**
 * Storage over a local file: positional reads and writes (pread/pwrite,
 * pwritev) through node:fs's callback functions on the FileHandle's
 * descriptor, the rest through the FileHandle. flush() is fdatasync. Where the optional
 * native helper was built at install time, `ranges()` reports the file's
 * holes (SEEK_DATA/SEEK_HOLE) so a raw copy never reads them. Opens take
 * qemu's image locks (image-lock.ts; the README's "Locking" section).
 */
import { constants as fsConstants, type Stats, read as fsRead, write as fsWrite, writev as fsWritev } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ERROR_CODES, ImageError, invalidArg, ioError, notAnImageFile, notFoundError } from '../errors.js';
import type { Storage, StorageRange } from '../storage.js';
import { lockImage, type ImageLock, type LockState } from './image-lock.js';
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
  /**
   * Take qemu's image locks (default true): a read-only open takes a shared
   * lock that refuses writers, a read-write open one that refuses every
   * other reader and writer (qemu-img info, qemu-io, a VM, another img).
   * An open that another holder excludes fails with ERR_IMG_LOCKED.
   * `false` takes no locks and checks nothing (qemu's `locking=off`), in
   * either mode: for file systems without byte-range locks, or a caller
   * that coordinates access itself.
   */
  lock?: boolean;
  /**
   * qemu-img's -U (`force-share`): open an image another process holds,
   * even one a running VM writes, without locks or checks. Only for
   * read-only opens (ERR_IMG_INVALID_ARG otherwise); what is read may be
   * inconsistent while the other process writes.
   */
  forceShare?: boolean;
}

/** Options of FileStorage.create. */
export interface FileStorageCreateOptions {
  /** Fail if the file exists (O_EXCL) instead of emptying it. */
  exclusive?: boolean;
  cache?: FileStorageOptions['cache'];
  /** Take qemu's read-write image locks before the file is emptied (default true); see FileStorageOptions.lock. */
  lock?: boolean;
}

/**
 * One sentence for a failed system call: "a.img: open failed: no such file
 * or directory (ENOENT)". Node's message repeats the code and the path
 * ("ENOENT: no such file or directory, open 'a.img'"): only its
 * description is kept. A directory where an image was expected is said so.
 */
function fsError(path: string, what: string, cause: unknown): ImageError {
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

/** What `stat` says a file is, for a message: "a FIFO", "a character device". */
function fileKind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  return 'a special file';
}

/**
 * Refuses (and closes) a descriptor that is neither a regular file nor a
 * block device, before anything is read from it or locked on it: a FIFO or
 * a terminal would block the first read forever (the open itself was made
 * with O_NONBLOCK so that it could not block), and a character device has
 * no size, so no image fits on it. O_NONBLOCK stays set on what is kept:
 * Linux ignores it for regular files and block devices, and node has no
 * fcntl to clear it.
 */
async function refuseNonImageFile(fh: FileHandle, path: string): Promise<void> {
  let st: Stats;
  try {
    st = await fh.stat();
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw fsError(path, 'stat', e);
  }
  if (st.isFile() || st.isBlockDevice()) return;
  await fh.close().catch(() => undefined);
  throw notAnImageFile(path, fileKind(st));
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
  /**
   * How this open is protected by qemu's image locks: `ofd` or `posix` (img
   * holds them), `check-only` (no native helper: other holders were checked
   * in /proc/locks, but img holds nothing), `none`. See image-lock.ts.
   */
  readonly lock: LockState;
  #unlock: (() => void) | undefined;
  #nowait: SeekAddon['nowait'];

  private constructor(path: string, fh: FileHandle, readOnly: boolean, cache: 'writeback' | 'unsafe' = 'writeback', lock: ImageLock = { state: 'none' }) {
    this.name = path;
    this.#fh = fh;
    this.readOnly = readOnly;
    this.cache = cache;
    this.lock = lock.state;
    this.#unlock = lock.release;
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
      throw fsError(this.name, `lseek at ${offset}`, e);
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

  /**
   * Opens an existing file (read-only unless told otherwise), taking qemu's
   * image locks unless `lock: false` or `forceShare`.
   *
   * @example
   * ```ts
   * const s = await FileStorage.open('vm.qcow2', { readOnly: false }); // ERR_IMG_LOCKED while a VM runs on it
   * const peek = await FileStorage.open('vm.qcow2', { forceShare: true }); // qemu-img -U
   * ```
   */
  static async open(path: string, options: FileStorageOptions = {}): Promise<FileStorage> {
    const readOnly = options.readOnly ?? true;
    if (options.forceShare && !readOnly) {
      throw invalidArg('file', `${path}: forceShare (qemu-img -U) can only be used with read-only opens`, { file: path, field: 'forceShare' });
    }
    let fh: FileHandle;
    try {
      fh = await open(path, (readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR) | fsConstants.O_NONBLOCK);
    } catch (e) {
      throw fsError(path, 'open', e);
    }
    await refuseNonImageFile(fh, path);
    const lock = options.lock === false || options.forceShare ? undefined : await FileStorage.#lockOrClose(fh, path, !readOnly);
    return new FileStorage(path, fh, readOnly, options.cache, lock);
  }

  /** Takes the locks on `fh`; when that fails (a holder excludes this open), closes `fh` (releasing what was set) and throws. */
  static async #lockOrClose(fh: FileHandle, path: string, write: boolean): Promise<ImageLock> {
    try {
      return await lockImage(fh, path, write);
    } catch (e) {
      await fh.close().catch(() => undefined);
      if (ImageError.isInstance(e)) throw e;
      throw fsError(path, 'lock', e);
    }
  }

  /**
   * Creates a file, emptying an existing one unless `exclusive` (then it
   * must not exist). The file is opened without truncation first and
   * locked read-write (unless `lock: false`), so an image another process
   * holds is refused before a byte of it is lost.
   *
   * An existing file is emptied through a second descriptor that is closed
   * at once, as qemu-img does. ext4 (`auto_da_alloc`) marks a file
   * truncated to zero for "replace via truncate" and, when a descriptor of
   * it is closed, starts writeback of everything written: for a 1 GiB
   * conversion output that close took 0.6 s. Closed while still empty,
   * the mark costs nothing.
   */
  static async create(path: string, options: FileStorageCreateOptions = {}): Promise<FileStorage> {
    let fh: FileHandle;
    try {
      fh = await open(path, fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_NONBLOCK | (options.exclusive ? fsConstants.O_EXCL : 0), 0o666);
    } catch (e) {
      throw fsError(path, 'create', e);
    }
    await refuseNonImageFile(fh, path);
    const lock = options.lock === false ? undefined : await FileStorage.#lockOrClose(fh, path, true);
    try {
      if ((await fh.stat()).size > 0) await (await open(path, fsConstants.O_WRONLY | fsConstants.O_TRUNC | fsConstants.O_NONBLOCK)).close();
      // Classic (per-process) locks were dropped when the other descriptor closed: take them again.
      if (lock?.state === 'posix') await lockImage(fh, path, true, true);
    } catch (e) {
      lock?.release?.();
      await fh.close().catch(() => undefined);
      if (ImageError.isInstance(e)) throw e;
      throw fsError(path, 'create', e);
    }
    return new FileStorage(path, fh, false, options.cache, lock);
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
      throw fsError(this.name, 'stat', e);
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
      throw fsError(this.name, `read at ${position}`, e);
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
      throw fsError(this.name, `write at ${position}`, e);
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
      throw fsError(this.name, `writev at ${position}`, e);
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
      throw fsError(this.name, 'truncate', e);
    }
  }

  async flush(): Promise<void> {
    this.#check();
    if (this.readOnly || this.cache === 'unsafe') return;
    try {
      await this.#fh.datasync();
    } catch (e) {
      throw fsError(this.name, 'fdatasync', e);
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
      throw fsError(this.name, 'close', e);
    } finally {
      this.#unlock?.();
    }
  }
}
