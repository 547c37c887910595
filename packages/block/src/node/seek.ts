/**
 * The native helper's file functions, typed: SEEK_DATA/SEEK_HOLE, RWF_NOWAIT
 * reads, qemu-compatible byte-range locks and the batch copy loop (copy.c).
 * native-loader.ts finds the binary (a prebuild shipped in the package,
 * else a from-source build).
 * Missing, unloadable or disabled with IMG_NO_NATIVE=1: undefined, and
 * FileStorage has no `ranges` and reads everything through libuv's pool.
 */
import { nativeExports } from './native-loader.js';

export interface SeekAddon {
  /**
   * Data runs of `[offset, offset+length)` as [start, end, start, end, ...];
   * with `maxRuns`, at most that many (a helper built before it answers the
   * whole window). When the last run goes on past the window, one more
   * number follows its (cut) end: where it really ends (helpers built
   * before it leave it out).
   */
  seekRanges: (fd: number, offset: number, length: number, maxRuns?: number, unit?: number) => Float64Array;
  /**
   * preadv2/pwritev2 with RWF_NOWAIT on the calling thread: bytes moved,
   * -1 if it would block (not in the page cache), -2 if unsupported here.
   * Absent from helpers built before it existed.
   */
  nowait?: (write: boolean, fd: number, bytes: Uint8Array, position: number) => number;
  /**
   * Sets (`set`) or releases a shared lock on one byte of the file, without
   * waiting: 0, or the errno of the failed fcntl. An open-file-description
   * lock (F_OFD_SETLK) where the kernel has them, else a classic F_SETLK.
   * Absent from helpers built before it existed (as the two below).
   */
  lockByte?(fd: number, byte: number, set: boolean): number;
  /** Whether another open file description holds any lock on the byte: 0 no, 1 yes, -errno if the test failed. */
  lockTest?(fd: number, byte: number): number;
  /** `ofd` (locks belong to the descriptor) or `posix` (to the process: classic fcntl locks). */
  lockStyle?(fd: number): 'ofd' | 'posix';
  /**
   * copy.c: copies (source, destination, length) runs between two
   * descriptors on a pool thread, skipping zero runs; resolves with
   * [bytesRead, bytesWritten, bytesSkipped, cancelled, bytesMapped]
   * (bytesMapped, from helpers that have it: of bytesWritten, what went
   * through a mapping of a tmpfs destination). Setting `cancel[0]`
   * to 1 stops it between chunks. Absent from helpers built before it existed.
   */
  copyRuns?: (srcFd: number, dstFd: number, runs: Float64Array, options: NativeRunOptions, cancel: Int32Array) => Promise<Float64Array>;
  /** Present where copyRuns takes NativeRunOptions.zeroTarget. */
  zeroTargetAvailable?: () => boolean;
  /** Present when copyRuns takes options.directAuto. */
  directAutoAvailable?: () => boolean;
  /** The buffer's bytes at position on a pool thread, through the cache or around it as copyRuns writes (options.directFd, directAuto). Resolves to [bytesWritten, 0]. */
  writeAt?: (dstFd: number, buffer: Uint8Array, position: number, options: { directFd: number; directAuto: 0 | 1 }) => Promise<Float64Array>;
  /**
   * space.c: punches a hole (fallocate PUNCH_HOLE, size kept) on a pool
   * thread; resolves with 0 (punched), -1 (this file system or device
   * cannot) or the errno of another failure. Absent from helpers built
   * before it existed.
   */
  punchHole?: (fd: number, offset: number, length: number) => Promise<number>;
  /** fallocate mode 0 on a pool thread: 0 done, -1 this file system cannot, else an errno. */
  allocateRange?: (fd: number, offset: number, length: number) => Promise<number>;
  /**
   * copy.c: reads runs into `buffer` one after another on a pool thread;
   * resolves with [bytesRead, cancelled, then per run: n, then n (start, end) data pairs].
   */
  readRuns?: (srcFd: number, runs: Float64Array, buffer: Uint8Array, options: NativeRunOptions, cancel: Int32Array) => Promise<Float64Array>;
}

/** Options of the native copyRuns/readRuns. */
export interface NativeRunOptions {
  chunkSize: number;
  granule: number;
  minZeroRun: number;
  /** 0: pread/pwrite only; 1: copy_file_range (and the mapped zero scan) wherever the kernel takes it; 2: only into file systems that copy themselves (reflinks, server-side copies). */
  copyRange: 0 | 1 | 2;
  /** 0: the runs are SEEK_DATA's data, no hole probes inside them (helpers built before it probe anyway). */
  probeHoles: 0 | 1;
  /** Blocks allocated ahead of the writes: 0 never, 1 with skipped zero runs left as holes, 2 skipped runs may keep them (helpers built before it ignore it). */
  preallocate: 0 | 1 | 2;
  /** 1: the target may hold data, zero runs are zeroed there (RunCopyOptions.zeroTarget). */
  zeroTarget: 0 | 1;
  /** copyRuns: the destination opened again with O_DIRECT; whole pages of data are written through it (helpers built before it ignore it). */
  directFd?: number;
  /** 1: each data piece through the cache or directFd, whichever has cost less per byte lately (convert's default); 0: every whole page through directFd. */
  directAuto?: 0 | 1;
}

/** The native helper, loaded once; undefined where none loads or IMG_NO_NATIVE is set. */
export function seekAddon(): SeekAddon | undefined {
  // The loader checked that seekRanges is a function; the rest are optional members.
  return nativeExports() as SeekAddon | undefined;
}
