/**
 * monolithicSparse read-write through the Disk API, against a flat model:
 * random writes (aligned or not, across grains), writeZeroes, discard and
 * flushes, alone and over a parent (copy-on-write of partly written
 * grains); then the image reads as the model, reopened too, checks clean,
 * and qemu-img agrees (check, compare).
 */
import { MemoryStorage } from '@img/block';
import { describeQemu, qemuCheck, qemuCompare, seededBytes, tempDir } from '@img/testkit';
import fc from 'fast-check';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVmdk } from './check.js';
import { createVmdk } from './create.js';
import type { VmdkDisk } from './disk.js';
import { openVmdk } from './open.js';
import { memoryResolver } from '../test/resolver.js';

const SIZE = 1536 * 1024 + 512 * 3; // 24 grains and a partial one
const GRAIN = 64 * 1024;

type Op = { kind: 'write'; offset: number; length: number; seed: number } | { kind: 'zero'; offset: number; length: number } | { kind: 'discard'; offset: number; length: number } | { kind: 'flush' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 150_000 }), seed: fc.nat(1000) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 200_000 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('discard' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 200_000 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
);

async function apply(disk: VmdkDisk, model: Uint8Array, ops: Op[]): Promise<void> {
  // Runs of operations are issued together: the Disk must keep call order where they overlap.
  let batch: Promise<void>[] = [];
  for (const op of ops) {
    if (op.kind === 'flush') {
      await Promise.all(batch);
      batch = [];
      await disk.flush();
      continue;
    }
    const length = Math.min(op.length, SIZE - op.offset);
    if (op.kind === 'write') {
      const data = seededBytes(length, op.seed);
      model.set(data, op.offset);
      batch.push(disk.write(op.offset, data));
    } else {
      model.fill(0, op.offset, op.offset + length);
      batch.push(op.kind === 'zero' ? disk.writeZeroes(op.offset, length) : disk.discard(op.offset, length));
    }
  }
  await Promise.all(batch);
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** A parent with data in some grains, and the child over it (files in memory). */
async function chain(): Promise<{ files: Map<string, Uint8Array | MemoryStorage>; parentBytes: Uint8Array }> {
  const files = new Map<string, Uint8Array | MemoryStorage>();
  const parentStorage = new MemoryStorage({ name: 'base.vmdk' });
  const parent = await createVmdk(parentStorage, { size: SIZE });
  const parentBytes = new Uint8Array(SIZE);
  for (const [at, n, seed] of [
    [0, 200_000, 1],
    [700_000, 70_000, 2],
    [SIZE - 5000, 5000, 3],
  ] as const) {
    const d = seededBytes(n, seed);
    parentBytes.set(d, at);
    await parent.write(at, d);
  }
  const cid = parent.cid;
  await parent.flush();
  files.set('base.vmdk', parentStorage.toBytes());
  await parent.close();
  // The child: a fresh sparse image whose descriptor names the parent.
  const childStorage = new MemoryStorage({ name: 'child.vmdk' });
  const child = await createVmdk(childStorage, { size: SIZE });
  await child.close();
  const bytes = childStorage.toBytes();
  const text = new TextDecoder().decode(bytes.subarray(512, 512 * 21)).replace(/\0+$/, '');
  const withParent = text.replace('parentCID=ffffffff', `parentCID=${cid.toString(16).padStart(8, '0')}`).replace('createType="monolithicSparse"\n', 'createType="monolithicSparse"\nparentFileNameHint="base.vmdk"\n');
  bytes.fill(0, 512, 512 * 21);
  bytes.set(new TextEncoder().encode(withParent), 512);
  files.set('child.vmdk', bytes);
  return { files, parentBytes };
}

describe('monolithicSparse read-write against a flat model', () => {
  it('random writes, zeros and discards read back as the model, before and after reopening, and check clean', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), async (ops) => {
        const storage = new MemoryStorage({ name: 'p.vmdk' });
        const disk = await createVmdk(storage, { size: SIZE, zeroedGrain: ops.length % 2 === 0 });
        const model = new Uint8Array(SIZE);
        await apply(disk, model, ops);
        expect(same(await disk.read(0, SIZE), model)).toBe(true);
        await disk.close();
        const bytes = storage.toBytes();
        const again = await openVmdk(MemoryStorage.from(bytes, { name: 'p.vmdk', readOnly: true }));
        expect(same(await again.read(0, SIZE), model)).toBe(true);
        await again.close();
        const check = await checkVmdk(MemoryStorage.from(bytes, { name: 'p.vmdk', readOnly: true }));
        expect(check.messages).toEqual([]);
      }),
      { numRuns: 40 },
    );
  });

  it('over a parent: partly written grains copy the parent, unwritten ones fall through', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 20 }), async (ops) => {
        const { files, parentBytes } = await chain();
        const child = files.get('child.vmdk') as Uint8Array;
        const storage = MemoryStorage.from(child, { name: 'child.vmdk' });
        const resolver = memoryResolver(files);
        const disk = await openVmdk(storage, { readOnly: false, resolver });
        const model = parentBytes.slice();
        await apply(disk, model, ops);
        expect(same(await disk.read(0, SIZE), model)).toBe(true);
        await disk.close();
        const again = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'child.vmdk', readOnly: true }), { resolver });
        expect(same(await again.read(0, SIZE), model)).toBe(true);
        await again.close();
      }),
      { numRuns: 20 },
    );
  });

  it('the first write gives the image a new CID; reads and a read-only open do not', async () => {
    const storage = new MemoryStorage({ name: 'c.vmdk' });
    const disk = await createVmdk(storage, { size: SIZE });
    await disk.close();
    const before = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'c.vmdk' }), { readOnly: false });
    const cid = before.cid;
    await before.read(0, 4096);
    expect(before.cid).toBe(cid);
    await before.write(0, new Uint8Array(512).fill(1));
    expect(before.cid).not.toBe(cid);
    await before.close();
  });

  it('a parent whose CID changed (a commit into it): the child opens and its own grains read and write; what needs the parent is ERR_IMG_MISMATCH unless allowCidMismatch (qemu-img 7.2 alike)', async () => {
    const { files, parentBytes } = await chain();
    const original = (files.get('base.vmdk') as Uint8Array).slice();
    const base = files.get('base.vmdk') as Uint8Array;
    const text = new TextDecoder().decode(base.subarray(512, 1024));
    base.set(new TextEncoder().encode(text.replace(/CID=[0-9a-f]{8}/, 'CID=0badc0de')), 512);
    // The child holds grain 0, written while the parent's CID still matched.
    files.set('base.vmdk', original);
    const storage = MemoryStorage.from((files.get('child.vmdk') as Uint8Array).slice(), { name: 'child.vmdk' });
    const fresh = await openVmdk(storage, { readOnly: false, resolver: memoryResolver(files) });
    expect(fresh.parentCidMismatch).toBe(false);
    await fresh.write(0, new Uint8Array(GRAIN).fill(7));
    await fresh.close();
    files.set('base.vmdk', base);
    const stale = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'child.vmdk' }), { readOnly: false, resolver: memoryResolver(files) });
    expect(stale.parentCidMismatch).toBe(true);
    expect((await stale.read(0, GRAIN)).every((b) => b === 7)).toBe(true);
    await stale.write(100, new Uint8Array(512).fill(8)); // in grain 0: the child's own
    await expect(stale.read(GRAIN, 512)).rejects.toMatchObject({ code: 'ERR_IMG_MISMATCH', message: expect.stringMatching(/the parent "base\.vmdk", which the bytes at 0x10000 would be read from, has CID 0badc0de, but this image's parentCID is [0-9a-f]{8}/) });
    await expect(stale.write(1 << 20, new Uint8Array(512).fill(9))).rejects.toMatchObject({ code: 'ERR_IMG_MISMATCH' }); // part of a new grain: copied from the parent
    await expect(stale.write(4 * GRAIN, new Uint8Array(4 * GRAIN).fill(9))).rejects.toMatchObject({ code: 'ERR_IMG_MISMATCH', message: expect.stringMatching(/which a new grain of this image would be stacked on/) });
    await stale.close();
    const allowed = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'child.vmdk' }), { readOnly: false, resolver: memoryResolver(files), allowCidMismatch: true });
    expect(same(await allowed.read(GRAIN, SIZE - GRAIN), parentBytes.subarray(GRAIN))).toBe(true);
    await allowed.write(1 << 20, new Uint8Array(512).fill(9));
    expect((await allowed.read(1 << 20, 512))[0]).toBe(9);
    await allowed.close();
  });

  it("a write over a stale parent that starts in a partial grain and runs on over whole new grains rejects once, leaving no rejection unhandled (hostile campaign seed 1024 case 291: the partial grain's copy-on-write read failed while the write looked at the next grains, and the process died)", async () => {
    const { files } = await chain();
    const storage = MemoryStorage.from((files.get('child.vmdk') as Uint8Array).slice(), { name: 'child.vmdk' });
    const base = files.get('base.vmdk') as Uint8Array;
    const text = new TextDecoder().decode(base.subarray(512, 1024));
    base.set(new TextEncoder().encode(text.replace(/CID=[0-9a-f]{8}/, 'CID=0badc0de')), 512);
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const stale = await openVmdk(storage, { readOnly: false, resolver: memoryResolver(files) });
      expect(stale.parentCidMismatch).toBe(true);
      await expect(stale.write(8 * GRAIN + 100, new Uint8Array(4 * GRAIN).fill(9))).rejects.toMatchObject({ code: 'ERR_IMG_MISMATCH' });
      await stale.close();
      await new Promise((resolve) => setTimeout(resolve, 20));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
  });

  it('a parent chain that loops or runs too deep is ERR_IMG_CHAIN, as for qcow2 and VHD', async () => {
    const { files } = await chain();
    // "base.vmdk" now holds the child, which names base.vmdk as its parent again.
    files.set('base.vmdk', (files.get('child.vmdk') as Uint8Array).slice());
    const child = () => MemoryStorage.from(files.get('child.vmdk') as Uint8Array, { name: 'child.vmdk', readOnly: true });
    await expect(openVmdk(child(), { resolver: memoryResolver(files), allowCidMismatch: true })).rejects.toMatchObject({ code: 'ERR_IMG_CHAIN', message: expect.stringMatching(/is already in the chain: a cycle/) });
    await expect(openVmdk(child(), { resolver: memoryResolver(files), allowCidMismatch: true, maxChainDepth: 1 })).rejects.toMatchObject({ code: 'ERR_IMG_CHAIN', message: expect.stringMatching(/longer than 1 images/) });
  });
});

const dir = tempDir('vmdk-rw-');
afterAll(() => dir.cleanup());

describeQemu('monolithicSparse written through the Disk API, judged by qemu-img', () => {
  it('random workloads: qemu-img check clean and compare equal to the model', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 30 }), fc.boolean(), async (ops, zeroedGrain) => {
        const storage = new MemoryStorage({ name: 'q.vmdk' });
        const disk = await createVmdk(storage, { size: SIZE, zeroedGrain });
        const model = new Uint8Array(SIZE);
        await apply(disk, model, ops);
        await disk.close();
        const path = join(dir.path, 'q.vmdk');
        const raw = join(dir.path, 'q.raw');
        writeFileSync(path, storage.toBytes());
        writeFileSync(raw, model);
        const check = qemuCheck(path, 'vmdk');
        expect(check.status, check.stderr).toBe(0);
        expect(qemuCompare(raw, path, 'raw', 'vmdk')).toBe(true);
      }),
      { numRuns: 8 },
    );
  });
});
