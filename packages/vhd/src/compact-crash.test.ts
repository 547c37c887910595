/**
 * Crash consistency of sparsifyVhd and compactVhd: each runs on a
 * FaultStorage; then, for every write or truncate it issued, the file a
 * crash right after it would leave (drop, subset and torn models) must
 * open with img (writable too), check without corruption (leaks are what
 * a crash may leave: a block copied but not yet referenced, an old
 * location, junk before the old footer), read whole as the disk read
 * before, go through vhdiinfo, and (a sample) through qemu-img info and
 * `qemu-img compare` against the image before. A sample of crash images is
 * then compacted again (resume): clean, and no larger than what the image
 * holds.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { hasQemuImg, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { compactVhd } from './compact.js';
import { createVhd } from './create.js';
import { openVhd } from './open.js';
import { sparsifyVhd } from './sparsify.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const hasVhdiinfo = spawnSync('vhdiinfo', ['-V']).status === 0;
const tmp = tempDir('vhd-compact-crash-');
afterAll(() => tmp.cleanup());

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** The parent files by base name (the children here record "p.vhd"). */
function resolverOf(files: Map<string, Uint8Array>): Resolver {
  return async ({ name }) => {
    const base = name.replace(/^.*[\\/]/, '');
    const bytes = files.get(base);
    if (!bytes) throw new ImageError('ERR_IMG_NOT_FOUND', `${name} not found`);
    return MemoryStorage.from(bytes, { name: join(tmp.path, base) });
  };
}

async function guest(bytes: Uint8Array, files: Map<string, Uint8Array>, readOnly = true): Promise<Uint8Array> {
  const d = await openVhd(MemoryStorage.from(bytes, { name: join(tmp.path, 'c.vhd') }), { resolver: resolverOf(files), readOnly });
  try {
    return await d.read(0, d.size);
  } finally {
    await d.close();
  }
}

interface Verdict {
  points: number;
  leaky: number;
  compared: number;
  resumed: number;
}

/** Runs `op` on a FaultStorage over `image`, then judges every crash image. */
async function crashEveryPoint(name: string, image: Uint8Array, files: Map<string, Uint8Array>, op: (s: FaultStorage) => Promise<unknown>, seed: number): Promise<Verdict> {
  const content = await guest(image, files);
  const beforeFile = join(tmp.path, `${name}-before.vhd`);
  writeFileSync(beforeFile, image);
  for (const [base, bytes] of files) writeFileSync(join(tmp.path, base), bytes);
  const fault = new FaultStorage(image, join(tmp.path, 'c.vhd'));
  await op(fault);
  expect(same(await guest(fault.current(), files), content), `${name}: the finished operation changed the guest view`).toBe(true);
  const random = seededRandom(seed);
  const points = fault.crashPoints();
  const verdict: Verdict = { points: points.length, leaky: 0, compared: 0, resumed: 0 };
  let n = 0;
  for (const mode of MODES) {
    for (const count of points) {
      const label = `${name}: ${mode} after ${count}/${fault.ops.length} ops`;
      const bytes = (await fault.crashImage(count, mode, random)).toBytes();
      const report = await checkVhd(MemoryStorage.from(bytes, { name: join(tmp.path, 'c.vhd') }), { resolver: resolverOf(files) });
      expect([report.corruptions, report.checkErrors], `${label}: ${report.messages.join('; ')}`).toEqual([0, 0]);
      if (report.leaks) verdict.leaky++;
      let got: Uint8Array;
      try {
        got = await guest(bytes, files);
      } catch (e) {
        throw new Error(`${label}: does not open: ${(e as Error).message}`);
      }
      expect(same(got, content), `${label}: reads differently from before`).toBe(true);
      // Writable too: the next writer (or the next compaction) must accept it.
      await guest(bytes, files, false);
      const file = join(tmp.path, `${name}-${mode}-${count}.vhd`);
      writeFileSync(file, bytes);
      if (hasVhdiinfo) {
        const r = spawnSync('vhdiinfo', [file], { encoding: 'utf8' });
        expect(r.status, `${label}: vhdiinfo: ${r.stderr}`).toBe(0);
      }
      if (n % 5 === 2) {
        if (hasQemuImg) {
          const info = spawnSync('qemu-img', ['info', '-f', 'vpc', file], { encoding: 'utf8' });
          expect(info.status, `${label}: qemu-img info: ${info.stderr}`).toBe(0);
          const cmp = spawnSync('qemu-img', ['compare', '-f', 'vpc', '-F', 'vpc', beforeFile, file], { encoding: 'utf8' });
          expect(cmp.status, `${label}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`).toBe(0);
          verdict.compared++;
        }
        // Resume: sparsify and compact again finish the job.
        const again = MemoryStorage.from(bytes, { name: join(tmp.path, 'c.vhd') });
        await sparsifyVhd(again, { resolver: resolverOf(files) });
        const c = await compactVhd(again);
        expect(c.sizeAfter, `${label}: resumed compaction`).toBe(c.allocatedBytes);
        const r = await checkVhd(MemoryStorage.from(again.toBytes()), { resolver: resolverOf(files) });
        expect([r.corruptions, r.leaks], `${label}, resumed: ${r.messages.join('; ')}`).toEqual([0, 0]);
        expect(same(await guest(again.toBytes(), files), content), `${label}: resumed`).toBe(true);
        verdict.resumed++;
      }
      n++;
    }
  }
  return verdict;
}

