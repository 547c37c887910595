/**
 * Call order: writes, zero writes and discards fired together (Promise.all,
 * no await between them) over overlapping ranges, across blocks, take
 * effect in call order, for fixed, dynamic and differencing disks. A model
 * applies them in that order; the disk must read as the model, pass
 * checkVhd and, on real files, compare equal to the model written as raw
 * (qemu-img compare, for the shapes qemu reads; qemu-img check has no
 * VHD checks, so qemu-img info must open the result).
 */
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import type { Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCompare, qemuInfo, seededBytes, tempDir } from '@img/testkit';
import { createVhd } from './create.js';
import { checkVhd } from './check.js';
import type { VhdDisk } from './disk.js';

type OrderOp = { op: 'write' | 'zero' | 'discard'; offset: number; length: number; seed: number; mayUnmap: boolean };

interface OrderShape {
  name: string;
  type: 'fixed' | 'dynamic' | 'differencing';
  size: number;
  blockSize: number;
}

const SHAPES: OrderShape[] = [
  { name: 'dynamic, 4 KiB blocks', type: 'dynamic', size: 64 * 1024, blockSize: 4096 },
  { name: 'dynamic, 512-byte blocks', type: 'dynamic', size: 16 * 1024, blockSize: 512 },
  { name: 'differencing, 4 KiB blocks', type: 'differencing', size: 64 * 1024, blockSize: 4096 },
  { name: 'fixed', type: 'fixed', size: 64 * 1024, blockSize: 4096 },
];

/** Operations biased to a few blocks, most spanning block boundaries, so that many overlap. */
function opArb(shape: OrderShape): fc.Arbitrary<OrderOp> {
  const span = Math.min(shape.size, 8 * shape.blockSize);
  return fc
    .record({
      op: fc.constantFrom<OrderOp['op']>('write', 'write', 'zero', 'zero', 'discard'),
      at: fc.nat(span - 1),
      snap: fc.boolean(),
      length: fc.oneof(fc.integer({ min: 1, max: 3 * shape.blockSize }), fc.constantFrom(512, shape.blockSize, 2 * shape.blockSize + 512)),
      seed: fc.nat(),
      mayUnmap: fc.boolean(),
    })
    .map(({ op, at, snap, length, seed, mayUnmap }) => {
      const offset = snap ? at - (at % 512) : at;
      return { op, offset, length: Math.min(length, shape.size - offset), seed, mayUnmap };
    });
}

function burstsArb(shape: OrderShape): fc.Arbitrary<{ prefill: boolean; bursts: OrderOp[][] }> {
  return fc.record({ prefill: fc.boolean(), bursts: fc.array(fc.array(opArb(shape), { minLength: 2, maxLength: 12 }), { minLength: 1, maxLength: 3 }) });
}

/** Starts `o` on the disk (not awaited) and applies it to the model, in the same order. */
function start(disk: VhdDisk, o: OrderOp, model: Uint8Array): Promise<void> {
  if (o.op === 'write') {
    const data = seededBytes(o.length, o.seed);
    model.set(data, o.offset);
    return disk.write(o.offset, data);
  }
  // Discarded bytes read as zeros in every VHD type (a differencing disk writes zeros over its parent's data).
  model.fill(0, o.offset, o.offset + o.length);
  return o.op === 'zero' ? disk.writeZeroes(o.offset, o.length, { mayUnmap: o.mayUnmap }) : disk.discard(o.offset, o.length);
}

async function runBursts(disk: VhdDisk, bursts: OrderOp[][], model: Uint8Array): Promise<void> {
  for (const [k, ops] of bursts.entries()) {
    await Promise.all(ops.map((o) => start(disk, o, model)));
    expect(bytesEqual(await disk.read(0, model.length), model), `burst ${k}: ${JSON.stringify(ops)}`).toBe(true);
  }
}

