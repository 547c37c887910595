/**
 * qemu's image locks, so that img and a running qemu never write the same
 * image (and img refuses to read one a qemu is changing).
 *
 * qemu's file-posix driver expresses the block layer's permissions as
 * shared byte-range locks on single bytes of the image file: holding byte
 * 100+i says "I use permission i", holding byte 200+i says "nobody else may
 * use permission i". Before it trusts an open it asks whether anybody else
 * holds byte 200+i for each permission it uses, and byte 100+i for each it
 * does not share. Permissions (qemu 7.2, BLK_PERM_*): 0 consistent read,
 * 1 write, 2 write unchanged, 3 resize. Byte 104 (the old graph-mod
 * permission) is never used.
 *
 * What qemu 7.2 takes, read from /proc/locks and strace:
 * - a writable image (qemu-io, qemu-img check -r, snapshot, resize, a VM's
 *   disk): uses consistent read, write, resize; shares consistent read and
 *   write unchanged. Bytes 100, 101, 103, 201, 203.
 * - a read-only image (qemu-io -r, a convert source, a backing file): uses
 *   consistent read; shares the same. Bytes 100, 201, 203.
 * - qemu-img info: uses nothing and shares the same. Bytes 201, 203.
 * - -U (force-share): takes and checks nothing.
 * FileStorage takes the first two exactly, so each side refuses the other
 * with qemu's own messages.
 */
import type { FileHandle } from 'node:fs/promises';
import { constants } from 'node:os';
import { ioError, lockedError, sameFileOpenError, type ImageError } from '../errors.js';
import { heldBytes } from './proc-locks.js';
import { seekAddon } from './seek.js';

/** qemu's permission bits (include/block/block-common.h), as bit numbers. */
export const PERM = { CONSISTENT_READ: 0, WRITE: 1, WRITE_UNCHANGED: 2, RESIZE: 3 } as const;

/** qemu's names for the permissions (bdrv_perm_names): they appear in the lock errors. */
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const;

/** Byte 100+i: "I use permission i". */
export const PERM_LOCK_BASE = 100;
/** Byte 200+i: "I do not share permission i". */
export const SHARED_LOCK_BASE = 200;

/** What an open uses and lets others use, as bit masks over PERM. */
export interface LockPlan {
  perm: number;
  shared: number;
}

/**
 * How an open file is protected:
 * - `ofd`: open-file-description locks (Linux): the descriptor holds qemu's bytes.
 * - `posix`: classic fcntl locks (the kernel lacks OFD locks): held per
 *   process, so another open of the same file in this process is not seen,
 *   and closing any descriptor of the file drops them.
 * - `check-only`: no native helper; /proc/locks was read and nobody held a
 *   conflicting byte, but img holds no lock itself (a qemu started later is
 *   not refused). Other `check-only` opens in this process are seen: they
 *   are kept in a table of this module until closed.
 * - `none`: no lock and no check (asked for, or no way to do either).
 */
export type LockState = 'ofd' | 'posix' | 'check-only' | 'none';

const bit = (p: number): number => 1 << p;

/** The permissions of a read-write or a read-only open, as qemu-img and qemu-io take them. */
export function lockPlan(write: boolean): LockPlan {
  const shared = bit(PERM.CONSISTENT_READ) | bit(PERM.WRITE_UNCHANGED);
  if (!write) return { perm: bit(PERM.CONSISTENT_READ), shared };
  return { perm: bit(PERM.CONSISTENT_READ) | bit(PERM.WRITE) | bit(PERM.RESIZE), shared };
}

/** The bytes an open with this plan holds. */
export function lockBytes(plan: LockPlan): number[] {
  const out: number[] = [];
  for (let p = 0; p < PERM_NAMES.length; p++) if (plan.perm & bit(p)) out.push(PERM_LOCK_BASE + p);
  for (let p = 0; p < PERM_NAMES.length; p++) if (!(plan.shared & bit(p))) out.push(SHARED_LOCK_BASE + p);
  return out;
}

/**
 * The bytes whose holder excludes this open, in the order qemu tests them,
 * each with the message qemu gives: first "somebody refuses to share what I
 * use", then "somebody uses what I refuse to share".
 */
