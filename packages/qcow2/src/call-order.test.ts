/**
 * Call order: operations of every kind fired together (Promise.all, no
 * await between them) over overlapping ranges take effect in call order.
 * A model applies them in that order; the disk must read as the model,
 * pass checkQcow2 and, on a real file, qemu-img check and compare against
 * the model written as raw.
 */
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import type { Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, seededBytes, tempDir } from '@img/testkit';
import { createQcow2, type Qcow2CreateOptions } from './create.js';
import { checkQcow2 } from './check-qcow2.js';
import type { Qcow2Disk } from './image.js';
import './driver.js';

type OrderOp = { op: 'write'; offset: number; length: number; seed: number } | { op: 'zero'; offset: number; length: number; mayUnmap: boolean } | { op: 'discard'; offset: number; length: number } | { op: 'compressed'; cluster: number; count: number; seed: number };

interface OrderShape {
  name: string;
  options: Partial<Qcow2CreateOptions> & { clusterSize: number };
  size: number;
  /** Where most operations land: a window of clusters (across an L2 table boundary where there is one). */
  window: [number, number];
}

const SHAPES: OrderShape[] = [
  { name: '512-byte clusters, across an L2 table boundary', options: { clusterSize: 512 }, size: 64 * 1024, window: [28 * 1024, 36 * 1024] },
  { name: '4 KiB clusters', options: { clusterSize: 4096 }, size: 64 * 1024, window: [0, 64 * 1024] },
  { name: 'extended L2, 16 KiB clusters', options: { clusterSize: 16384, extendedL2: true }, size: 128 * 1024, window: [16 * 1024, 80 * 1024] },
];

/** Compressible data for seeds divisible by 3, random otherwise (stored plain by writeCompressed). */
function bytesFor(length: number, seed: number): Uint8Array {
  return seed % 3 === 0 ? new Uint8Array(length).fill(1 + (seed % 250)) : seededBytes(length, seed);
}

function opArb(shape: OrderShape): fc.Arbitrary<OrderOp> {
  const cs = shape.options.clusterSize;
  const [lo, hi] = shape.window;
  const range = fc.record({ at: fc.integer({ min: lo, max: hi - 1 }), len: fc.oneof(fc.integer({ min: 1, max: 3 * cs }), fc.constantFrom(512, cs, 2 * cs)), snap: fc.boolean() }).map(({ at, len, snap }) => {
    const offset = snap ? at - (at % 512) : at;
    return { offset, length: Math.min(len, shape.size - offset) };
  });
  const clusters = Math.floor(lo / cs);
  const lastCluster = Math.ceil(hi / cs) - 1;
  return fc.oneof(
    { weight: 4, arbitrary: fc.tuple(range, fc.nat()).map(([r, seed]): OrderOp => ({ op: 'write', ...r, seed })) },
    { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, mayUnmap]): OrderOp => ({ op: 'zero', ...r, mayUnmap })) },
    { weight: 2, arbitrary: range.map((r): OrderOp => ({ op: 'discard', ...r })) },
    {
      weight: 3,
      arbitrary: fc.record({ cluster: fc.integer({ min: clusters, max: lastCluster }), count: fc.integer({ min: 1, max: 2 }), seed: fc.nat() }).map(({ cluster, count, seed }): OrderOp => ({ op: 'compressed', cluster, count: Math.min(count, shape.size / cs - cluster), seed })),
    },
  );
}

/** Starts `o` on the disk (not awaited) and applies it to the model, in the same order. */
function start(disk: Qcow2Disk, o: OrderOp, model: Uint8Array, cs: number): Promise<void> {
  switch (o.op) {
    case 'write': {
      const data = bytesFor(o.length, o.seed);
      model.set(data, o.offset);
      return disk.write(o.offset, data);
    }
    case 'zero':
      model.fill(0, o.offset, o.offset + o.length);
      return disk.writeZeroes(o.offset, o.length, { mayUnmap: o.mayUnmap });
    case 'discard':
      // No backing file: discarded bytes read as zeros.
      model.fill(0, o.offset, o.offset + o.length);
      return disk.discard(o.offset, o.length);
    case 'compressed': {
      const data = bytesFor(o.count * cs, o.seed);
      model.set(data, o.cluster * cs);
      return disk.writeCompressed(o.cluster * cs, data);
    }
  }
}

