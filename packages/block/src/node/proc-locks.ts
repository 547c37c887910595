/**
 * Reads Linux's table of held file locks, /proc/locks, to find the bytes of
 * one file that somebody holds a byte-range lock on. This is how FileStorage
 * sees qemu's image locks when the native helper (which would take locks of
 * its own) is missing: it can refuse an image a qemu holds, but it cannot
 * stop a qemu that starts later.
 *
 * A line of /proc/locks (fs/locks.c, lock_get_status) reads
 *   `7: OFDLCK ADVISORY  READ -1 fe:00:2146969 100 101`
 * id, kind (POSIX, OFDLCK, FLOCK, LEASE, DELEG), ADVISORY or MANDATORY,
 * READ/WRITE/UNLCK, the owner's pid (-1 for OFD locks), the file's device as
 * hex major:minor and its inode in decimal, then the first and last byte
 * (`EOF` for a lock to the end of the file). Requests still waiting for a
 * lock are listed under the lock they wait on with `->` and hold nothing.
 */
import { readFile } from 'node:fs/promises';

/** A byte-range lock somebody holds (a POSIX or OFD lock; flock() and leases never conflict with them). */
export interface ProcLock {
  kind: 'POSIX' | 'OFDLCK';
  type: 'READ' | 'WRITE';
  /** Owner's pid; -1 for an open-file-description lock, which belongs to no process. */
  pid: number;
  major: number;
  minor: number;
  inode: bigint;
  /** First byte locked. */
  start: number;
  /** Last byte locked (inclusive); Infinity for a lock to the end of the file. */
  end: number;
}

const LINE = /^\s*\d+:\s+(POSIX|OFDLCK)\s+\S+\s+(READ|WRITE)\s+(-?\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/i;

/** Parses the text of /proc/locks into the byte-range locks held (waiters and flock/lease lines are left out). */
export function parseProcLocks(text: string): ProcLock[] {
  const out: ProcLock[] = [];
  for (const line of text.split('\n')) {
    if (line.includes('->')) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    out.push({
      kind: m[1]!.toUpperCase() as ProcLock['kind'],
      type: m[2]!.toUpperCase() as ProcLock['type'],
      pid: Number(m[3]),
      major: parseInt(m[4]!, 16),
      minor: parseInt(m[5]!, 16),
      inode: BigInt(m[6]!),
      start: Number(m[7]),
      end: m[8] === 'EOF' ? Infinity : Number(m[8]),
    });
  }
  return out;
}

/** Major and minor device numbers of a Linux `st_dev` (glibc's encoding: 12+20 bits of major, 8+24 of minor). */
export function deviceNumbers(dev: bigint): { major: number; minor: number } {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

/**
 * Of `bytes`, those of the file (`dev`, `ino` from fstat) that any lock in
 * /proc/locks covers. Undefined when /proc/locks cannot be read (not Linux,
 * /proc not mounted): the caller then knows nothing.
 */
export async function heldBytes(file: { dev: bigint; ino: bigint }, bytes: readonly number[], path = '/proc/locks'): Promise<Set<number> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  const { major, minor } = deviceNumbers(file.dev);
  const held = new Set<number>();
  for (const lock of parseProcLocks(text)) {
    if (lock.inode !== file.ino || lock.major !== major || lock.minor !== minor) continue;
    for (const b of bytes) if (b >= lock.start && b <= lock.end) held.add(b);
  }
  return held;
}
