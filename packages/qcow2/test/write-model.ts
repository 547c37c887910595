/**
 * The flat in-memory model the write tests run against: random operation
 * sequences, the image shapes they run on, and the final verification.
 */
import fc from 'fast-check';
import { MemoryStorage, bytesEqual } from '@img/block';
import type { Resolver, Storage } from '@img/block';
import { seededBytes } from '@img/testkit';
import { createQcow2, type Qcow2CreateOptions } from '../src/create.js';
import { openQcow2 } from '../src/open.js';
import { type Qcow2Disk } from '../src/image.js';
import { checkQcow2 } from '../src/check-qcow2.js';
import '../src/driver.js';

export type Op =
  | { op: 'write'; offset: number; length: number; seed: number }
  | { op: 'zero'; offset: number; length: number; mayUnmap: boolean }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'compressed'; cluster: number; count: number; seed: number }
  | { op: 'grow'; by: number }
  | { op: 'reopen' }
  | { op: 'burst'; writes: Array<{ offset: number; length: number; seed: number }> };

export interface Shape {
  name: string;
  size: number;
  options: Partial<Qcow2CreateOptions>;
  /** Backing file content (raw), if any. */
  backing?: number;
  ops?: number;
  runs?: number;
  noCompressed?: boolean;
}

/** Makes compressible-or-not data: seeds divisible by 3 give runs of a byte (compressible). */
export function dataFor(length: number, seed: number): Uint8Array {
  if (seed % 3 === 0) return new Uint8Array(length).fill(seed & 0xff);
  return seededBytes(length, seed);
}

/** An offset/length arbitrary biased to cluster boundaries and their neighbours. */
function rangeArb(size: () => number, cluster: number): fc.Arbitrary<{ offset: number; length: number }> {
  return fc
    .record({
      unit: fc.constantFrom(1, 512, cluster / 2, cluster),
      at: fc.nat(1 << 20),
      delta: fc.constantFrom(0, 0, 1, -1, 511),
      len: fc.oneof(fc.integer({ min: 1, max: 3 * cluster }), fc.constantFrom(cluster, 2 * cluster, 512), fc.integer({ min: 1, max: 40 * cluster })),
    })
    .map(({ unit, at, delta, len }) => {
      const s = size();
      let offset = Math.min(s - 1, Math.max(0, ((at * unit) % s) + delta));
      if (offset < 0) offset = 0;
      const length = Math.max(1, Math.min(len, s - offset));
      return { offset, length };
    });
}

export function opsArb(shape: Shape, cluster: number, size: () => number, count: number): fc.Arbitrary<Op[]> {
  const range = rangeArb(size, cluster);
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 6, arbitrary: fc.tuple(range, fc.nat()).map(([r, seed]) => ({ op: 'write' as const, ...r, seed })) },
    { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, mayUnmap]) => ({ op: 'zero' as const, ...r, mayUnmap })) },
    { weight: 2, arbitrary: range.map((r) => ({ op: 'discard' as const, ...r })) },
    {
      weight: shape.noCompressed ? 0 : 2,
      arbitrary: fc.tuple(fc.nat(1 << 16), fc.integer({ min: 1, max: 4 }), fc.nat()).map(([c, n, seed]) => ({ op: 'compressed' as const, cluster: c, count: n, seed })),
    },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 8 }).map((k) => ({ op: 'grow' as const, by: k * 512 * 37 })) },
    { weight: 1, arbitrary: fc.constant({ op: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.array(fc.tuple(range, fc.nat()), { minLength: 2, maxLength: 6 }).map((ws) => ({ op: 'burst' as const, writes: ws.map(([r, seed]) => ({ ...r, seed })) })) },
  );
  return fc.array(op, { minLength: 1, maxLength: count });
}

