import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '@img/testkit';
import { deviceNumbers, heldBytes, parseProcLocks } from './proc-locks.js';

// Lines as Linux 6.x prints them: OFD locks of a qemu-io, a classic lock to
// the end of the file, a waiter under it, flock and lease lines.
const SAMPLE = `1: OFDLCK ADVISORY  READ -1 fe:00:2146969 203 203
2: OFDLCK ADVISORY  READ -1 fe:00:2146969 201 201
3: OFDLCK ADVISORY  READ -1 fe:00:2146969 100 101
4: POSIX  ADVISORY  WRITE 4242 103:0a:77 0 EOF
4: -> POSIX  ADVISORY  WRITE 4343 103:0a:77 0 EOF
5: FLOCK  ADVISORY  WRITE 999 fe:00:2146969 0 EOF
6: LEASE  ACTIVE    READ 998 fe:00:2146969 0 EOF
7: OFDLCK ADVISORY  READ -1 fe:01:2146969 103 103
`;

describe('/proc/locks', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('parses held POSIX and OFD locks and leaves out waiters, flock and leases', () => {
    const locks = parseProcLocks(SAMPLE);
    expect(locks).toHaveLength(5);
    expect(locks[2]).toEqual({ kind: 'OFDLCK', type: 'READ', pid: -1, major: 0xfe, minor: 0, inode: 2146969n, start: 100, end: 101 });
    expect(locks[3]).toEqual({ kind: 'POSIX', type: 'WRITE', pid: 4242, major: 0x103, minor: 0x0a, inode: 77n, start: 0, end: Infinity });
  });

  it('decodes st_dev into major and minor as glibc encodes them', () => {
    expect(deviceNumbers(0xfe00n)).toEqual({ major: 0xfe, minor: 0 });
    expect(deviceNumbers(0x10301n)).toEqual({ major: 0x103, minor: 1 });
    // glibc's makedev: minor bits 8+ live from bit 20, major bits 12+ from bit 44.
    const makedev = (major: bigint, minor: bigint): bigint => (minor & 0xffn) | ((major & 0xfffn) << 8n) | ((minor & ~0xffn) << 12n) | ((major & ~0xfffn) << 32n);
    expect(deviceNumbers(makedev(8n, 0x12345n))).toEqual({ major: 8, minor: 0x12345 });
    expect(deviceNumbers(makedev(0x1234n, 3n))).toEqual({ major: 0x1234, minor: 3 });
  });

  it('finds the bytes of one file (device and inode) that a lock covers', async () => {
    const path = join(tmp.path, 'locks');
    writeFileSync(path, SAMPLE);
    const qemuBytes = [100, 101, 102, 103, 200, 201, 202, 203];
    const held = await heldBytes({ dev: 0xfe00n, ino: 2146969n }, qemuBytes, path);
    expect([...held!].sort((a, b) => a - b)).toEqual([100, 101, 201, 203]); // 103 is held on another device (fe:01)
    expect([...(await heldBytes({ dev: 0x1030an, ino: 77n }, qemuBytes, path))!].sort((a, b) => a - b)).toEqual(qemuBytes);
    expect(await heldBytes({ dev: 0xfe00n, ino: 1n }, qemuBytes, path)).toEqual(new Set());
    expect(await heldBytes({ dev: 0xfe00n, ino: 1n }, qemuBytes, join(tmp.path, 'missing'))).toBeUndefined();
  });
});
