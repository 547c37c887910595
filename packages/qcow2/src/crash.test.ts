/**
 * Crash consistency with FaultStorage: a randomized workload (writes,
 * writeZeroes, discard, compressed writes, snapshot create/delete, resize
 * grow and shrink, flushes) runs on images of every refcount width, with
 * lazy refcounts on and off, extended L2 entries, a backing file and v2;
 * then the image is rebuilt as a crash would leave it after every storage
 * operation (a random sample where there are too many) in the three crash
 * models: `drop` (unflushed writes lost), `subset` (any subset of them
 * landed), `torn` (they landed, the last one only partly).
 *
 * Every crash image must open read-only and read-write (a dirty lazy
 * image is repaired on the read-write open); checkQcow2 must find no
 * corruption (leaks are allowed, and `repair: 'leaks'` removes them); its
 * size must be one of the sizes since the last flush; and each sector
 * must read as in one of the states between the last flush the workload
 * saw complete and the step in flight: every byte flushed before the
 * crash is there. A sample of crash images also goes through
 * `qemu-img check`.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { crashWindow, hasQemuImg, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { createQcow2, type Qcow2CreateOptions } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { INCOMPAT_DIRTY } from './constants.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
/** At most this many crash points per mode and configuration (a seeded random sample beyond). */
const MAX_POINTS = Number(process.env.IMG_CRASH_POINTS ?? 70);
/** Crash images per configuration that also go through qemu-img check. */
const QEMU_SAMPLES = 3;
const SECTOR = 512;
const SEED = Number(process.env.IMG_SEED ?? 1);

const tmp = tempDir('qcow2-crash-');
afterAll(() => tmp.cleanup());

interface Config {
  name: string;
  size: number;
  options: Partial<Qcow2CreateOptions>;
  /** Raw backing file of this many bytes. */
  backing?: number;
  steps: number;
  snapshots?: boolean;
}

const CONFIGS: Config[] = [
  { name: 'refcount_bits 1, 512-byte clusters', size: 192 * 1024, options: { clusterSize: 512, refcountBits: 1 }, steps: 22 },
  { name: 'refcount_bits 2, 4k clusters, raw backing file', size: 256 * 1024, options: { clusterSize: 4096, refcountBits: 2 }, backing: 200 * 1024, steps: 22, snapshots: true },
  { name: 'refcount_bits 4, 1k clusters, snapshots', size: 128 * 1024, options: { clusterSize: 1024, refcountBits: 4 }, steps: 22, snapshots: true },
  { name: 'refcount_bits 8, 4k clusters, zstd', size: 256 * 1024, options: { clusterSize: 4096, refcountBits: 8, compressionType: 'zstd' }, steps: 22 },
  { name: 'refcount_bits 16, 4k clusters, snapshots', size: 256 * 1024, options: { clusterSize: 4096 }, steps: 24, snapshots: true },
  { name: 'refcount_bits 32, 512-byte clusters (refcount blocks added)', size: 384 * 1024, options: { clusterSize: 512, refcountBits: 32 }, steps: 20 },
  { name: 'refcount_bits 64, 512-byte clusters (refcount table moves)', size: 512 * 1024, options: { clusterSize: 512, refcountBits: 64 }, steps: 20, snapshots: true },
  { name: 'lazy refcounts, 4k clusters, snapshots', size: 256 * 1024, options: { clusterSize: 4096, lazyRefcounts: true }, steps: 24, snapshots: true },
  { name: 'lazy refcounts, 512-byte clusters, raw backing file', size: 128 * 1024, options: { clusterSize: 512, lazyRefcounts: true, refcountBits: 8 }, backing: 100 * 1024, steps: 20 },
  { name: 'extended L2, 16k clusters, raw backing file', size: 512 * 1024, options: { clusterSize: '16k', extendedL2: true }, backing: 300 * 1024, steps: 22 },
  { name: 'v2, 4k clusters, raw backing file, snapshots', size: 192 * 1024, options: { compat: 'v2', clusterSize: 4096 }, backing: 150 * 1024, steps: 22, snapshots: true },
];

/** The guest's view after one workload step, and how many storage operations had been issued by then. */
interface ModelState {
  size: number;
  bytes: Uint8Array;
  opEnd: number;
  flushed: boolean;
}

function dataFor(length: number, seed: number): Uint8Array {
  if (seed % 4 === 0) return new Uint8Array(length).fill(seed & 0xff);
  if (seed % 4 === 1) return new TextEncoder().encode(`sector ${seed} `.repeat(Math.ceil(length / 8))).subarray(0, length);
  if (seed % 4 === 2) return seededBytes(length, seed);
  // Compresses to about half: compressed clusters that run on past the tail of the last one.
  const out = seededBytes(length, seed);
  for (let i = 0; i < out.length; i++) out[i] = 0x61 + (out[i]! & 15);
  return out;
}

