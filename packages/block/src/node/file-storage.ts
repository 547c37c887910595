/**
 * Storage over a local file: positional reads and writes (pread/pwrite,
 * pwritev) through node:fs's callback functions on the FileHandle's
 * descriptor, the rest through the FileHandle. flush() is fdatasync. Where the optional
 * native helper was built at install time, `ranges()` reports the file's
 * holes (SEEK_DATA/SEEK_HOLE) so a raw copy never reads them. Opens take
 * qemu's image locks (image-lock.ts; the README's "Locking" section).
 */
import { constants as fsConstants, closeSync, fstatSync, ftruncateSync, read as fsRead, readSync, write as fsWrite, writeSync, writev as fsWritev } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { getSystemErrorMap } from 'node:util';
import { ImageError, abortError, invalidArg, ioError, storageClosedError, storageReadOnlyError } from '../errors.js';
import type { RunCopyOptions, RunCopyResult, RunReadResult, Storage, StorageRange } from '../storage.js';
import { lockImage, type ImageLock, type LockState } from './image-lock.js';
import { seekAddon, type SeekAddon } from './seek.js';
import { blockDeviceSize, memoryBacked, openDirect, refuseNonImageFile } from './file-kinds.js';
import { errnoName, fsError, nativeCause } from './fs-errors.js';
import { allocateRead, checkStorageArgs, checkStorageChunks, checkStorageNumber } from '../byte-args.js';
import { checkRuns, nativeRunOptions } from './native-runs.js';
import type { FileStorageCreateOptions, FileStorageOptions } from './file-storage-options.js';

/**
 * Reads up to this size first try the page cache on the calling thread
 * (RWF_NOWAIT): for a 4 KiB read, the pool's two thread handoffs cost
 * several times the copy. Larger reads go to the pool, where they run in
 * parallel.
 */
const NOWAIT_MAX = 256 * 1024;