/** The disk under test; a differencing disk gets a dynamic parent full of data (so zeros must be written over it). */
async function makeDisk(shape: OrderShape, storage: (name: string) => Promise<Storage>, prefill: boolean, model: Uint8Array): Promise<VhdDisk> {
  let disk: VhdDisk;
  if (shape.type === 'differencing') {
    const parent = await createVhd(await storage('p.vhd'), { size: shape.size, blockSize: shape.blockSize });
    const below = seededBytes(shape.size, 3);
    // Every other block in the parent: the rest reads as zeros through the child.
    for (let b = 0; b < shape.size; b += 2 * shape.blockSize) await parent.write(b, below.subarray(b, b + shape.blockSize));
    for (let b = 0; b < shape.size; b += 2 * shape.blockSize) model.set(below.subarray(b, b + shape.blockSize), b);
    await parent.flush();
    disk = await createVhd(await storage('c.vhd'), { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: shape.blockSize });
  } else {
    disk = await createVhd(await storage('c.vhd'), { type: shape.type, size: shape.size, blockSize: shape.blockSize });
  }
  if (prefill) {
    const data = seededBytes(shape.size, 7);
    await disk.write(0, data);
    model.set(data);
  }
  return disk;
}

describe('VHD operations fired together keep call order on overlapping ranges', () => {
  it('a zero write over several blocks is not overtaken by a write called after it', async () => {
    const disk = await createVhd(new MemoryStorage({ name: 'z.vhd' }), { size: 64 * 1024, blockSize: 4096 });
    await disk.write(0, new Uint8Array(64 * 1024).fill(1));
    const b = new Uint8Array(4096).fill(0xbb);
    await Promise.all([disk.writeZeroes(0, 64 * 1024), disk.write(8192, b)]);
    const want = new Uint8Array(64 * 1024);
    want.set(b, 8192);
    expect(bytesEqual(await disk.read(0, want.length), want)).toBe(true);
    await disk.close();
  });

  for (const shape of SHAPES) {
    it(`${shape.name}: random bursts match a model applied in call order`, async () => {
      await fc.assert(
        fc.asyncProperty(burstsArb(shape), async ({ prefill, bursts }) => {
          const files = new Map<string, MemoryStorage>();
          const storage = async (name: string): Promise<Storage> => {
            const s = new MemoryStorage({ name });
            files.set(name, s);
            return s;
          };
          const model = new Uint8Array(shape.size);
          const disk = await makeDisk(shape, storage, prefill, model);
          await runBursts(disk, bursts, model);
          await disk.close();
          const check = await checkVhd(MemoryStorage.from(files.get('c.vhd')!.toBytes(), { name: 'c.vhd' }));
          expect(check.corruptions, JSON.stringify(check)).toBe(0);
          expect(check.leaks, JSON.stringify(check)).toBe(0);
        }),
        { numRuns: Number(process.env.IMG_ORDER_RUNS ?? 60), seed: process.env.IMG_SEED ? Number(process.env.IMG_SEED) : undefined },
      );
    });
  }
});

describeQemu('VHD call order on real files, judged by qemu-img compare', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('vhd-order-'));
  });
  afterAll(() => process.env.IMG_KEEP || cleanup());

  // qemu's vpc driver reads no parent (differencing) and takes 512-byte blocks to have no sector bitmap.
  for (const shape of SHAPES.filter((sh) => sh.type !== 'differencing' && sh.blockSize > 512)) {
    it(shape.name, async () => {
      let run = 0;
      await fc.assert(
        fc.asyncProperty(burstsArb(shape), async ({ prefill, bursts }) => {
          const sub = join(dir, `${shape.type}-${shape.blockSize}-${run++}`);
          const { mkdirSync } = await import('node:fs');
          mkdirSync(sub);
          const model = new Uint8Array(shape.size);
          const disk = await makeDisk(shape, (name) => FileStorage.create(join(sub, name)), prefill, model);
          await runBursts(disk, bursts, model);
          await disk.close();
          const expected = join(sub, 'model.raw');
          writeFileSync(expected, model);
          const image = join(sub, 'c.vhd');
          expect(qemuInfo(image, 'vpc')['virtual-size']).toBe(shape.size);
          expect(qemuCompare(image, expected, 'vpc', 'raw'), `${sub}: ${JSON.stringify(bursts)}`).toBe(true);
        }),
        { numRuns: 10, seed: process.env.IMG_SEED ? Number(process.env.IMG_SEED) : undefined },
      );
    });
  }
});