/** Runs ops on a fresh image and the model; returns the final storage and model. */
export async function runOps(
  shape: Shape,
  ops: Op[],
  storage: Storage = new MemoryStorage({ name: 'p.qcow2' }),
  reopenStorage: (old: Storage) => Promise<Storage> = async (old) => MemoryStorage.from((old as MemoryStorage).toBytes(), { name: old.name }),
): Promise<{ storage: Storage; model: Uint8Array; disk: Qcow2Disk; backing: Uint8Array; dataFile: () => MemoryStorage }> {
  const backing = shape.backing ? seededBytes(shape.backing, 99) : new Uint8Array(0);
  const resolver: Resolver = async ({ name }) => {
    if (name === 'base.raw') return MemoryStorage.from(backing, { name, readOnly: true });
    if (name === 'data.img') return dataFile;
    throw new Error(`unexpected ${name}`);
  };
  let dataFile = new MemoryStorage({ name: 'data.img' });
  const options: Qcow2CreateOptions = { size: shape.size, ...shape.options, resolver } as Qcow2CreateOptions;
  if (shape.backing) Object.assign(options, { backingFile: 'base.raw', backingFormat: 'raw' });
  if (shape.options.dataFile) options.dataFileStorage = dataFile;
  let disk = await createQcow2(storage, options);
  let model = new Uint8Array(disk.size);
  model.set(backing.subarray(0, model.length));
  const cs = disk.clusterSize;
  const backingByte = (i: number) => (i < backing.length ? backing[i]! : 0);
  for (const o of ops) {
    switch (o.op) {
      case 'write': {
        if (o.offset + o.length > disk.size) break;
        const d = dataFor(o.length, o.seed);
        await disk.write(o.offset, d);
        model.set(d, o.offset);
        break;
      }
      case 'zero':
        if (o.offset + o.length > disk.size) break;
        await disk.writeZeroes(o.offset, o.length, { mayUnmap: o.mayUnmap });
        model.fill(0, o.offset, o.offset + o.length);
        break;
      case 'discard': {
        if (o.offset + o.length > disk.size) break;
        await disk.discard(o.offset, o.length);
        const got = await disk.read(o.offset, o.length);
        for (let i = 0; i < got.length; i++) {
          const v = got[i]!;
          if (v !== 0 && v !== backingByte(o.offset + i) && v !== model[o.offset + i]) {
            throw new Error(`discard at ${o.offset + i}: read ${v}, expected 0 or backing ${backingByte(o.offset + i)}`);
          }
        }
        model.set(got, o.offset);
        break;
      }
      case 'compressed': {
        const clusters = Math.ceil(disk.size / cs);
        const first = o.cluster % clusters;
        const count = Math.min(o.count, clusters - first);
        const length = Math.min(count * cs, disk.size - first * cs);
        const d = dataFor(length, o.seed);
        await disk.writeCompressed(first * cs, d);
        model.set(d, first * cs);
        break;
      }
      case 'grow': {
        const size = disk.size + o.by;
        await disk.resize(size);
        const next = new Uint8Array(size);
        next.set(model);
        // Past the old end the backing file shows through again where it is long enough.
        for (let i = model.length; i < size; i++) next[i] = 0;
        model = next;
        break;
      }
      case 'reopen':
        // Closing the disk closes its storages: reopen from what they hold.
        await disk.close();
        storage = await reopenStorage(storage);
        dataFile = MemoryStorage.from(dataFile.toBytes(), { name: 'data.img' });
        disk = await openQcow2(storage, { readOnly: false, resolver });
        break;
      case 'burst': {
        // Overlapping writes, not awaited one by one: each L2 table applies them in call order.
        const jobs: Promise<void>[] = [];
        for (const w of o.writes) {
          if (w.offset + w.length > disk.size) continue;
          const d = dataFor(w.length, w.seed);
          jobs.push(disk.write(w.offset, d));
          model.set(d, w.offset);
        }
        await Promise.all(jobs);
        break;
      }
    }
  }
  return { storage, model, disk, backing, dataFile: () => dataFile };
}

export async function verify(shape: Shape, result: { storage: Storage; model: Uint8Array; disk: Qcow2Disk }): Promise<void> {
  const { disk, model, storage } = result;
  const got = await disk.read(0, disk.size);
  if (!bytesEqual(got, model)) {
    let i = 0;
    while (got[i] === model[i]) i++;
    throw new Error(`${shape.name}: content differs first at ${i}: ${got[i]} != ${model[i]}`);
  }
  await disk.close();
  const check = await checkQcow2(MemoryStorage.from((storage as MemoryStorage).toBytes(), { name: 'check.qcow2' }), {});
  if (check.corruptions || check.leaks) throw new Error(`${shape.name}: check found ${check.corruptions} corruptions, ${check.leaks} leaks:\n${check.messages.slice(0, 8).join('\n')}`);
}

export const SHAPES: Shape[] = [
  { name: 'v3 4k clusters', size: 256 * 1024, options: { clusterSize: 4096 } },
  { name: 'v3 512-byte clusters, 64-bit refcounts (refcount table growth)', size: 1024 * 1024, options: { clusterSize: 512, refcountBits: 64 }, ops: 14 },
  { name: 'v3 512-byte clusters, 1-bit refcounts', size: 200 * 1024, options: { clusterSize: 512, refcountBits: 1 } },
  { name: 'v2 4k clusters over a raw backing file', size: 192 * 1024, options: { compat: 'v2', clusterSize: '4k' }, backing: 100 * 1024 },
  { name: 'v3 4k clusters over a backing file, 2-bit refcounts', size: 160 * 1024, options: { clusterSize: 4096, refcountBits: 2 }, backing: 130 * 1024 },
  { name: 'extended L2, 16k clusters, over a backing file', size: 512 * 1024, options: { clusterSize: '16k', extendedL2: 'on' }, backing: 300 * 1024 },
  { name: 'extended L2, 32k clusters, no backing', size: 512 * 1024, options: { clusterSize: 32768, extendedL2: true } },
  { name: 'lazy refcounts, 64k clusters', size: 1024 * 1024, options: { lazyRefcounts: true }, ops: 10 },
  { name: 'zstd compression, 8k clusters', size: 256 * 1024, options: { clusterSize: 8192, compressionType: 'zstd' } },
  { name: 'external data file', size: 128 * 1024, options: { clusterSize: 4096, dataFile: 'data.img' }, noCompressed: true },
  { name: 'raw external data file', size: 128 * 1024, options: { clusterSize: 4096, dataFile: 'data.img', dataFileRaw: true }, noCompressed: true },
  { name: 'odd size (not a multiple of the cluster)', size: 100 * 1024 + 512, options: { clusterSize: 4096 }, backing: 50 * 1024 + 100 },
];

/** The cluster size a shape creates its image with. */
export function clusterSizeOf(shape: Shape): number {
  const c = shape.options.clusterSize;
  return typeof c === 'string' ? parseInt(c) * 1024 : (c ?? 65536);
}