/** Fires each burst with Promise.all (no await in between), then compares the disk with the model. */
async function runBursts(disk: Qcow2Disk, bursts: OrderOp[][], model: Uint8Array): Promise<void> {
  const cs = disk.clusterSize;
  for (const [k, ops] of bursts.entries()) {
    await Promise.all(ops.map((o) => start(disk, o, model, cs)));
    const got = await disk.read(0, model.length);
    expect(bytesEqual(got, model), `burst ${k}: ${JSON.stringify(ops)}`).toBe(true);
  }
}

function burstsArb(shape: OrderShape): fc.Arbitrary<{ prefill: boolean; bursts: OrderOp[][] }> {
  return fc.record({ prefill: fc.boolean(), bursts: fc.array(fc.array(opArb(shape), { minLength: 2, maxLength: 12 }), { minLength: 1, maxLength: 3 }) });
}

async function freshDisk(storage: Storage, shape: OrderShape, prefill: boolean, model: Uint8Array): Promise<Qcow2Disk> {
  const disk = await createQcow2(storage, { size: shape.size, ...shape.options } as Qcow2CreateOptions);
  if (prefill) {
    // Allocated clusters: writes into them take the path that changes no metadata.
    const data = seededBytes(shape.size, 7);
    await disk.write(0, data);
    model.set(data);
  }
  return disk;
}

describe('operations fired together keep call order on overlapping ranges', () => {
  it('a write called after a compressed write of the same cluster wins', async () => {
    const disk = await createQcow2(new MemoryStorage({ name: 'o.qcow2' }), { size: 1 << 20, clusterSize: 65536 });
    const a = new Uint8Array(65536).fill(0xaa);
    const b = new Uint8Array(65536).fill(0xbb);
    await Promise.all([disk.writeCompressed(0, a), disk.write(0, b)]);
    expect(bytesEqual(await disk.read(0, 65536), b)).toBe(true);
    await Promise.all([disk.writeCompressed(0, a), disk.writeZeroes(0, 4096), disk.discard(8192, 512)]);
    const want = a.slice();
    want.fill(0, 0, 4096);
    want.fill(0, 8192, 8704);
    expect(bytesEqual(await disk.read(0, 65536), want)).toBe(true);
    await disk.close();
  });

  it('a resize called after a compressed write waits for it', async () => {
    const disk = await createQcow2(new MemoryStorage({ name: 'r.qcow2' }), { size: 1 << 20, clusterSize: 65536 });
    const a = new Uint8Array(65536).fill(0xaa);
    await Promise.all([disk.writeCompressed(983040, a), disk.resize(917504, { shrink: true })]);
    expect(disk.size).toBe(917504);
    await disk.resize(1 << 20);
    expect(bytesEqual(await disk.read(983040, 65536), new Uint8Array(65536))).toBe(true);
    await disk.close();
  });

  for (const shape of SHAPES) {
    it(`${shape.name}: random bursts of every operation kind match a model applied in call order`, async () => {
      await fc.assert(
        fc.asyncProperty(burstsArb(shape), async ({ prefill, bursts }) => {
          const storage = new MemoryStorage({ name: 'p.qcow2' });
          const model = new Uint8Array(shape.size);
          const disk = await freshDisk(storage, shape, prefill, model);
          await runBursts(disk, bursts, model);
          await disk.close();
          const check = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'check.qcow2' }), {});
          expect(check.corruptions, check.messages.join('\n')).toBe(0);
          expect(check.leaks, check.messages.join('\n')).toBe(0);
        }),
        { numRuns: Number(process.env.IMG_ORDER_RUNS ?? 60), seed: process.env.IMG_SEED ? Number(process.env.IMG_SEED) : undefined },
      );
    });
  }
});

describeQemu('call order on a real file, judged by qemu-img check and compare', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-order-'));
  });
  afterAll(() => cleanup());

  for (const shape of SHAPES) {
    it(shape.name, async () => {
      let run = 0;
      await fc.assert(
        fc.asyncProperty(burstsArb(shape), async ({ prefill, bursts }) => {
          const image = join(dir, `p${run}.qcow2`);
          const expected = join(dir, `p${run++}.raw`);
          const model = new Uint8Array(shape.size);
          const disk = await freshDisk(await FileStorage.create(image), shape, prefill, model);
          await runBursts(disk, bursts, model);
          await disk.close();
          writeFileSync(expected, model);
          const check = qemuCheck(image, 'qcow2');
          expect(check.status, `${check.stderr} ${JSON.stringify(check.result)}`).toBe(0);
          expect(qemuCompare(image, expected, 'qcow2', 'raw')).toBe(true);
        }),
        { numRuns: 12, seed: process.env.IMG_SEED ? Number(process.env.IMG_SEED) : undefined },
      );
    });
  }
});
