/**
 * Zeroing or discarding part of a cluster that already reads that way
 * allocates nothing: qemu-io's unaligned `write -z` and `discard` on never
 * written clusters leave no data cluster in qemu's image either (seed 1007
 * case 430 saw img allocate them). Where a backing file shows through, a
 * partial zero still writes zeros.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-zero-partial-');
afterAll(() => tmp.cleanup());

/** Host clusters holding guest data, as `qemu-img map` reports them. */
function dataBytes(file: string): number {
  const map = JSON.parse(qemuImg(['map', '--output=json', file]).stdout) as { length: number; data: boolean; depth: number }[];
  return map.filter((m) => m.data && m.depth === 0).reduce((n, m) => n + m.length, 0);
}

async function withDisk(file: string, fn: (disk: Awaited<ReturnType<typeof openQcow2>>) => Promise<void>): Promise<void> {
  const storage = await FileStorage.open(file, { readOnly: false });
  const disk = await openQcow2(storage, { readOnly: false, resolver: fileResolver });
  try {
    await fn(disk);
  } finally {
    await disk.close();
    await storage.close();
  }
}

describeQemu('partial zeroes and discards over clusters that already read so', () => {
  for (const opts of ['cluster_size=65536', 'cluster_size=65536,extended_l2=on', 'compat=0.10,cluster_size=4096']) {
    it(`allocate nothing, as qemu-io leaves them (${opts})`, async () => {
      const ours = join(tmp.path, `ours-${opts.replace(/[=,.]/g, '-')}.qcow2`);
      const theirs = `${ours}.qemu`;
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, ours, '4M']);
      // One written cluster, so the L2 table exists and the partial ranges land in it.
      qemuIo(ours, 'qcow2', ['write -P 7 0 4096']);
      writeFileSync(theirs, readFileSync(ours));
      const before = dataBytes(ours);
      const ops: Array<[string, number, number]> = [
        ['zero', 96567, 118496],
        ['discard', 655360, 143186],
        ['zero', 1048576 + 100, 3000],
      ];
      await withDisk(ours, async (disk) => {
        for (const [op, at, n] of ops) await (op === 'zero' ? disk.writeZeroes(at, n) : disk.discard(at, n));
      });
      qemuIo(
        theirs,
        'qcow2',
        ops.map(([op, at, n]) => (op === 'zero' ? `write -z ${at} ${n}` : `discard ${at} ${n}`)),
      );
      expect(dataBytes(ours)).toBe(before);
      expect(dataBytes(theirs)).toBe(before);
      expect(qemuImg(['compare', '-q', ours, theirs], { allowFail: true }).status).toBe(0);
      expect(qemuImg(['check', '-q', ours], { allowFail: true }).status).toBe(0);
    });
  }

  it('a partial zero over a backing file that shows through still writes zeros', async () => {
    const base = join(tmp.path, 'base.qcow2');
    const top = join(tmp.path, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '1M']);
    qemuIo(base, 'qcow2', ['write -P 9 0 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await withDisk(top, async (disk) => {
      await disk.writeZeroes(1000, 3000);
      await disk.discard(70000, 1000);
      const got = await disk.read(0, 80000);
      expect(got.subarray(1000, 4000).every((b) => b === 0)).toBe(true);
      expect(got.subarray(0, 1000).every((b) => b === 9)).toBe(true);
      // A discard reads as the backing file or zeros: here the backing file's bytes stay.
      expect(got.subarray(70000, 71000).every((b) => b === 9)).toBe(true);
    });
    expect(qemuIo(top, 'qcow2', ['read -P 0 1000 3000', 'read -P 9 4000 60000'])).not.toMatch(/Pattern verification failed/);
    expect(qemuImg(['check', '-q', top], { allowFail: true }).status).toBe(0);
  });
});