async function runWorkload(config: Config, seed: number): Promise<{ fault: FaultStorage; states: ModelState[]; resolver: Resolver; backing: Uint8Array; log: string[] }> {
  const backing = config.backing ? seededBytes(config.backing, 99) : new Uint8Array(0);
  const resolver: Resolver = async ({ name }) => {
    if (name === 'base.raw') return MemoryStorage.from(backing, { name, readOnly: true });
    throw new Error(`unexpected ${name}`);
  };
  const base = new MemoryStorage({ name: 'c.qcow2' });
  const create = { size: config.size, ...config.options, resolver } as Qcow2CreateOptions;
  if (config.backing) Object.assign(create, { backingFile: 'base.raw', backingFormat: 'raw' });
  await (await createQcow2(base, create)).close();
  const fault = new FaultStorage(base.toBytes(), 'c.qcow2');
  const disk = await openQcow2(fault, { readOnly: false, resolver });
  const cs = disk.clusterSize;
  const random = seededRandom(seed);
  const int = (n: number) => Math.floor(random() * n);
  const maxSize = config.size * 2;
  const model = new Uint8Array(maxSize + cs);
  model.set(backing.subarray(0, disk.size));
  const states: ModelState[] = [{ size: disk.size, bytes: model.slice(), opEnd: fault.ops.length, flushed: true }];
  const push = (flushed: boolean) => states.push({ size: disk.size, bytes: model.slice(), opEnd: fault.ops.length, flushed });
  const log: string[] = [];
  let snaps = 0;
  const live: string[] = [];
  for (let i = 0; i < config.steps; i++) {
    const size = disk.size;
    const r = random();
    let offset = int(size);
    let length = 1 + int(Math.min(12 * cs, size - offset));
    if (random() < 0.5) {
      offset -= offset % cs;
      length = Math.min(size - offset, Math.max(cs, length - (length % cs)));
    }
    try {
      if (r < 0.34) {
        const data = dataFor(length, seed * 1000 + i);
        await disk.write(offset, data);
        model.set(data, offset);
        log.push(`write ${offset}+${length}`);
      } else if (r < 0.44) {
        await disk.writeZeroes(offset, length, { mayUnmap: random() < 0.7 });
        model.fill(0, offset, offset + length);
        log.push(`writeZeroes ${offset}+${length}`);
      } else if (r < 0.53) {
        await disk.discard(offset, length);
        // A discard reads back as zeros or as the backing file: take what it reads (checked against both).
        const got = await disk.read(offset, length);
        for (let k = 0; k < length; k++) {
          const v = got[k]!;
          if (v !== 0 && v !== (backing[offset + k] ?? 0) && v !== model[offset + k]) throw new Error(`discard at ${offset + k} reads ${v}`);
        }
        model.set(got, offset);
        log.push(`discard ${offset}+${length}`);
      } else if (r < 0.66) {
        const first = Math.floor(offset / cs);
        const count = 1 + int(6);
        const bytes = Math.min(count * cs, size - first * cs);
        const data = dataFor(bytes, seed * 1000 + i);
        await disk.writeCompressed(first * cs, data);
        model.set(data, first * cs);
        log.push(`writeCompressed ${first * cs}+${bytes}`);
      } else if (r < 0.74 && config.snapshots) {
        if (live.length && random() < 0.4) {
          const name = live.splice(int(live.length), 1)[0]!;
          await disk.deleteSnapshot(name);
          log.push(`deleteSnapshot ${name}`);
        } else {
          const name = `s${++snaps}`;
          await disk.createSnapshot(name);
          live.push(name);
          log.push(`createSnapshot ${name}`);
        }
        push(false);
        continue;
      } else if (r < 0.8) {
        const grow = random() < 0.6 || size <= 4 * cs;
        const to = grow ? Math.min(maxSize, size + (1 + int(8)) * 4096) : Math.max(cs, size - (1 + int(6)) * 4096 - int(8) * 512);
        await disk.resize(to, { shrink: true });
        if (to < size) model.fill(0, to);
        log.push(`resize ${size} -> ${to}`);
      } else {
        await disk.flush();
        log.push('flush');
        push(true);
        continue;
      }
    } catch (e) {
      // Refusals by design (a shrink with snapshots in qemu's rules, ...) change nothing.
      if (ImageError.isInstance(e) && (e.code === 'ERR_IMG_UNSUPPORTED' || e.code === 'ERR_IMG_INVALID_ARG')) {
        log.push(`refused: ${e.message}`);
        continue;
      }
      throw e;
    }
    push(false);
  }
  await disk.close();
  push(true);
  return { fault, states, resolver, backing, log };
}

const windowAt = crashWindow;

