/**
 * Crash consistency of sparsifyQcow2 and compactQcow2: each runs on a
 * FaultStorage over an image qemu wrote (4 KiB clusters, compressed
 * clusters, two internal snapshots, a persistent bitmap); then, for every
 * write or truncate it issued, the file a crash right after it would leave
 * (drop, subset and torn models) must check without corruption (leaks are
 * what a crash may leave), open, and read as before: the active layer and
 * every snapshot. A sample goes through `qemu-img check` and
 * `qemu-img compare`, and is compacted again (resume): clean, no leak, and
 * no larger than what the image holds. An abort between moves leaves a
 * clean image that a second run finishes.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage } from '@img/block';
import { FaultStorage, describeQemu, qemuCheck, qemuImg, seededBytes, seededRandom, tempDir, type CrashMode } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { checkQcow2 } from './check-qcow2.js';
import { compactQcow2 } from './compact.js';
import { openQcow2 } from './open.js';
import { sparsifyQcow2 } from './sparsify.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const tmp = tempDir('qcow2-compact-crash-');
afterAll(() => tmp.cleanup());

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

function io(file: string, commands: string[]): void {
  const args = ['-f', 'qcow2'];
  for (const c of commands) args.push('-c', c);
  const r = spawnSync('qemu-io', [...args, file], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

/** The active layer and each snapshot, read whole. */
async function views(bytes: Uint8Array): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const snapshot of [undefined, 's1', 's2']) {
    const d = await openQcow2(MemoryStorage.from(bytes, { name: 'c.qcow2' }), { readOnly: true, ...(snapshot ? { snapshot } : {}) });
    try {
      out.push(await d.read(0, d.size));
    } finally {
      await d.close();
    }
  }
  return out;
}

async function checked(bytes: Uint8Array, label: string): Promise<number> {
  const r = await checkQcow2(MemoryStorage.from(bytes, { name: 'c.qcow2' }));
  expect([r.corruptions, r.checkErrors], `${label}: ${r.messages.join('; ')}`).toEqual([0, 0]);
  return r.leaks;
}

/**
 * An image with compressed clusters (half random, so that they straddle
 * host clusters), two snapshots, a bitmap, zeroed and rewritten data, and
 * a large free run low in the file (a deleted snapshot's clusters).
 */
function qemuImage(): Uint8Array {
  const raw = new Uint8Array(1024 * 1024);
  const random = seededBytes(512 * 1024, 7);
  for (let c = 0; c < 128; c++) raw.set(random.subarray(c * 4096, c * 4096 + 1800), c * 4096);
  const src = join(tmp.path, 'src.raw');
  writeFileSync(src, raw);
  const file = join(tmp.path, 'img.qcow2');
  qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', src, file]);
  io(file, ['write -P 0x70 512k 448k']);
  qemuImg(['snapshot', '-c', 's0', file]);
  io(file, ['write -P 0x71 512k 256k', 'write -P 0x62 768k 64k']);
  qemuImg(['snapshot', '-c', 's1', file]);
  io(file, ['write -P 0x63 512k 128k', 'write -P 0x64 0 8k', 'write -z -u 256k 64k', 'write -P 0 640k 64k']);
  qemuImg(['bitmap', '--add', file, 'b0']);
  io(file, ['write -P 0x65 768k 64k', 'write -P 0 800k 16k']);
  qemuImg(['snapshot', '-c', 's2', file]);
  io(file, ['write -P 0x66 896k 64k', 'write -z -u 512k 64k', 'write -P 0 960k 32k']);
  qemuImg(['snapshot', '-d', 's0', file]);
  return new Uint8Array(readFileSync(file));
}

interface Verdict {
  points: number;
  leaky: number;
  qemu: number;
  resumed: number;
}

