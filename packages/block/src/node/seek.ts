/**
 * The native helper's file functions, typed: SEEK_DATA/SEEK_HOLE, RWF_NOWAIT
 * reads and qemu-compatible byte-range locks. native-loader.ts finds the
 * binary (a prebuild shipped in the package, else a from-source build).
 * Missing, unloadable or disabled with IMG_NO_NATIVE=1: undefined, and
 * FileStorage has no `ranges` and reads everything through libuv's pool.
 */
import { nativeExports } from './native-loader.js';

export interface SeekAddon {
  /** Data runs of `[offset, offset+length)` as [start, end, start, end, ...]. */
  seekRanges: (fd: number, offset: number, length: number) => Float64Array;
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
}

/** The native helper, loaded once; undefined where none loads or IMG_NO_NATIVE is set. */
export function seekAddon(): SeekAddon | undefined {
  // The loader checked that seekRanges is a function; the rest are optional members.
  return nativeExports() as SeekAddon | undefined;
}
