/**
 * What kind of file a FileStorage opened: in memory (tmpfs, ramfs), a
 * block device and its size, whether O_DIRECT can be had, and the refusal
 * of anything that is not a regular file or a block device.
 */
import { constants as fsConstants, type BigIntStats, type Stats, fstatSync, openSync, readFileSync, statfsSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { notAnImageFile } from '../errors.js';
import { fsError } from './fs-errors.js';

/** statfs magic numbers of file systems whose files live in memory (linux/magic.h). */
const MEMORY_FS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);

/**
 * Whether the file lives in memory (tmpfs, ramfs): then a read or write is
 * a memory copy that never waits for a disk, and small ones are made on
 * the calling thread. Through libuv's pool each costs two thread hand-offs,
 * which on a busy machine means waiting for two threads to be scheduled
 * (an empty 16 GiB qcow2 -> raw conversion on /dev/shm made about 20 such
 * round trips and took 0.2-0.6 s wall for 0.05 s of CPU at a load average
 * of 17); RWF_NOWAIT, which does the same for cached pages of other file
 * systems, is not supported by tmpfs.
 */
export function memoryBacked(path: string, fd: number): boolean {
  if (process.platform !== 'linux') return false;
  try {
    // A block device's node lives in devtmpfs (a tmpfs), but its bytes are on the device.
    if (fstatSync(fd).isBlockDevice()) return false;
    return MEMORY_FS.has(Number(statfsSync(path).type));
  } catch {
    return false;
  }
}

/**
 * Bytes of the block device `rdev` (Linux: /sys/dev/block/MAJOR:MINOR/size
 * counts 512-byte sectors whatever the device's own sector size). Throws
 * ENOTSUP where there is no such count (not Linux).
 */
export function blockDeviceSize(rdev: number): number {
  // glibc's gnu_dev_major / gnu_dev_minor, in doubles: rdev can exceed 32 bits.
  const hi = Math.floor(rdev / 2 ** 32);
  const lo = rdev >>> 0;
  const major = ((lo >>> 8) & 0xfff) | ((hi & 0xfffff000) >>> 0);
  const minor = (lo & 0xff) | ((lo >>> 12) & 0xfff00);
  try {
    return Number(readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
  } catch {
    throw Object.assign(new Error('the size of a block device is unknown here'), { code: 'ENOTSUP' });
  }
}

/**
 * A second descriptor of the open file `fd` with O_DIRECT (through
 * /proc/self/fd, so it is the same file whatever happened to its name), or
 * undefined where there is none: not Linux, no /proc, or a file system that
 * refuses O_DIRECT (tmpfs before Linux 6.6, some FUSE file systems).
 */
export function openDirect(fd: number): number | undefined {
  const flag = (fsConstants as { O_DIRECT?: number }).O_DIRECT;
  if (process.platform !== 'linux' || !flag) return undefined;
  try {
    return openSync(`/proc/self/fd/${fd}`, fsConstants.O_WRONLY | flag);
  } catch {
    return undefined;
  }
}

/** What `stat` says a file is, for a message: "a FIFO", "a character device". */
export function fileKind(st: Stats | BigIntStats): string {
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
 * fcntl to clear it. Answers the identity of what is kept (Storage.identity).
 */
export async function refuseNonImageFile(fh: FileHandle, path: string): Promise<string> {
  let st: BigIntStats;
  try {
    st = await fh.stat({ bigint: true });
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw fsError(path, 'stat', e);
  }
  // Device and inode as exact decimal text: two names (links, "./a", "b/../a") of one file give one identity;
  // a block device is the device it opens (rdev), whichever node names it.
  if (st.isFile()) return `file:${st.dev}:${st.ino}`;
  if (st.isBlockDevice()) return `blockdev:${st.rdev}`;
  await fh.close().catch(() => undefined);
  throw notAnImageFile(path, fileKind(st));
}