/** A dynamic disk: every block written, then some zeroed whole, some partly. */
async function dynamicImage(blockSize: number, blocks: number): Promise<Uint8Array> {
  const storage = new MemoryStorage({ name: 'd.vhd' });
  const d = await createVhd(storage, { size: blocks * blockSize, blockSize });
  await d.write(0, seededBytes(blocks * blockSize, 1));
  for (let b = 0; b < blocks; b += 2) await d.writeZeroes(b * blockSize, blockSize);
  // Part of block 1 zero: a bitmap write, the block stays.
  await d.writeZeroes(blockSize + 4096, 8192);
  // With 4 MiB blocks (a two-sector bitmap): zeros across the bitmap's sector boundary, two sector writes.
  if (blockSize >= 4 * 1024 * 1024) await d.writeZeroes(blockSize + blockSize / 2 - 8192, 16384);
  await d.close();
  return storage.toBytes();
}

/** A parent with data in its first half, and a child with zeros over both halves, data, and partial zeros. */
async function differencingImage(files: Map<string, Uint8Array>): Promise<Uint8Array> {
  const B = 4096;
  const ps = new MemoryStorage({ name: 'p.vhd' });
  const p = await createVhd(ps, { size: 16 * B, blockSize: B });
  await p.write(0, seededBytes(8 * B, 2));
  await p.close();
  files.set('p.vhd', ps.toBytes());
  const parent = await openVhd(MemoryStorage.from(ps.toBytes(), { name: join(tmp.path, 'p.vhd') }));
  const cs = new MemoryStorage({ name: 'c.vhd' });
  const c = await createVhd(cs, { parent: { disk: parent, relativePath: 'p.vhd', absolutePath: join(tmp.path, 'p.vhd') }, blockSize: B });
  await c.write(0, seededBytes(16 * B, 3));
  for (const b of [1, 3, 9, 10, 12, 15]) await c.write(b * B, new Uint8Array(B));
  await c.write(5 * B + 1024, new Uint8Array(2048));
  await c.write(11 * B + 1024, new Uint8Array(2048));
  await c.close();
  return cs.toBytes();
}

async function sparsified(image: Uint8Array, files: Map<string, Uint8Array>): Promise<Uint8Array> {
  const s = MemoryStorage.from(image, { name: join(tmp.path, 'c.vhd') });
  await sparsifyVhd(s, { resolver: resolverOf(files), minZeroRun: 512 });
  return s.toBytes();
}

const summary: string[] = [];
afterAll(() => {
  if (summary.length) process.stderr.write(`[vhd compact crash] ${summary.join('; ')}\n`);
});

function record(name: string, v: Verdict): void {
  summary.push(`${name}: ${v.points} points x 3 modes, ${v.leaky} leaky, ${v.compared} through qemu-img compare, ${v.resumed} resumed`);
}

describe('crash at every point of sparsify and compact: the image opens, checks without corruption and reads as before', () => {
  it('sparsify and compact a dynamic disk (4 KiB blocks: one-sector bitmaps)', async () => {
    const files = new Map<string, Uint8Array>();
    const image = await dynamicImage(4096, 24);
    const sp = await crashEveryPoint('sparsify-dynamic', image, files, (s) => sparsifyVhd(s, { minZeroRun: 512 }), 1);
    record('sparsify dynamic', sp);
    expect(sp.points).toBeGreaterThan(12);
    const cp = await crashEveryPoint('compact-dynamic', await sparsified(image, files), files, (s) => compactVhd(s), 2);
    record('compact dynamic', cp);
    expect(cp.points).toBeGreaterThan(12);
    expect(cp.leaky).toBeGreaterThan(0);
  });

  it('sparsify a dynamic disk with 4 MiB blocks (two-sector bitmaps, each sector written on its own)', async () => {
    const files = new Map<string, Uint8Array>();
    const image = await dynamicImage(4 * 1024 * 1024, 3);
    const sp = await crashEveryPoint('sparsify-dynamic-4m', image, files, (s) => sparsifyVhd(s, { minZeroRun: 512 }), 3);
    record('sparsify dynamic 4 MiB blocks', sp);
    expect(sp.points).toBe(4);
    const cp = await crashEveryPoint('compact-dynamic-4m', await sparsified(image, files), files, (s) => compactVhd(s), 4);
    record('compact dynamic 4 MiB blocks', cp);
    expect(cp.points).toBeGreaterThan(0);
  });

  it('sparsify and compact a differencing disk (zeros over parent data stay)', async () => {
    const files = new Map<string, Uint8Array>();
    const image = await differencingImage(files);
    const sp = await crashEveryPoint('sparsify-diff', image, files, (s) => sparsifyVhd(s, { resolver: resolverOf(files), minZeroRun: 512 }), 5);
    record('sparsify differencing', sp);
    const cp = await crashEveryPoint('compact-diff', await sparsified(image, files), files, (s) => compactVhd(s), 6);
    record('compact differencing', cp);
    expect(cp.points).toBeGreaterThan(4);
  });
});