async function crashEveryPoint(name: string, image: Uint8Array, op: (s: FaultStorage) => Promise<unknown>, seed: number): Promise<Verdict> {
  const before = await views(image);
  const beforeFile = join(tmp.path, `${name}-before.qcow2`);
  writeFileSync(beforeFile, image);
  const fault = new FaultStorage(image, 'c.qcow2');
  await op(fault);
  const after = await views(fault.current());
  for (let k = 0; k < before.length; k++) expect(same(after[k]!, before[k]!), `${name}: the finished run changed view ${k}`).toBe(true);
  const random = seededRandom(seed);
  const points = fault.crashPoints();
  const verdict: Verdict = { points: points.length, leaky: 0, qemu: 0, resumed: 0 };
  let n = 0;
  for (const mode of MODES) {
    for (const count of points) {
      const label = `${name}: ${mode} after ${count}/${fault.ops.length} ops`;
      const bytes = (await fault.crashImage(count, mode, random)).toBytes();
      const leaks = await checked(bytes, label);
      if (leaks > 0) verdict.leaky++;
      let got: Uint8Array[];
      try {
        got = await views(bytes);
      } catch (e) {
        throw new Error(`${label}: does not open: ${(e as Error).message}`);
      }
      for (let k = 0; k < before.length; k++) expect(same(got[k]!, before[k]!), `${label}: view ${k} reads differently`).toBe(true);
      if (n % 9 === 4) {
        const file = join(tmp.path, `${name}-crash.qcow2`);
        writeFileSync(file, bytes);
        const r = qemuCheck(file, 'qcow2');
        expect(r.result?.['corruptions'] ?? 0, `${label}: qemu-img check: ${r.stderr}`).toBe(0);
        expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', beforeFile, file], { allowFail: true }).status, `${label}: qemu-img compare`).toBe(0);
        verdict.qemu++;
        // Resume: sparsify and compact again finish the job.
        const again = MemoryStorage.from(bytes, { name: 'c.qcow2' });
        await sparsifyQcow2(again);
        const c = await compactQcow2(again);
        expect(c.sizeAfter, `${label}: resumed compaction`).toBe(c.allocatedBytes);
        // Leaks a crash left are given back, except a shared cluster whose pointers were half rewritten: both copies keep
        // the shared refcount (a count above the references; qemu-img check -r leaks lowers it).
        expect(await checked(again.toBytes(), `${label}, resumed`), `${label}, resumed: leaks`).toBeLessThanOrEqual(leaks);
        got = await views(again.toBytes());
        for (let k = 0; k < before.length; k++) expect(same(got[k]!, before[k]!), `${label}, resumed: view ${k}`).toBe(true);
        verdict.resumed++;
      }
      n++;
    }
  }
  return verdict;
}

const summary: string[] = [];
afterAll(() => {
  if (summary.length) process.stderr.write(`[qcow2 compact crash] ${summary.join('; ')}\n`);
});

describeQemu('crash at every point of qcow2 sparsify and compact', () => {
  it('an image with snapshots, compressed clusters and a bitmap opens, checks without corruption and reads as before', async () => {
    const image = qemuImage();
    const sp = await crashEveryPoint('sparsify', image, (s) => sparsifyQcow2(s, { minZeroRun: 512 }), 1);
    summary.push(`sparsify: ${sp.points} points x 3 modes, ${sp.leaky} leaky, ${sp.qemu} through qemu-img, ${sp.resumed} resumed`);
    expect(sp.points).toBeGreaterThanOrEqual(2);
    const sparse = MemoryStorage.from(image, { name: 'c.qcow2' });
    await sparsifyQcow2(sparse, { minZeroRun: 512 });
    let moved = '';
    const cp = await crashEveryPoint(
      'compact',
      sparse.toBytes(),
      async (s) => {
        const r = await compactQcow2(s);
        moved = `${r.dataClustersMoved} data and ${r.metadataClustersMoved} metadata clusters moved, ${r.sizeBefore} -> ${r.sizeAfter}`;
        expect(r.metadataClustersMoved).toBeGreaterThanOrEqual(2);
      },
      2,
    );
    summary.push(moved);
    summary.push(`compact: ${cp.points} points x 3 modes, ${cp.leaky} leaky, ${cp.qemu} through qemu-img, ${cp.resumed} resumed`);
    expect(cp.points).toBeGreaterThan(10);
    expect(cp.leaky).toBeGreaterThan(0);
  }, 600_000);

  it('an abort between moves leaves a clean image, and a second run finishes', async () => {
    const storage = MemoryStorage.from(qemuImage(), { name: 'c.qcow2' });
    const before = await views(storage.toBytes());
    await sparsifyQcow2(storage);
    const controller = new AbortController();
    let calls = 0;
    const first = compactQcow2(storage, {
      signal: controller.signal,
      onProgress: () => {
        if (++calls === 2) controller.abort();
      },
    });
    await expect(first).rejects.toSatisfy((e) => ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED');
    expect(await checked(storage.toBytes(), 'aborted')).toBe(0);
    const done = await compactQcow2(storage);
    expect(done.bytesMoved).toBeGreaterThan(0);
    expect(done.sizeAfter).toBe(done.allocatedBytes);
    const got = await views(storage.toBytes());
    for (let k = 0; k < before.length; k++) expect(same(got[k]!, before[k]!), `view ${k}`).toBe(true);
    const file = join(tmp.path, 'resumed.qcow2');
    writeFileSync(file, storage.toBytes());
    const r = qemuCheck(file, 'qcow2');
    expect([r.status, r.result?.['corruptions'] ?? 0, r.result?.['leaks'] ?? 0], r.stderr).toEqual([0, 0, 0]);
  });
});
