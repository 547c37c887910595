// Ctrl-C typed at a terminal, and a disk that fills up: a clean stop, the
// documented status, one line of explanation, and no half-written output left.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inCI } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-term-');
afterAll(() => user.cleanup());
const driver = fileURLToPath(new URL('./pty-interrupt.py', import.meta.url));
const hasPython = spawnSync('python3', ['-c', 'import pty'], { encoding: 'utf8' }).status === 0;

describe('Ctrl-C at a terminal', () => {
  beforeAll(() => {
    // With -S 0 every byte of the 4 GiB is written: long enough to be interrupted, and nothing to prepare.
    user.sh('truncate -s 4G big.raw');
  });

  it.skipIf(!hasPython && !inCI)('stops img-convert -p with status 130 and removes the partial output', () => {
    if (!hasPython) throw new Error('python3 with the pty module is needed to type Ctrl-C at a terminal');
    const bin = join(user.dir, '..', '.bin', 'img-convert');
    const r = spawnSync('python3', [driver, '%', bin, '-p', '-S', '0', 'raw', 'qcow2', 'big.raw', 'out.qcow2'], { cwd: user.dir, encoding: 'utf8', timeout: 90_000 });
    const result = JSON.parse(r.stdout) as { status: number; sent: boolean; output: string };
    expect(result.sent, result.output).toBe(true);
    expect(result.status).toBe(130);
    expect(result.output).toMatch(/interrupted; the partial output was removed/);
    expect(result.output).not.toMatch(/^\s+at /m);
    expect(existsSync(user.path('out.qcow2'))).toBe(false);
  });
});

const canMount = process.getuid?.() === 0 && spawnSync('sh', ['-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d" && rmdir "$d"']).status === 0;

describe('a disk that fills up', () => {
  const mnt = join(user.dir, 'small');
  beforeAll(() => {
    if (!canMount) return;
    mkdirSync(mnt);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]).status).toBe(0);
    user.sh('truncate -s 64M data.raw && yes data | head -c 8M | dd of=data.raw conv=notrunc status=none');
    // Bytes that do not compress, for the writers that compress (VMDK streamOptimized).
    user.sh('head -c 8M /dev/urandom > random.raw');
  });
  afterAll(() => {
    if (canMount) spawnSync('umount', [mnt]);
  });

  it.skipIf(!canMount && !inCI)('a conversion onto a full tmpfs fails in one line and leaves nothing behind', () => {
    if (!canMount) throw new Error('mounting a tmpfs needs root (CI runs as root)');
    for (const fmt of ['raw', 'qcow2', 'vhd']) {
      const r = user.sh(`img-convert raw ${fmt} data.raw small/out.${fmt}`);
      expect(r.status, `${fmt}: ${r.stderr}`).toBe(1);
      const lines = expectOneLine(r.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/ERR_IMG_IO: .*no space left on device \(ENOSPC\)$/);
      expect(readdirSync(mnt)).toEqual([]);
    }
  });

  it.skipIf(!canMount && !inCI)('a stream writer (VMDK streamOptimized) onto a full tmpfs: the same one line, nothing left, never an internal error', () => {
    if (!canMount) throw new Error('mounting a tmpfs needs root (CI runs as root)');
    const r = user.sh('img-convert -o subformat=streamOptimized raw vmdk random.raw small/out.vmdk');
    expect(r.status, r.stderr).toBe(1);
    expect(expectOneLine(r.stderr)).toEqual(['img-convert: ERR_IMG_IO: small/out.vmdk: write failed: no space left on device (ENOSPC)']);
    expect(readdirSync(mnt)).toEqual([]);
  });
});