function sameSector(a: Uint8Array, b: Uint8Array, at: number, end: number): boolean {
  for (let i = at; i < end; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Where the content fails the window, or undefined. */
function contentProblem(got: Uint8Array, window: ModelState[]): string | undefined {
  if (!window.some((s) => s.size === got.length)) return `size ${got.length} is none of ${[...new Set(window.map((s) => s.size))].join(', ')}`;
  for (let at = 0; at < got.length; at += SECTOR) {
    const end = Math.min(got.length, at + SECTOR);
    if (window.some((s) => sameSector(got, s.bytes, at, end))) continue;
    // FaultStorage tears a write at a multiple of 512 bytes from its start, which for a write that
    // does not start on a sector boundary is inside a sector: then each byte must be one of the states.
    for (let i = at; i < end; i++) {
      if (!window.some((s) => s.bytes[i] === got[i])) return `byte at ${i} matches no state since the last flush (${got[i]})`;
    }
  }
  return undefined;
}

function isDirty(bytes: Uint8Array): boolean {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  return v.getUint32(4) >= 3 && (v.getUint32(76) & (1 << INCOMPAT_DIRTY)) !== 0;
}

/** Picks at most `max` of `points`, always the first and last, the rest at random. */
function sample(points: number[], max: number, random: () => number): number[] {
  if (points.length <= max) return points;
  const chosen = new Set([points[0]!, points[points.length - 1]!]);
  while (chosen.size < max) chosen.add(points[Math.floor(random() * points.length)]!);
  return [...chosen].sort((a, b) => a - b);
}

let tested = 0;
afterAll(() => {
  process.stderr.write(`[qcow2 crash] ${tested} crash images checked\n`);
});

describe('crash consistency (FaultStorage)', () => {
  CONFIGS.forEach((config, k) => {
    it(config.name, async () => {
      const seed = SEED * 100 + k;
      const { fault, states, resolver, backing, log } = await runWorkload(config, seed);
      const random = seededRandom(seed + 7);
      const points = sample(fault.crashPoints(), MAX_POINTS, random);
      let qemuLeft = hasQemuImg ? QEMU_SAMPLES : 0;
      for (const mode of MODES) {
        for (const [j, n] of points.entries()) {
          const where = `${config.name}, crash after op ${n} of ${fault.ops.length} (${mode}); workload: ${log.join('; ')}`;
          const bytes = (await fault.crashImage(n, mode, random)).toBytes();
          const window = windowAt(states, n);
          tested++;
          // Read-only: opens and reads as a state of the window.
          const ro = await openQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }), { resolver }).catch((e: unknown) => {
            throw new Error(`${where}: read-only open failed: ${String(e)}`);
          });
          const got = await ro.read(0, ro.size);
          await ro.close();
          const problem = contentProblem(got, window);
          if (problem) {
            if (process.env.IMG_CRASH_DEBUG) {
              const op = fault.ops[n - 1]!;
              const ops = fault.ops.slice(Math.max(0, n - 8), n + 2).map((o, x) => `${x + Math.max(0, n - 8) + 1}: ${o.kind === 'write' ? `write ${o.position.toString(16)}+${o.data.length}` : o.kind === 'truncate' ? `truncate ${o.size}` : 'flush'}`);
              process.stderr.write(`last op ${JSON.stringify(op.kind)}\n${ops.join('\n')}\n`);
            }
            throw new Error(`${where}: ${problem}`);
          }
          // Read-write: a dirty image is repaired first; afterwards nothing is corrupt.
          const dirty = isDirty(bytes);
          let checked = bytes;
          if (dirty || j % 4 === 0) {
            const rwStorage = MemoryStorage.from(bytes, { name: 'crash.qcow2' });
            const rw = await openQcow2(rwStorage, { readOnly: false, resolver }).catch((e: unknown) => {
              throw new Error(`${where}: read-write open failed: ${String(e)}`);
            });
            const again = await rw.read(0, rw.size);
            await rw.close();
            if (contentProblem(again, window)) throw new Error(`${where}: the read-write open changed the content`);
            checked = rwStorage.toBytes();
            expect(isDirty(checked), where).toBe(false);
          }
          // Snapshot operations switch to their new state with one header write: cut short, on version 2
          // as on version 3, they leave leaks at worst (snapshot-crash.test.ts looks at every point).
          const check = await checkQcow2(MemoryStorage.from(checked, { name: 'crash.qcow2' }));
          if (check.corruptions || check.checkErrors) throw new Error(`${where}: check: ${check.corruptions} corruptions, ${check.checkErrors} errors: ${check.messages.slice(0, 4).join('; ')}`);
          if (check.leaks && j % 3 === 0) {
            const fixed = MemoryStorage.from(checked, { name: 'crash.qcow2' });
            const repaired = await checkQcow2(fixed, { repair: 'leaks' });
            expect(repaired.leaksFixed, where).toBe(check.leaks);
            expect(await checkQcow2(MemoryStorage.from(fixed.toBytes())), where).toMatchObject({ corruptions: 0, leaks: 0 });
          }
          if (qemuLeft > 0 && (j === points.length - 1 || random() < 0.02)) {
            qemuLeft--;
            const file = join(tmp.path, `crash-${k}.qcow2`);
            writeFileSync(file, checked);
            if (config.backing) writeFileSync(join(tmp.path, 'base.raw'), backing);
            const r = spawnSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8' });
            // 0: clean; 3: leaks only.
            if (r.status !== 0 && r.status !== 3) throw new Error(`${where}: qemu-img check exited ${r.status}: ${r.stdout}${r.stderr}`);
          }
        }
      }
    });
  });
});
