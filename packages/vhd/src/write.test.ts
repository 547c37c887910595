import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, assertExtentCover, diskExtents, type Extent } from '@img/block';
import { FileStorage } from '@img/block/node';
import { VHD_OP_KINDS, applyVhdOp as apply, clampVhdOp, describeQemu, normalizeExtents, normalizeQemuMap, qemuCompare, qemuImg, qemuInfo, qemuIo, qemuMap, seededBytes, tempDir, testImagesDir, type VhdOp } from '@img/testkit';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { createVhd, type VhdCreateOptions } from './create.js';
import { vhdDriver } from './driver.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';
import { readVhdLayout } from './read-layout.js';

/** Steps inside a disk of `size` bytes, each at most 70,000 bytes long. */
function opArb(size: number): fc.Arbitrary<VhdOp> {
  return fc.record({ kind: fc.constantFrom(...VHD_OP_KINDS), offset: fc.nat(size - 1), length: fc.integer({ min: 1, max: 70_000 }), seed: fc.nat() }).map((o) => clampVhdOp(o, size));
}

async function expectContent(disk: VhdDisk, model: Uint8Array): Promise<void> {
  const got = await disk.read(0, disk.size);
  expect(Buffer.from(got).equals(Buffer.from(model))).toBe(true);
  const extents = await diskExtents(disk);
  assertExtentCover(extents, 0, disk.size);
  // Extents are metadata only, but must never call data "zero".
  for (const e of extents) if (e.kind !== 'data') expect(model.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).toBe(true);
}

describe('create and write (memory), checked against a flat model', () => {
  for (const [label, options] of [
    ['dynamic, 2 MiB blocks, size not CHS-exact', { type: 'dynamic', size: 3_000_000 }],
    ['dynamic, 4 KiB blocks', { type: 'dynamic', size: 700_000, blockSize: 4096 }],
    ['dynamic, 512-byte blocks', { type: 'dynamic', size: 200_000, blockSize: 512 }],
    ['fixed', { type: 'fixed', size: 1_000_000 }],
  ] as Array<[string, VhdCreateOptions]>) {
    it(`${label}: random writes, zeroes and discards; reopened image reads the same`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb(Math.ceil(options.size! / 512) * 512), { minLength: 1, maxLength: 12 }), async (ops) => {
          const storage = new MemoryStorage({ name: 'm.vhd' });
          const disk = await createVhd(storage, options);
          expect(disk.size).toBe(Math.ceil(options.size! / 512) * 512);
          const model = new Uint8Array(disk.size);
          for (const op of ops) await apply(disk, model, op);
          await expectContent(disk, model);
          const again = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'm.vhd' }));
          expect(again.problems).toEqual([]);
          await expectContent(again, model);
        }),
        { seed: 1234, numRuns: 25 },
      );
    });
  }

  it('concurrent writes into the same blocks are all kept', async () => {
    const storage = new MemoryStorage({ name: 'c.vhd' });
    const disk = await createVhd(storage, { size: 8 * 1024 * 1024, blockSize: 64 * 1024 });
    const model = new Uint8Array(disk.size);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const offset = (i * 37_123) % (disk.size - 5000);
      const slot = Math.floor(offset / 5000) * 5000;
      const data = seededBytes(4999, i + 1);
      if (model.subarray(slot, slot + 4999).some((b) => b !== 0)) continue;
      model.set(data, slot);
      writes.push(disk.write(slot, data));
    }
    await Promise.all(writes);
    await expectContent(disk, model);
    await expectContent(await openVhd(MemoryStorage.from(storage.toBytes())), model);
  });

  it('vhdDriver.create takes typed keys with string values, or the -o names; createVhd the typed keys only', async () => {
    const fixed = await vhdDriver.create(new MemoryStorage(), { size: 1_000_000, type: 'fixed' });
    expect((await fixed.info!()).formatSpecific!.type).toBe('fixed');
    const spelt = (await vhdDriver.create(new MemoryStorage(), { size: 1_000_000, subformat: 'dynamic', block_size: '64k', force_size: 'on' })) as VhdDisk;
    expect(spelt.footer.creatorApp).toBe('qem2');
    expect((await spelt.info()).clusterSize).toBe(65536);
    await expect(vhdDriver.create(new MemoryStorage(), { size: 1_000_000, blockSize: '64k', block_size: '64k' })).rejects.toThrow(/"blockSize" is given twice/);
    await expect(vhdDriver.create(new MemoryStorage(), { size: 1_000_000, blok_size: '64k' })).rejects.toThrow(/did you mean blockSize\?/);
    await expect(vhdDriver.create(new MemoryStorage(), { size: 1_000_000, zzz: 1 })).rejects.toThrow(/known options: size, type \(subformat\), blockSize \(block_size\)/);
    await expect(createVhd(new MemoryStorage(), { size: 1_000_000, subformat: 'fixed' } as never)).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      message: expect.stringContaining('"subformat" (did you mean type?)'),
    });
    const dyn = (await vhdDriver.create(new MemoryStorage(), { size: 1_000_000, blockSize: '64k', forceSize: 'on' })) as VhdDisk;
    expect(dyn.footer.creatorApp).toBe('qem2');
    expect(dyn.footer.geometry).toEqual({ cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
    expect((await dyn.info()).clusterSize).toBe(65536);
    const rounded = await vhdDriver.create(new MemoryStorage(), { size: 1_000_000, forceSize: 'off' });
    expect(rounded.size).toBe(1_009_664); // the next CHS-exact size, as qemu-img create gives
    await expect(vhdDriver.create(new MemoryStorage(), { size: 1e6, blockSize: '3k' })).rejects.toThrow(/power of two/);
    await expect(vhdDriver.create(new MemoryStorage(), { size: 2041 * 2 ** 30 })).rejects.toThrow(/2040 GiB/);
  });

  it('probes conectix at offset 0 and in the last 512 or 511 bytes', () => {
    const footer = new TextEncoder().encode('conectix');
    const head = new Uint8Array(4096);
    expect(vhdDriver.probe(head, 1 << 20)).toBe(0);
    head.set(footer);
    expect(vhdDriver.probe(head, 1 << 20)).toBe(100);
    const tail = new Uint8Array(512);
    tail.set(footer);
    expect(vhdDriver.probe(new Uint8Array(4096), 1 << 20, tail)).toBe(100);
    const tail511 = new Uint8Array(512);
    tail511.set(footer, 1);
    expect(vhdDriver.probe(new Uint8Array(4096), 1 << 20, tail511)).toBe(100);
  });
});

