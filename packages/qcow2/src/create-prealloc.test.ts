/**
 * createQcow2 with preallocation, judged against qemu-img create with the
 * same options: the same map (guest clusters at the same host offsets),
 * the same check summary, and for falloc and full the space reserved.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { createQcow2, type Qcow2CreateOptions } from './create.js';

const CLUSTER_BYTES: Record<string, number> = { '512': 512, '4k': 4096, '16k': 16384, '64k': 65536, '2M': 2 << 20 };

let dir: string;
let cleanup: () => void;

/** `-o` text for qemu-img from typed options. */
function qemuOptions(o: Record<string, string>): string {
  const names: Record<string, string> = { preallocation: 'preallocation', clusterSize: 'cluster_size', refcountBits: 'refcount_bits', extendedL2: 'extended_l2', compat: 'compat' };
  return Object.entries(o)
    .map(([k, v]) => `${names[k]}=${v}`)
    .join(',');
}

describeQemu('createQcow2 preallocation against qemu-img create', () => {
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-prealloc-'));
  });
  afterAll(() => cleanup());

  const cases: Array<[Record<string, string>, number]> = [
    [{ preallocation: 'falloc' }, 32 << 20],
    [{ preallocation: 'falloc' }, 0],
    [{ preallocation: 'falloc', clusterSize: '512' }, 1 << 20],
    [{ preallocation: 'falloc', clusterSize: '4k' }, 33 << 20],
    [{ preallocation: 'falloc', clusterSize: '2M' }, 33 << 20],
    [{ preallocation: 'falloc', clusterSize: '512', refcountBits: '1' }, 3 << 20],
    [{ preallocation: 'falloc', refcountBits: '64' }, 5 << 20],
    [{ preallocation: 'falloc', extendedL2: 'on', clusterSize: '16k' }, 1 << 20],
    [{ preallocation: 'falloc', compat: '0.10' }, 3 << 20],
    [{ preallocation: 'full', clusterSize: '4k' }, 5 << 20],
    [{ preallocation: 'metadata', extendedL2: 'on' }, 3 << 20],
  ];
  let n = 0;
  for (const [options, size] of cases) {
    it(`${qemuOptions(options)} ${size}: map, check and reserved space as qemu-img's`, async () => {
      const ours = join(dir, `ours-${n}.qcow2`);
      const theirs = join(dir, `qemu-${n++}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', qemuOptions(options), theirs, String(size)]);
      const disk = await createQcow2(await FileStorage.create(ours), { size, ...options } as Qcow2CreateOptions);
      await disk.close();
      expect(qemuImg(['map', '--output=json', ours]).stdout).toBe(qemuImg(['map', '--output=json', theirs]).stdout);
      const check = (p: string) => qemuImg(['check', p], { allowFail: true });
      expect(check(ours)).toEqual(check(theirs));
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      // du counts file-system blocks (4 KiB), so small clusters get two blocks of slack.
      const cs = CLUSTER_BYTES[options.clusterSize ?? '64k'] ?? 0;
      const du = (p: string) => statSync(p).blocks * 512;
      if (options.preallocation !== 'metadata') expect(Math.abs(du(ours) - du(theirs)), `du ${du(ours)} against ${du(theirs)}`).toBeLessThanOrEqual(Math.max(2 * cs, 8192));
      // Byte for byte where the header cluster holds the same extensions (qemu leaves the feature table out of small clusters).
      if (cs >= 16384 && size > 0) expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0);
    });
  }

  it('a 512-byte-cluster image whose L1 table outgrows the first refcount block falls back to the packed layout and still passes check', async () => {
    const path = join(dir, 'fallback.qcow2');
    const disk = await createQcow2(await FileStorage.create(path), { size: 128 << 20, clusterSize: 512, refcountBits: 64, preallocation: 'falloc' });
    await disk.write(0, new Uint8Array(512).fill(1));
    await disk.close();
    const check = qemuImg(['check', '--output=json', path]);
    const result = JSON.parse(check.stdout) as Record<string, number>;
    expect(result.corruptions ?? 0).toBe(0);
    expect(result.leaks ?? 0).toBe(0);
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(128 << 20);
  });
});