/** The smallest write that FileStorage.write hands to the native writer in direct 'auto' mode. */
const AUTO_WRITE_MIN = 256 * 1024;

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
  /** `file:<dev>:<ino>` (`blockdev:<rdev>` for a block device): the same for every open of one file, whatever name it was opened by (Storage.identity). */
  readonly identity: string;
  /** True for a block device: it neither grows nor shrinks, and bytes never written hold what the device held (Storage.fixedSize). */
  readonly fixedSize: boolean;
  #fh: FileHandle;
  #closed = false;
  /** Reads and writes under way on the raw descriptor; close() waits for them (FileHandle's own close would not know of them). */
  #busy = 0;
  #idle: (() => void) | undefined;
  /**
   * Data and hole runs of the file (SEEK_DATA/SEEK_HOLE). Present only when
   * the native helper is available; otherwise callers read everything.
   */
  readonly ranges?: (offset: number, length: number, limit?: number, granularity?: number) => Promise<StorageRange[]>;
  /**
   * Deallocates `[offset, offset + length)` (fallocate PUNCH_HOLE, the size
   * kept), as qemu does for a write of zeros that may unmap: the range reads
   * as zeros. False where the file system or device cannot punch (the
   * caller writes zeros instead). Present only with a native helper that
   * has it.
   */
  readonly punchHole?: (offset: number, length: number) => Promise<boolean>;
  /**
   * Gives `[offset, offset + length)` its blocks (fallocate mode 0, growing
   * the file if it ends before), as qemu's preallocation=falloc does: in
   * one call, without writing the zeros. False where the file system
   * cannot; ENOSPC and other failures throw. Present only with a native
   * helper that has it.
   */
  readonly allocate?: (offset: number, length: number) => Promise<boolean>;

  readonly cache: 'writeback' | 'unsafe';
  /** Whether copyRunsTo writes this file's data around the page cache (see FileStorageOptions.direct). */
  readonly direct: boolean;
  /** Whether copyRunsTo picks the page cache or the disk per piece (`direct: 'auto'` with a helper that can). */
  readonly directAuto: boolean;
  /** The O_DIRECT descriptor of `direct` or `directAuto`. Kept until close(): closing a descriptor drops a process's classic locks. */
  #directFd: number | undefined;
  /**
   * How this open is protected by qemu's image locks: `ofd` or `posix` (img
   * holds them), `check-only` (no native helper: other holders were checked
   * in /proc/locks, but img holds nothing), `none`. See image-lock.ts.
   */
  readonly lock: LockState;
  #unlock: (() => void) | undefined;
  #nowait: SeekAddon['nowait'];
  /**
   * A read-only file's data run that a `ranges` question found going on past
   * its window, as [start, end): later questions inside it are answered
   * without asking the kernel again, which walks the run page by page in
   * tmpfs (a qcow2's 1 GiB of data: 3 questions, 17 ms). Only data is kept:
   * should another process punch a hole there meanwhile, it reads as zeros
   * either way.
   */
  #knownData: [number, number] | undefined;
  #copyRuns: SeekAddon['copyRuns'];
  /** Whether the loaded helper's copyRuns zeroes zero runs when asked (RunCopyOptions.zeroTarget). */
  #zeroTarget: boolean;
  #readRuns: SeekAddon['readRuns'];
  /** directAuto: big writes go through the native writer, so that they too may go around the cache (see write). */
  #writeAt: SeekAddon['writeAt'];
  /** tmpfs/ramfs: small reads and writes, stat and truncate on the calling thread (see memoryBacked). */
  #memory: boolean;

  private constructor(path: string, fh: FileHandle, identity: string, readOnly: boolean, cache: 'writeback' | 'unsafe' = 'writeback', lock: ImageLock = { state: 'none' }, direct: boolean | 'auto' = false) {
    this.name = path;
    this.identity = identity;
    this.fixedSize = identity.startsWith('blockdev:');
    this.#fh = fh;
    this.readOnly = readOnly;
    this.cache = cache;
    this.lock = lock.state;
    this.#unlock = lock.release;
    const addon = seekAddon();
    this.#nowait = addon?.nowait;
    this.#memory = memoryBacked(path, fh.fd);
    this.#copyRuns = addon?.copyRuns;
    this.#zeroTarget = typeof addon?.zeroTargetAvailable === 'function';
    this.#readRuns = addon?.readRuns;
    // Only copyRunsTo writes through it: without the native loop, or in tmpfs (all page cache), there is nothing to gain.
    // 'auto' needs a helper that knows it (an older one would write every page around the cache).
    const auto = direct === 'auto' && typeof addon?.directAutoAvailable === 'function';
    this.#directFd = (direct === true || auto) && !readOnly && this.#copyRuns && !this.#memory ? openDirect(fh.fd) : undefined;
    this.direct = this.#directFd !== undefined && !auto;
    this.directAuto = this.#directFd !== undefined && auto;
    this.#writeAt = this.directAuto ? addon?.writeAt : undefined;
    // Present only with the native loop, so callers can tell without trying.
    if (!this.#copyRuns) this.canCopyRunsTo = undefined;
    if (!this.#readRuns) this.readRuns = undefined;
    // A block device has no holes to tell (Linux: lseek SEEK_DATA on one is EINVAL): every byte counts as data.
    if (addon && !this.fixedSize) this.ranges = (offset, length, limit, granularity) => this.#ranges(addon.seekRanges, offset, length, limit, granularity);
    const punch = addon?.punchHole;
    if (punch && !readOnly) this.punchHole = (offset, length) => this.#punch(punch, offset, length, 'punchHole', 'punching a hole');
    const allocate = addon?.allocateRange;
    if (allocate && !readOnly) this.allocate = (offset, length) => this.#punch(allocate, offset, length, 'allocate', 'allocating');
  }

  /** See punchHole and allocate: true when done, false where this file system or device cannot (the helper's rule, shared with the copy loop); other failures throw. */
  async #punch(punch: NonNullable<SeekAddon['punchHole']>, offset: number, length: number, method: string, what: string): Promise<boolean> {
    this.#checkWritable();
    checkStorageArgs(this.name, `FileStorage.${method}`, offset, length);
    this.#busy++;
    let result: number;
    try {
      result = await punch(this.#fh.fd, offset, length);
    } finally {
      if (--this.#busy === 0) this.#idle?.();
    }
    if (result <= 0) return result === 0;
    const code = errnoName(result);
    throw fsError(this.name, `${what} at ${offset}`, Object.assign(new Error(getSystemErrorMap().get(-result)?.[1] ?? code), { code }));
  }

  async #ranges(seekRanges: SeekAddon['seekRanges'], offset: number, length: number, limit?: number, granularity?: number): Promise<StorageRange[]> {
    this.#check();
    // Inside the data run a question before found to go on past its window: data, without asking again.
    const known = this.#knownData;
    if (known && offset >= known[0] && offset + length <= known[1]) return length > 0 ? [{ offset, length, data: true }] : [];
    // At most `limit` ranges: a data run and the hole before it are two.
    const maxRuns = limit !== undefined && limit > 0 ? Math.max(1, Math.floor(limit / 2)) : 0;
    // Runs widened to whole units (the helper's fifth argument) may cover holes: not kept as known data.
    const unit = granularity !== undefined && Number.isSafeInteger(granularity) && granularity > 1 ? granularity : 1;
    let runs: Float64Array;
    try {
      runs = seekRanges(this.#fh.fd, offset, length, maxRuns, unit);
    } catch (e) {
      throw fsError(this.name, `lseek at ${offset}`, e);
    }
    if (unit === 1 && this.readOnly && runs.length % 2 === 1 && runs.length >= 3) this.#knownData = [runs[runs.length - 3]!, runs[runs.length - 1]!];
    const out: StorageRange[] = [];
    let pos = offset;
    for (let i = 0; i + 1 < runs.length; i += 2) {
      const start = runs[i]!;
      const end = runs[i + 1]!;
      if (start > pos) out.push({ offset: pos, length: start - pos, data: false });
      out.push({ offset: start, length: end - start, data: true });
      pos = end;
    }
    // Stopped at the limit: the answer covers up to its last run, and what follows is not known yet.
    if (maxRuns > 0 && runs.length / 2 >= maxRuns) return out;
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
    const identity = await refuseNonImageFile(fh, path);
    const lock = options.lock === false || options.forceShare ? undefined : await FileStorage.#lockOrClose(fh, path, !readOnly);
    return new FileStorage(path, fh, identity, readOnly, options.cache, lock, options.direct);
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
    const identity = await refuseNonImageFile(fh, path);
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
    return new FileStorage(path, fh, identity, false, options.cache, lock, options.direct);
  }

  /**
   * Whether {@link copyRunsTo} can copy into `target`: another open
   * FileStorage, writable, and the native copy loop built.
   */
  canCopyRunsTo?(target: Storage): boolean {
    return this.#copyRuns !== undefined && target instanceof FileStorage && !target.readOnly && !target.#closed && !this.#closed && target !== this;
  }

  /**
   * Copies (source position, target position, length) runs of this file
   * into `target` on one pool thread: pread, zero detection and pwrite (or
   * copy_file_range when nothing is to be detected), one thread hand-off
   * for the whole batch. Zero runs of `minZeroRun` bytes or more are not
   * written, so the target must read as zeros there. Bytes past this
   * file's end read as zeros.
   *
   * @example
   * ```ts
   * if (src.canCopyRunsTo?.(dst)) await src.copyRunsTo(dst, Float64Array.of(0, 0, 1 << 20), { minZeroRun: 4096 });
   * ```
   */
  async copyRunsTo(target: Storage, runs: Float64Array, options: RunCopyOptions): Promise<RunCopyResult> {
    this.#check();
    if (!(target instanceof FileStorage)) throw invalidArg('file', `${this.name}: copyRunsTo needs a local file as its target, not ${target.name}`, { field: 'target' });
    target.#checkWritable();
    if (target === this) throw invalidArg('file', `${this.name}: copyRunsTo cannot copy a file into itself`, { field: 'target' });
    const copy = this.#copyRuns;
    if (!copy) throw invalidArg('file', `${this.name}: the native copy loop is not available (not built, or IMG_NO_NATIVE is set)`);
    // A helper that does not know zeroTarget would skip those zeros and leave the target's old bytes.
    if (options.zeroTarget && !this.#zeroTarget) throw invalidArg('file', `${this.name}: the native copy loop cannot zero a target's runs (an older build of the helper)`, { field: 'zeroTarget' });
    checkRuns(runs);
    const native = nativeRunOptions(options);
    if (target.#directFd !== undefined) {
      native.directFd = target.#directFd;
      if (target.directAuto) native.directAuto = 1;
    }
    if (options.signal?.aborted) throw abortError(options.signal);
    const out = await this.#native(target, options.signal, (cancel) => copy(this.#fh.fd, target.#fh.fd, runs, native, cancel));
    return { bytesRead: out[0]!, bytesWritten: out[1]!, bytesSkipped: out[2]! };
  }

  /**
   * Reads (position, destination offset, length) runs of this file into
   * `buffer` one after another on one pool thread and reports where the
   * data is (zero runs left out, by `minZeroRun` as {@link copyRunsTo}).
   * The destination offsets only align chunks and zero granules.
   */
  async readRuns?(runs: Float64Array, buffer: Uint8Array, options: RunCopyOptions): Promise<RunReadResult> {
    this.#check();
    const read = this.#readRuns;
    if (!read) throw invalidArg('file', `${this.name}: the native copy loop is not available (not built, or IMG_NO_NATIVE is set)`);
    const total = checkRuns(runs);
    if (total > buffer.length) throw invalidArg('file', `${this.name}: ${total} bytes of runs do not fit in a buffer of ${buffer.length}`, { field: 'buffer' });
    const native = nativeRunOptions(options);
    if (options.signal?.aborted) throw abortError(options.signal);
    const out = await this.#native(undefined, options.signal, (cancel) => read(this.#fh.fd, runs, buffer, native, cancel));
    const pieces: number[][] = [];
    let i = 2;
    for (let r = 0; r < runs.length / 3; r++) {
      const n = out[i++]!;
      pieces.push(Array.from(out.subarray(i, i + 2 * n)));
      i += 2 * n;
    }
    return { bytesRead: out[0]!, pieces };
  }

  /**
   * Runs one native batch: both files count it as a request under way (close
   * waits for it), an abort sets the loop's cancel flag, and a failure
   * becomes the usual ImageError naming the file that failed.
   */
  async #native(target: FileStorage | undefined, signal: AbortSignal | undefined, run: (cancel: Int32Array) => Promise<Float64Array>): Promise<Float64Array> {
    const cancel = new Int32Array(1);
    const onAbort = () => {
      cancel[0] = 1;
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#busy++;
    if (target) target.#busy++;
    let out: Float64Array;
    try {
      out = await run(cancel);
    } catch (e) {
      const cause = nativeCause(e);
      if (!cause) throw e;
      const file = cause.syscall === 'write' && target ? target.name : this.name;
      throw fsError(file, cause.what, Object.assign(new Error(cause.description), { code: cause.code }));
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (--this.#busy === 0) this.#idle?.();
      if (target && --target.#busy === 0) target.#idle?.();
    }
    // copyRuns: [.., .., .., cancelled]; readRuns: [.., cancelled, ...].
    if ((target ? out[3] : out[1]) === 1) throw abortError(signal);
    return out;
  }

  /** The underlying file descriptor (for native helpers). */
  get fd(): number {
    return this.#fh.fd;
  }

  #check(): void {
    if (this.#closed) throw storageClosedError(this.name, `${this.name}: file is closed`);
  }

  #checkWritable(): void {
    this.#check();
    if (this.readOnly) throw storageReadOnlyError(this.name, `${this.name}: file is open read-only`);
  }

  async size(): Promise<number> {
    this.#check();
    try {
      const st = this.#memory ? fstatSync(this.#fh.fd) : await this.#fh.stat();
      // A block device's stat says 0 bytes: its size is the kernel's count of its sectors.
      return st.isBlockDevice() ? blockDeviceSize(st.rdev) : st.size;
    } catch (e) {
      throw fsError(this.name, 'stat', e);
    }
  }

  /** The file's allocated bytes (st_blocks x 512): at least size() when it has no holes. */
  async allocatedBytes(): Promise<number> {
    this.#check();
    try {
      return (this.#memory ? fstatSync(this.#fh.fd) : await this.#fh.stat()).blocks * 512;
    } catch (e) {
      throw fsError(this.name, 'stat', e);
    }
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    this.#check();
    checkStorageArgs(this.name, 'FileStorage.read', position, length);
    const buf = allocateRead(this.name, 'FileStorage.read', length);
    const n = await this.readInto(position, buf);
    return n === length ? buf : buf.subarray(0, n);
  }

  async readInto(position: number, target: Uint8Array): Promise<number> {
    this.#check();
    checkStorageArgs(this.name, 'FileStorage.readInto', position, target, 'target');
    let done = 0;
    if (this.#memory && target.length <= NOWAIT_MAX) {
      try {
        const fd = this.#fh.fd;
        while (done < target.length) {
          const n = readSync(fd, target, done, target.length - done, position + done);
          if (n === 0) break;
          done += n;
        }
      } catch (e) {
        throw fsError(this.name, `read at ${position}`, e);
      }
      return done;
    }
    if (this.#nowait && target.length <= NOWAIT_MAX && target.length > 0) {
      const n = this.#nowait(false, this.#fh.fd, target, position);
      if (n === target.length) return n;
      if (n === -2)
        this.#nowait = undefined; // not supported here: stop asking
      else if (n > 0) done = n; // partly cached, or the end of the file: the pool does the rest
    }
    try {
      const fd = this.#fh.fd;
      while (done < target.length) {
        const bytesRead = await this.#request((settle) => fsRead(fd, target, done, target.length - done, position + done, settle));
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
    checkStorageArgs(this.name, 'FileStorage.write', position, data, 'data');
    // A format's own big writes (an inflated stream, batches of compressed clusters) pick the cache or the disk as
    // copyRunsTo's data does (direct 'auto'); small ones (tables, headers) always go through the cache.
    if (this.#writeAt && data.length >= AUTO_WRITE_MIN) {
      const writeAt = this.#writeAt;
      const fd = this.#fh.fd;
      const directFd = this.#directFd!;
      await this.#native(undefined, undefined, () => writeAt(fd, data, position, { directFd, directAuto: 1 }));
      return;
    }
    let done = 0;
    try {
      const fd = this.#fh.fd;
      if (this.#memory && data.length <= NOWAIT_MAX) {
        while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
        return;
      }
      while (done < data.length) {
        done += await this.#request((settle) => fsWrite(fd, data, done, data.length - done, position + done, settle));
      }
    } catch (e) {
      throw fsError(this.name, `write at ${position}`, e);
    }
  }

  /** Writes several buffers at consecutive positions with one writev call. */
  async writev(position: number, chunks: readonly Uint8Array[]): Promise<void> {
    this.#checkWritable();
    const total = checkStorageChunks(this.name, 'FileStorage.writev', position, chunks);
    try {
      const fd = this.#fh.fd;
      const bytesWritten = await this.#request((settle) => fsWritev(fd, chunks as Uint8Array[], position, settle));
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
    checkStorageNumber(this.name, 'FileStorage.truncate', 'size', size);
    // As qemu's host_device: a device keeps its size and its bytes; only growing past its end is an error.
    if (this.fixedSize) {
      const capacity = await this.size();
      if (size > capacity) {
        throw ioError(this.name, `the block device is ${capacity} bytes and cannot grow to ${size} bytes (ENOSPC)`, { errno: 'ENOSPC', field: 'size', expected: size, actual: capacity });
      }
      return;
    }
    try {
      // Emptying an empty file changes nothing, but on ext4 it would mark the
      // file for writeback on close (see create): skip it.
      if (size === 0 && (this.#memory ? fstatSync(this.#fh.fd).size : (await this.#fh.stat()).size) === 0) return;
      if (this.#memory) ftruncateSync(this.#fh.fd, size);
      else await this.#fh.truncate(size);
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
   * Starts a read or write on the raw descriptor, counted as under way until
   * its callback comes (close waits for it). They use node:fs's
   * callback functions, not FileHandle's methods: each FileHandle call builds
   * a promise request with its own stats array, which costs the calling
   * thread about as much again as the request itself (4 KiB writes at depth
   * 16: 92k/s through FileHandle, 145k/s with callbacks).
   */
  #request(start: (settle: (e: NodeJS.ErrnoException | null, n: number) => void) => void): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.#busy++;
      try {
        start((e, n) => {
          if (--this.#busy === 0) this.#idle?.();
          if (e) reject(e);
          else resolve(n);
        });
      } catch (e) {
        // Refused before it was queued (node:fs checks its arguments first): no callback will come, so it is not under way,
        // and close() must not wait for it.
        if (--this.#busy === 0) this.#idle?.();
        reject(e);
      }
    });
  }

  /** `await using storage = await ...open(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The descriptor stays open until the requests on it have finished, so its number cannot be reused under them.
    while (this.#busy > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    this.#idle = undefined;
    // Nothing is buffered behind an O_DIRECT descriptor: its close has nothing to report.
    if (this.#directFd !== undefined) {
      try {
        closeSync(this.#directFd);
      } catch {
        // ignored: see above
      }
    }
    try {
      await this.#fh.close();
    } catch (e) {
      throw fsError(this.name, 'close', e);
    } finally {
      this.#unlock?.();
    }
  }
}