describeQemu('qemu-img reads what we write, we write what qemu made', () => {
  const tmp = tempDir('vhd-write-');
  afterAll(() => tmp.cleanup());

  async function fill(disk: VhdDisk, raw: string): Promise<Uint8Array> {
    const model = new Uint8Array(disk.size);
    const pieces: Array<[number, number, number]> = [
      [0, 1000, 1],
      [disk.size - 3000, 3000, 2],
      [Math.floor(disk.size / 3), 70_000, 3],
      [2 * 1024 * 1024 - 100, 300, 4],
    ];
    for (const [offset, length, seed] of pieces) {
      if (offset + length > disk.size) continue;
      const data = seededBytes(length, seed);
      await disk.write(offset, data);
      model.set(data, offset);
    }
    writeFileSync(raw, model);
    return model;
  }

  for (const [label, options] of [
    ['dynamic 5000000 bytes (not CHS-exact)', { type: 'dynamic', size: 5_000_000 }],
    ['dynamic 64 KiB blocks', { type: 'dynamic', size: 3_333_120, blockSize: 65536 }],
    ['fixed 5000192 bytes (not CHS-exact)', { type: 'fixed', size: 5_000_192 }],
    ['dynamic force_size', { type: 'dynamic', size: 4_000_256, forceSize: true }],
  ] as Array<[string, VhdCreateOptions]>) {
    it(`${label}: qemu-img info shows our size, compare is identical, map equals our extents`, async () => {
      const path = join(tmp.path, `${label.replace(/\W+/g, '-')}.vhd`);
      const raw = `${path}.raw`;
      const disk = await createVhd(await FileStorage.create(path), options);
      await fill(disk, raw);
      const ours = normalizeExtents(await diskExtents(disk));
      const size = disk.size;
      await disk.close();
      expect(qemuInfo(path, 'vpc')['virtual-size']).toBe(size);
      expect(size).toBe(Math.ceil(options.size! / 512) * 512);
      expect(qemuCompare(path, raw, 'vpc', 'raw')).toBe(true);
      if (options.type !== 'fixed') expect(ours).toEqual(normalizeQemuMap(qemuMap(path, 'vpc')));
    });
  }

  for (const [label, qemuOpts] of [
    ['dynamic default', ''],
    ['dynamic force_size', 'force_size=on'],
    ['fixed default', 'subformat=fixed'],
    ['fixed force_size', 'subformat=fixed,force_size=on'],
  ] as Array<[string, string]>) {
    it(`qemu-made ${label}: we read qemu's data at qemu's size and our writes read back in qemu`, async () => {
      const path = join(tmp.path, `q-${label.replace(/\W+/g, '-')}.vhd`);
      const raw = `${path}.raw`;
      qemuImg(['create', '-q', '-f', 'vpc', ...(qemuOpts ? ['-o', qemuOpts] : []), path, '4000000']);
      qemuIo(path, 'vpc', ['write -P 0x5a 1024 8192']);
      const qemuSize = qemuInfo(path, 'vpc')['virtual-size']; // asked before img holds the image (qemu-img info would be refused)
      const disk = await openVhd(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
      expect(disk.size).toBe(qemuSize);
      expect((await disk.read(1024, 8192)).every((b) => b === 0x5a)).toBe(true);
      const model = await fill(disk, raw);
      model.fill(0x5a, 1024, 1024 + 8192);
      for (const [offset, length, seed] of [[0, 1000, 1]] as const) model.set(seededBytes(length, seed), offset);
      writeFileSync(raw, model);
      await disk.close();
      expect(qemuCompare(path, raw, 'vpc', 'raw')).toBe(true);
    });
  }
});

describe('extents options and copying', () => {
  it('hostOffsets: data extents name the file and the offset that holds the bytes', async () => {
    const storage = new MemoryStorage({ name: 'h.vhd' });
    const disk = await createVhd(storage, { size: 1 << 20, blockSize: 65536 });
    await disk.write(70_000, seededBytes(100_000, 3));
    const extents = await diskExtents(disk, { hostOffsets: true });
    assertExtentCover(extents, 0, disk.size);
    const data = extents.filter((e) => e.kind === 'data');
    expect(data.length).toBeGreaterThan(1); // split at each block's bitmap
    for (const e of data) {
      expect(e.file).toBe('h.vhd');
      expect(Buffer.from(await storage.read(e.hostOffset!, e.length)).equals(Buffer.from(await disk.read(e.offset, e.length)))).toBe(true);
    }
    const loc = await disk.sectorLocation(70_000 + 5);
    expect(loc).toMatchObject({ depth: 0, kind: 'data', file: 'h.vhd', block: 1 });
    expect((await storage.read(loc.hostOffset!, 1))[0]).toBe((await disk.read(70_005, 1))[0]);
    expect(await disk.sectorLocation(900_000)).toMatchObject({ kind: 'zero', depth: 0 });
  });

  it('sparseCopy from a qemu fixture to raw and back into a new VHD keeps the content', async () => {
    const { sparseCopy, openRaw } = await import('@img/block');
    const file = await FileStorage.open(join(testImagesDir, 'vhd/dynamic-default.vhd'));
    const src = await openVhd(file);
    const rawStorage = new MemoryStorage();
    await rawStorage.truncate(src.size);
    const raw = await openRaw(rawStorage, { readOnly: false });
    const r = await sparseCopy(src, raw);
    // One allocated block, nothing else read; of it only what the file holds where the checkout left holes in it.
    const blocks: Extent[] = [];
    for await (const e of src.extents({ hostOffsets: true })) if (e.kind === 'data') blocks.push(e);
    expect(blocks.map((e) => e.length)).toEqual([2 * 1024 * 1024]);
    let held = 0;
    for (const range of (await file.ranges?.(blocks[0]!.hostOffset!, blocks[0]!.length)) ?? [{ offset: 0, length: blocks[0]!.length, data: true }]) {
      if (range.data) held += range.length;
    }
    // What the copy reads is what the refined map calls data: inside the block, within what the file holds.
    let mapped = 0;
    for await (const e of src.extents({ fileHoles: true })) if (e.kind === 'data') mapped += e.length;
    expect(r.bytesRead).toBe(mapped);
    expect(mapped).toBeGreaterThan(0);
    expect(mapped).toBeLessThanOrEqual(held);
    const dst = await createVhd(new MemoryStorage(), { size: src.size });
    await sparseCopy(src, dst);
    expect(Buffer.from(await dst.read(0, dst.size)).equals(Buffer.from(rawStorage.toBytes()))).toBe(true);
    await src.close();
  });
});

describe('extents read metadata only', () => {
  it('a chain map reads sector bitmaps and nothing else', async () => {
    class CountingStorage extends MemoryStorage {
      reads: Array<[number, number]> = [];
      override async readInto(p: number, t: Uint8Array): Promise<number> {
        this.reads.push([p, t.length]);
        return super.readInto(p, t);
      }
    }
    const baseStorage = new CountingStorage({ name: 'b' });
    const base = await createVhd(baseStorage, { size: 4 << 20, blockSize: 65536 });
    await base.write(0, seededBytes(300_000, 1));
    const topStorage = new CountingStorage({ name: 't' });
    const top = await createVhd(topStorage, { parent: { disk: base, relativePath: 'b' }, blockSize: 65536 });
    await top.write(100_000, seededBytes(10_000, 2));
    await top.write(3_000_000, seededBytes(1000, 3));
    // A fresh open of the same storages: no bitmap cached. Their layouts are read before counting starts.
    const layouts = [await readVhdLayout(baseStorage), await readVhdLayout(topStorage)];
    const fresh = await openVhd(topStorage, { resolver: async () => baseStorage });
    baseStorage.reads = [];
    topStorage.reads = [];
    const extents = await diskExtents(fresh);
    assertExtentCover(extents, 0, top.size);
    expect(extents.some((e) => e.depth === 1 && e.kind === 'data')).toBe(true);
    for (const [layout, storage] of [
      [layouts[0]!, baseStorage],
      [layouts[1]!, topStorage],
    ] as const) {
      const bitmaps = new Set([...layout.bat].filter((e) => e !== 0xffffffff).map((e) => e * 512));
      expect(storage.reads.length).toBeGreaterThan(0);
      for (const [at, length] of storage.reads) expect([bitmaps.has(at), length]).toEqual([true, layout.bitmapBytes]);
    }
  });
});