function conflictBytes(plan: LockPlan): { byte: number; name: string; what: string }[] {
  const out: { byte: number; name: string; what: string }[] = [];
  for (let p = 0; p < PERM_NAMES.length; p++) {
    if (plan.perm & bit(p)) out.push({ byte: SHARED_LOCK_BASE + p, name: PERM_NAMES[p]!, what: `Failed to get "${PERM_NAMES[p]}" lock` });
  }
  for (let p = 0; p < PERM_NAMES.length; p++) {
    if (!(plan.shared & bit(p))) out.push({ byte: PERM_LOCK_BASE + p, name: PERM_NAMES[p]!, what: `Failed to get shared "${PERM_NAMES[p]}" lock` });
  }
  return out;
}

function hint(path: string): string {
  return `Is another process using the image [${path}]?`;
}

function errnoName(errno: number): string {
  return Object.entries(constants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
}

/**
 * Every image this process holds locked, per file (`dev:ino`). A conflict
 * with one of these is not "another process": it is one command opening
 * the same file twice (an output that is its input, a backing file that
 * is a link to the image), which is reported as ERR_IMG_SAME_FILE, naming
 * the open that holds the file and the access that conflicts. Without
 * the helper (`check-only`) the kernel holds nothing for these opens, so
 * this table is also how two of them see each other's bytes.
 */
const ownOpens = new Map<string, Map<symbol, { path: string; write: boolean }>>();

function ownConflict(key: string, path: string, write: boolean): ImageError | undefined {
  for (const other of ownOpens.get(key)?.values() ?? []) if (write || other.write) return sameFileOpenError(path, other, write);
  return undefined;
}

function registerOwn(key: string, path: string, write: boolean): () => void {
  const opens = ownOpens.get(key) ?? new Map<symbol, { path: string; write: boolean }>();
  const id = Symbol(path);
  opens.set(id, { path, write });
  ownOpens.set(key, opens);
  return () => {
    opens.delete(id);
    if (opens.size === 0 && ownOpens.get(key) === opens) ownOpens.delete(key);
  };
}

/** What lockImage did; `release` must be called when the file is closed. */
export interface ImageLock {
  state: LockState;
  release?: () => void;
}

/**
 * Takes qemu's locks for an open of `path` on `fh` (write: the read-write
 * plan, else the read-only one) and checks that nobody else's locks exclude
 * it. Locks are set before the check, as qemu does, so two opens racing
 * each other cannot both pass; on a conflict the caller closes `fh`, which
 * releases what was set. Throws ERR_IMG_LOCKED with qemu's message.
 */
export async function lockImage(fh: FileHandle, path: string, write: boolean, again = false): Promise<ImageLock> {
  const plan = lockPlan(write);
  const conflicts = conflictBytes(plan);
  const addon = seekAddon();
  const st = await fh.stat({ bigint: true });
  const key = `${st.dev}:${st.ino}`;
  if (addon?.lockByte && addon.lockTest) {
    const fd = fh.fd;
    for (const byte of lockBytes(plan)) {
      const err = addon.lockByte(fd, byte, true);
      if (err === 0) continue;
      if (err === constants.errno.EAGAIN || err === constants.errno.EACCES) {
        throw ownConflict(key, path, write) ?? lockedError(path, `Failed to lock byte ${byte}. ${hint(path)}`, { offset: byte });
      }
      throw ioError(path, `could not lock byte ${byte} (${errnoName(err)}); on a file system without byte-range locks, open with { lock: false }`, { offset: byte, errno: errnoName(err) });
    }
    for (const c of conflicts) {
      const held = addon.lockTest(fd, c.byte);
      if (held === 1) throw ownConflict(key, path, write) ?? lockedError(path, `${c.what}. ${hint(path)}`, { field: c.name, offset: c.byte });
      if (held < 0) throw ioError(path, `could not test the lock on byte ${c.byte} (${errnoName(-held)})`, { offset: c.byte, errno: errnoName(-held) });
    }
    return again ? { state: addon.lockStyle?.(fd) ?? 'ofd' } : { state: addon.lockStyle?.(fd) ?? 'ofd', release: registerOwn(key, path, write) };
  }
  if (process.platform !== 'linux') return { state: 'none' };
  // No helper: img cannot lock, but it can still see who does.
  const held = await heldBytes(
    { dev: st.dev, ino: st.ino },
    conflicts.map((c) => c.byte),
  );
  if (!held) return { state: 'none' };
  for (const other of ownOpens.get(key)?.values() ?? []) for (const byte of lockBytes(lockPlan(other.write))) held.add(byte);
  for (const c of conflicts) {
    if (held.has(c.byte)) throw ownConflict(key, path, write) ?? lockedError(path, `${c.what}. ${hint(path)}`, { field: c.name, offset: c.byte });
  }
  return { state: 'check-only', release: registerOwn(key, path, write) };
}
