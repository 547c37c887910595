/**
 * Crash consistency with FaultStorage: a randomized workload (writes at
 * random offsets and lengths, some not sector-aligned, writeZeroes,
 * discard, resize, makeEmpty, flushes) runs on a dynamic and on a differencing disk;
 * then the image is rebuilt as a crash would leave it after every storage
 * operation (or a sample when there are too many), in the three crash
 * models: `drop` (unflushed writes lost), `subset` (any subset of them
 * landed), `torn` (they landed, the last one only partly).
 *
 * Every crash image must open, check without corruption (leaks and junk
 * after the last block are allowed: they are repairable), have the size
 * of one of the states since the last flush, and read, sector by sector,
 * as one of the states between the last flush the workload saw complete
 * and the operation in flight: every byte flushed before the crash is
 * there. A coalesce of a child into its parent crashes the same way: the
 * parent reads as exactly its old or its new content (or refuses to open
 * alone, marked), and coalescing again finishes it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, type Storage } from '@img/block';
import { crashWindow, hasQemuImg, hasVhdimount, qemuCompare, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { coalesceVhd } from './coalesce.js';
import { createVhd } from './create.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const MAX_SIZE = 1 << 20;
/** At most this many crash points per mode (sampled evenly at random beyond). */
const MAX_POINTS = 450;

const tmp = tempDir('vhd-crash-');
afterAll(() => tmp.cleanup());

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** The guest's view after one workload step, and how many storage operations had been issued by then. */
interface ModelState {
  size: number;
  bytes: Uint8Array;
  opEnd: number;
  /** The step was a flush: everything before it is durable. */
  flushed: boolean;
}

interface Workload {
  states: ModelState[];
  storage: FaultStorage;
  description: string[];
}

async function runWorkload(disk: VhdDisk, storage: FaultStorage, initial: Uint8Array, seed: number, steps: number, options: { resizes: Array<{ at: number; to: number }>; makeEmptyAt?: number }): Promise<Workload> {
  const random = seededRandom(seed);
  const int = (n: number) => Math.floor(random() * n);
  const model = new Uint8Array(MAX_SIZE);
  model.set(initial.subarray(0, disk.size));
  const states: ModelState[] = [{ size: disk.size, bytes: model.slice(), opEnd: storage.ops.length, flushed: true }];
  const description: string[] = [];
  const push = (flushed: boolean) => states.push({ size: disk.size, bytes: model.slice(), opEnd: storage.ops.length, flushed });
  for (let i = 0; i < steps; i++) {
    const r = random();
    const size = disk.size;
    const aligned = random() < 0.6;
    let offset = int(size);
    let length = 1 + int(Math.min(24_000, size - offset));
    if (aligned) {
      offset -= offset % 512;
      length = Math.max(512, length - (length % 512));
      if (offset + length > size) length = size - offset;
    }
    if (options.makeEmptyAt === i) {
      await disk.makeEmpty();
      model.fill(0);
      model.set(initial.subarray(0, Math.min(initial.length, disk.size)));
      description.push('makeEmpty');
    } else if (options.resizes.some((x) => x.at === i)) {
      const to = options.resizes.find((x) => x.at === i)!.to;
      await disk.resize(to, { shrink: true });
      if (to < size) model.fill(0, to);
      description.push(`resize ${size} -> ${to}`);
    } else if (r < 0.55) {
      const data = seededBytes(length, seed * 1000 + i);
      await disk.write(offset, data);
      model.set(data, offset);
      description.push(`write ${offset}+${length}`);
    } else if (r < 0.68) {
      await disk.writeZeroes(offset, length);
      model.fill(0, offset, offset + length);
      description.push(`writeZeroes ${offset}+${length}`);
    } else if (r < 0.8) {
      await disk.discard(offset, length);
      model.fill(0, offset, offset + length);
      description.push(`discard ${offset}+${length}`);
    } else {
      await disk.flush();
      description.push('flush');
      push(true);
      continue;
    }
    push(false);
  }
  await disk.flush();
  push(true);
  return { states, storage, description };
}

const windowAt = crashWindow;

function explainMismatch(got: Uint8Array, size: number, window: ModelState[]): string | undefined {
  if (!window.some((w) => w.size === size)) return `size ${size} is none of ${window.map((w) => w.size).join(', ')}`;
  for (let s = 0; s < size; s += 512) {
    const end = Math.min(size, s + 512);
    const g = got.subarray(s, end);
    if (!window.some((w) => same(w.bytes.subarray(s, end), g))) return `sector at ${s} is in none of the ${window.length} states since the last flush`;
  }
  return undefined;
}

/** Crash points to test: all of them, or MAX_POINTS of them at random (always the first and the last). */
function pointsToTest(storage: FaultStorage, random: () => number): number[] {
  const all = storage.crashPoints();
  if (all.length <= MAX_POINTS) return all;
  const chosen = new Set<number>([all[0]!, all[all.length - 1]!]);
  while (chosen.size < MAX_POINTS) chosen.add(all[Math.floor(random() * all.length)]!);
  return [...chosen].sort((a, b) => a - b);
}

/** Check messages that are harmless after a crash (repairable leaks). */
function damage(report: Awaited<ReturnType<typeof checkVhd>>): string[] {
  return report.corruptions === 0 && report.checkErrors === 0 ? [] : report.messages;
}

interface Sampled {
  bytes: Uint8Array;
  read: Uint8Array;
  label: string;
}

async function crashAll(w: Workload, open: (s: Storage) => Promise<VhdDisk>, seed: number, sample: Sampled[]): Promise<{ images: number; points: number }> {
  const random = seededRandom(seed);
  const points = pointsToTest(w.storage, random);
  let images = 0;
  for (const mode of MODES) {
    for (const count of points) {
      const image = await w.storage.crashImage(count, mode, random);
      const bytes = image.toBytes();
      const label = `${mode} after ${count}/${w.storage.ops.length} ops`;
      const report = await checkVhd(MemoryStorage.from(bytes, { name: 'crash.vhd' }));
      expect(damage(report), label).toEqual([]);
      if (report.leaks > 0) stats.leaky++;
      const codes = report.problems.map((p) => p.code);
      if (codes.includes('unfinished-allocation')) stats.unfinished++;
      if (codes.includes('footer-copy-stale')) stats.stale++;
      if (report.leaks > 0 && stats.leaky % 5 === 1) {
        // What check calls repairable, it repairs: afterwards only gaps between blocks may remain.
        const copy = MemoryStorage.from(bytes, { name: 'crash.vhd' });
        await checkVhd(copy, { repair: 'leaks' });
        const after = await checkVhd(copy);
        const left = after.problems.filter((p) => p.code === 'junk-after-end' || p.code === 'unfinished-allocation' || p.code === 'footer-copy-stale');
        expect([after.corruptions, left], label).toEqual([0, []]);
        const repaired = await open(copy);
        expect(explainMismatch(await repaired.read(0, repaired.size), repaired.size, windowAt(w.states, count)), label).toBeUndefined();
        await repaired.close();
        stats.repaired++;
      }
      let disk: VhdDisk;
      try {
        disk = await open(image);
      } catch (e) {
        throw new Error(`${label}: does not open: ${(e as Error).message}`);
      }
      const got = await disk.read(0, disk.size);
      const problem = explainMismatch(got, disk.size, windowAt(w.states, count));
      if (problem) expect.fail(`${label}: ${problem}`);
      if (images % 97 === 13) sample.push({ bytes, read: got, label });
      await disk.close();
      images++;
    }
  }
  return { images, points: points.length };
}

const summary: string[] = [];
const stats = { leaky: 0, unfinished: 0, stale: 0, repaired: 0 };
afterAll(() => {
  if (summary.length) process.stderr.write(`[vhd crash] ${summary.join('; ')}; ${JSON.stringify(stats)}\n`);
});

/** Second readers on a sample: qemu-img compare (it reads dynamic VHDs; it ignores parents and bitmaps) and vhdimount. */
function crossCheck(samples: Sampled[], name: string): number {
  if (!hasQemuImg) return 0;
  let n = 0;
  for (const [i, s] of samples.slice(0, 8).entries()) {
    const vhd = join(tmp.path, `${name}-${i}.vhd`);
    const raw = join(tmp.path, `${name}-${i}.raw`);
    writeFileSync(vhd, s.bytes);
    writeFileSync(raw, s.read);
    if (process.env.IMG_VHD_CRASH_DUMP) {
      writeFileSync(`${process.env.IMG_VHD_CRASH_DUMP}/${name}-${i}.vhd`, s.bytes);
      writeFileSync(`${process.env.IMG_VHD_CRASH_DUMP}/${name}-${i}.raw`, s.read);
    }
    expect(qemuCompare(vhd, raw, 'vpc', 'raw'), s.label).toBe(true);
    n++;
  }
  return n;
}

describe('crash consistency (FaultStorage: drop, subset, torn)', () => {
  it('dynamic disk: random writes, zeroes, discards, a resize; every crash image opens, checks clean and keeps flushed data', async () => {
    let totalImages = 0;
    const samples: Sampled[] = [];
    for (const seed of [11, 12]) {
      const made = await createVhd(new MemoryStorage({ name: 'dyn.vhd' }), { size: 400 * 1024 + 1536, blockSize: 4096 });
      const storage = new FaultStorage((made.storage as MemoryStorage).toBytes(), 'dyn.vhd');
      const disk = await openVhd(storage, { readOnly: false });
      const w = await runWorkload(disk, storage, new Uint8Array(0), seed, 28, {
        resizes:
          seed === 11
            ? [
                { at: 9, to: 300 * 1024 },
                { at: 18, to: 700 * 1024 },
              ]
            : [{ at: 12, to: 700 * 1024 }],
      });
      await disk.close();
      const r = await crashAll(w, (s) => openVhd(s), seed, samples);
      totalImages += r.images;
      summary.push(`dynamic seed ${seed} (${w.description.filter((d) => d.startsWith('resize')).join()}): ${w.storage.ops.length} ops, ${r.points} crash points x 3 modes`);
    }
    const checked = crossCheck(samples, 'dyn');
    if (hasVhdimount && existsSync('/dev/fuse')) {
      // vhdimount reads dynamic disks (full bitmaps) as we do.
      for (const [i, s] of samples.slice(0, 2).entries()) {
        const file = join(tmp.path, `mount-${i}.vhd`);
        const mnt = join(tmp.path, `mnt-${i}`);
        mkdirSync(mnt, { recursive: true });
        writeFileSync(file, s.bytes);
        if (process.env.IMG_VHD_CRASH_DUMP) {
          writeFileSync(`${process.env.IMG_VHD_CRASH_DUMP}/mount-${i}.vhd`, s.bytes);
          writeFileSync(`${process.env.IMG_VHD_CRASH_DUMP}/mount-${i}.raw`, s.read);
        }
        const r = spawnSync('vhdimount', [file, mnt], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        try {
          const layer = readdirSync(mnt)
            .filter((x) => /^vhdi\d+$/.test(x))
            .sort()
            .pop()!;
          // libvhdi sizes the disk by the footer's original size, which a resize leaves alone: compare what it shows.
          const theirs = new Uint8Array(readFileSync(join(mnt, layer)));
          expect(theirs.length).toBeGreaterThan(0);
          const n = Math.min(theirs.length, s.read.length);
          expect(same(theirs.subarray(0, n), s.read.subarray(0, n)), s.label).toBe(true);
        } finally {
          spawnSync('umount', [mnt]);
        }
      }
    }
    expect(totalImages).toBeGreaterThan(1000);
    if (hasQemuImg) expect(checked).toBeGreaterThan(3);
    // The interesting states were reached (and repaired).
    expect(stats.unfinished).toBeGreaterThan(0);
    expect(stats.repaired).toBeGreaterThan(0);
  }, 180_000); // hundreds of crash images: seconds per core, minutes on a loaded machine

  it('differencing disk over a full parent: same, including partial-sector copy-on-write, a BAT that grows and makeEmpty', async () => {
    const SIZE = 400 * 1024;
    const parent = await createVhd(new MemoryStorage({ name: 'p.vhd' }), { size: SIZE, blockSize: 16384 });
    const base = seededBytes(SIZE, 99);
    await parent.write(0, base);
    const parentBytes = (parent.storage as MemoryStorage).toBytes();
    const resolver = async () => MemoryStorage.from(parentBytes, { name: 'p.vhd' });
    let totalImages = 0;
    const samples: Sampled[] = [];
    for (const seed of [21, 22]) {
      const made = await createVhd(new MemoryStorage({ name: 'child.vhd' }), { parent: { disk: await openVhd(await resolver()), relativePath: 'p.vhd' }, blockSize: 4096 });
      const storage = new FaultStorage((made.storage as MemoryStorage).toBytes(), 'child.vhd');
      const child = await openVhd(storage, { readOnly: false, resolver });
      const w = await runWorkload(child, storage, base, seed, 28, { resizes: [{ at: seed === 21 ? 8 : 16, to: 640 * 1024 }], makeEmptyAt: seed === 21 ? 20 : 6 });
      await child.close();
      const r = await crashAll(w, (s) => openVhd(s, { resolver }), seed, samples);
      totalImages += r.images;
      summary.push(`differencing seed ${seed} (${w.description.filter((d) => /^(resize|makeEmpty)/.test(d)).join()}): ${w.storage.ops.length} ops, ${r.points} crash points x 3 modes`);
    }
    // qemu reads a differencing disk without its parent and ignores sector bitmaps: where our
    // top layer says a sector is present, qemu must read the same bytes.
    let checked = 0;
    if (hasQemuImg) {
      for (const [i, s] of samples.slice(0, 8).entries()) {
        const vhd = join(tmp.path, `diff-${i}.vhd`);
        const raw = join(tmp.path, `diff-${i}.raw`);
        writeFileSync(vhd, s.bytes);
        expect(spawnSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhd, raw]).status, s.label).toBe(0);
        const theirs = new Uint8Array(readFileSync(raw));
        const ours = await openVhd(MemoryStorage.from(s.bytes), { noBacking: true });
        expect(theirs.length).toBe(ours.size);
        let present = 0;
        for await (const e of ours.extents({ topOnly: true })) {
          if (e.kind !== 'data') continue;
          present += e.length;
          expect(same(theirs.subarray(e.offset, e.offset + e.length), s.read.subarray(e.offset, e.offset + e.length)), `${s.label} at ${e.offset}`).toBe(true);
        }
        expect(present).toBeGreaterThan(0);
        checked++;
      }
    }
    expect(totalImages).toBeGreaterThan(1000);
    if (hasQemuImg) expect(checked).toBeGreaterThan(3);
  }, 180_000);

  it('coalesce: a crashed parent reads as exactly its old or its new content, or refuses to open alone; coalescing again finishes it', async () => {
    const SIZE = 256 * 1024;
    const p0 = await createVhd(new MemoryStorage({ name: 'p.vhd' }), { size: SIZE, blockSize: 8192 });
    await p0.write(0, seededBytes(100_000, 5));
    const parentStart = (p0.storage as MemoryStorage).toBytes();
    const oldContent = await p0.read(0, SIZE);
    const childStorage = new MemoryStorage({ name: 'c.vhd' });
    const child = await createVhd(childStorage, { parent: { disk: await openVhd(MemoryStorage.from(parentStart, { name: 'p.vhd' })), relativePath: 'p.vhd' }, blockSize: 4096 });
    const random = seededRandom(31);
    for (let i = 0; i < 14; i++) {
      const offset = Math.floor(random() * SIZE);
      const length = Math.min(1 + Math.floor(random() * 20_000), SIZE - offset);
      await child.write(offset, seededBytes(length, 200 + i));
    }
    const newContent = await child.read(0, SIZE);
    await child.close();
    const childBytes = childStorage.toBytes();
    const fault = new FaultStorage(parentStart, 'p.vhd');
    await coalesceVhd(MemoryStorage.from(childBytes, { name: 'c.vhd' }), { resolver: async () => fault });
    expect(same(await (await openVhd(MemoryStorage.from(fault.current()))).read(0, SIZE), newContent)).toBe(true);
    let marked = 0;
    let old = 0;
    let done = 0;
    const points = pointsToTest(fault, random);
    for (const mode of MODES) {
      for (const count of points) {
        const label = `${mode} after ${count}/${fault.ops.length} ops`;
        const crashed = (await fault.crashImage(count, mode, random)).toBytes();
        const image = MemoryStorage.from(crashed, { name: 'p.vhd' });
        const report = await checkVhd(MemoryStorage.from(crashed));
        expect([report.corruptions, report.checkErrors], `${label}: ${report.messages.join('; ')}`).toEqual([report.problems.some((p) => p.code === 'coalescing') ? 1 : 0, 0]);
        let alone: VhdDisk | undefined;
        try {
          alone = await openVhd(MemoryStorage.from(crashed, { name: 'p.vhd' }));
        } catch (e) {
          if (!ImageError.isInstance(e) || e.code !== 'ERR_IMG_UNSAFE') throw e;
        }
        if (alone) {
          const got = await alone.read(0, SIZE);
          const isOld = same(got, oldContent);
          if (!isOld && !same(got, newContent)) expect.fail(`${label}: the parent reads as a mix of old and new`);
          if (isOld) old++;
          else done++;
          await alone.close();
          continue;
        }
        marked++;
        // Through its child the chain still reads as the child; then finish the merge.
        const through = await openVhd(MemoryStorage.from(childBytes, { name: 'c.vhd' }), { resolver: async () => MemoryStorage.from(crashed, { name: 'p.vhd' }) });
        expect(same(await through.read(0, SIZE), newContent), label).toBe(true);
        await through.close();
        const again = await coalesceVhd(MemoryStorage.from(childBytes, { name: 'c.vhd' }), { resolver: async () => image });
        expect(again.resumed, label).toBe(true);
        const finished = await openVhd(MemoryStorage.from(image.toBytes()));
        expect(same(await finished.read(0, SIZE), newContent), label).toBe(true);
        expect(damage(await checkVhd(MemoryStorage.from(image.toBytes()))), label).toEqual([]);
      }
    }
    summary.push(`coalesce: ${fault.ops.length} ops, ${points.length} crash points x 3 modes (${old} old, ${marked} marked and resumed, ${done} new)`);
    expect(marked).toBeGreaterThan(100);
    expect(old).toBeGreaterThan(0);
    expect(done).toBeGreaterThan(0);
  });
});
