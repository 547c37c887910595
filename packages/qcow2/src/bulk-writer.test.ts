import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual, collectExtents, type Disk, type FreshImageWriter } from '@img/block';
import { describeQemu, qemuCheck, qemuCompare, qemuMap, seededBytes, tempDir } from '@img/testkit';
import { createQcow2Fresh } from './bulk-writer.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';

const MiB = 1024 * 1024;

/** Writes a fixed mix into `disk` and the flat model: unaligned, out of order, overwrites, zeroes over data. */
async function writeMix(disk: Disk, model: Uint8Array): Promise<void> {
  const ops: Array<[number, number, number]> = [
    [3 * MiB, 200_000, 1],
    [1000, 300_000, 2],
    [2 * MiB - 700, 1400, 3],
    [model.length - 512, 512, 4],
    [50_000, 10_000, 5],
  ];
  await Promise.all(
    ops.map(([at, n, seed]) => {
      const d = seededBytes(n, seed);
      model.set(d, at);
      return disk.write(at, d);
    }),
  );
  await disk.writeZeroes(60_000, 5000);
  model.fill(0, 60_000, 65_000);
  // Zeroes where nothing was written leave it unallocated.
  await disk.writeZeroes(5 * MiB, MiB);
}

async function fresh(storage: MemoryStorage, options: Record<string, unknown>): Promise<FreshImageWriter> {
  const w = await createQcow2Fresh(storage, { size: 6 * MiB + 512, ...options });
  if (!w) throw new Error('no bulk writer for these options');
  return w;
}

describe('createQcow2Fresh', () => {
  for (const options of [{}, { clusterSize: '4k' }, { clusterSize: 512, refcountBits: 1 }, { clusterSize: 512, refcountBits: 64 }, { compat: 'v2', clusterSize: '8k' }, { extendedL2: true, clusterSize: '32k' }, { lazyRefcounts: 'on' }]) {
    it(`reads back as written, checks clean, same extents after finish: ${JSON.stringify(options)}`, async () => {
      const storage = new MemoryStorage({ name: 'bulk.qcow2' });
      const w = await fresh(storage, options);
      const model = new Uint8Array(w.size);
      await writeMix(w, model);
      expect(bytesEqual(await w.read(0, w.size), model)).toBe(true);
      const before = await collectExtents(w.extents());
      const disk = await w.finish();
      expect(bytesEqual(await disk.read(0, disk.size), model)).toBe(true);
      const after = (await collectExtents(disk.extents())).map((e) => ({ offset: e.offset, length: e.length, kind: e.kind === 'zero' ? 'hole' : e.kind }));
      expect(after).toEqual(before.map((e) => ({ offset: e.offset, length: e.length, kind: e.kind })));
      await disk.close();
      const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
      expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
    });
  }

  it('lays data out with no gap: the file is header + data clusters + metadata, as small as the general writer', async () => {
    const storage = new MemoryStorage();
    const w = await fresh(storage, {});
    const model = new Uint8Array(w.size);
    await writeMix(w, model);
    await (await w.finish()).close();
    const general = await createQcow2(new MemoryStorage(), { size: 6 * MiB + 512 });
    await writeMix(general, new Uint8Array(general.size));
    await general.flush();
    const generalSize = await general.storage.size();
    await general.close();
    // 64 KiB clusters: 1 header + 1 refcount table + 1 refcount block + 1 L1 + 12 data (guest clusters 0-4, 31-32, 48-51, 96) + 1 L2.
    expect(storage.toBytes().length).toBe(17 * 65536);
    expect(storage.toBytes().length).toBeLessThanOrEqual(generalSize);
  });

  it('placeRuns/settleRuns: clusters a copy left unwritten are given back, and finish closes the gaps', async () => {
    const storage = new MemoryStorage();
    const w = await fresh(storage, {});
    const cs = 65536;
    const model = new Uint8Array(w.size);
    const placed = w.placeRuns!(0, 2 * MiB);
    expect(placed).toEqual([0, 4 * cs, 2 * MiB]); // 32 clusters after the empty image (header, refcount table and block, L1), in one piece
    // The copy writes only the data it found: guest clusters 3 and 20 whole, 100 bytes in cluster 30.
    for (const [at, n, seed] of [
      [3 * cs, cs, 1],
      [20 * cs, cs, 2],
      [30 * cs + 5, 100, 3],
    ] as const) {
      const d = seededBytes(n, seed);
      model.set(d, at);
      await storage.write(placed[1]! + at, d);
    }
    await w.settleRuns!(Float64Array.of(0, placed[1]!, placed[2]!));
    expect((await collectExtents(w.extents())).filter((e) => e.kind === 'data').map((e) => [e.offset / cs, e.length / cs])).toEqual([
      [3, 1],
      [20, 1],
      [30, 1],
    ]);
    // A later write takes a given-back cluster.
    const d = seededBytes(1000, 4);
    model.set(d, 4 * MiB);
    await w.write(4 * MiB, d);
    const disk = await w.finish();
    expect(bytesEqual(await disk.read(0, disk.size), model)).toBe(true);
    await disk.close();
    // 1 header + 1 refcount table + 1 refcount block + 1 L1 + 4 data + 1 L2: no unused cluster left.
    expect(storage.toBytes().length).toBe(9 * cs);
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });

  it('is a valid empty image from the start, whatever was written; abort cuts the data off and leaves that image', async () => {
    const storage = new MemoryStorage();
    await storage.write(0, seededBytes(4096, 9)); // a stale file is emptied first
    const w = await fresh(storage, {});
    const empty = storage.toBytes();
    expect(empty.length).toBe(4 * 65536);
    const looks = async (bytes: Uint8Array) => {
      const disk = await openQcow2(MemoryStorage.from(bytes));
      const extents = await collectExtents(disk.extents());
      await disk.close();
      const check = await checkQcow2(MemoryStorage.from(bytes));
      return { size: disk.size, data: extents.filter((e) => e.kind === 'data').length, c: check.corruptions, l: check.leaks };
    };
    expect(await looks(empty)).toEqual({ size: w.size, data: 0, c: 0, l: 0 });
    await w.write(0, seededBytes(MiB, 1));
    await w.write(4 * MiB, seededBytes(MiB, 2));
    expect(bytesEqual(storage.toBytes().subarray(0, empty.length), empty)).toBe(true);
    expect(await looks(storage.toBytes())).toEqual({ size: w.size, data: 0, c: 0, l: 0 });
    await w.abort();
    expect(bytesEqual(storage.toBytes(), empty)).toBe(true);
    await expect(w.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
    await expect(w.finish()).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });

  it('moves the refcount table when the data outgrows it (512-byte clusters, refcount_bits 64): the old one is freed, the image checks clean', async () => {
    const storage = new MemoryStorage();
    const w = await fresh(storage, { clusterSize: 512, refcountBits: 64 });
    const model = new Uint8Array(w.size);
    // 3 MiB of data: 6144 clusters need about 100 refcount blocks of 64 entries, more than one 512-byte table holds.
    for (let at = 0; at < 3 * MiB; at += 256 * 1024) {
      const d = seededBytes(200 * 1024, at);
      model.set(d, at);
      await w.write(at, d);
    }
    const disk = await w.finish();
    expect(bytesEqual(await disk.read(0, disk.size), model)).toBe(true);
    await disk.close();
    const bytes = storage.toBytes();
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    expect(Number(view.getBigUint64(48))).toBeGreaterThan(512); // refcount_table_offset: no longer cluster 1
    expect(view.getUint32(56)).toBeGreaterThan(1); // refcount_table_clusters
    const check = await checkQcow2(MemoryStorage.from(bytes));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });

  it('refuses writes outside the disk with ERR_IMG_INVALID_ARG', async () => {
    const w = await fresh(new MemoryStorage(), {});
    await expect(w.write(w.size - 256, new Uint8Array(512))).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await w.abort();
  });

  it('declines what needs the general writer, and checks options as createQcow2 does', async () => {
    for (const o of [{ preallocation: 'metadata' }, { preallocation: 'full' }, { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, { dataFile: 'data.raw' }]) {
      expect(await createQcow2Fresh(new MemoryStorage(), { size: MiB, ...o })).toBeUndefined();
    }
    await expect(createQcow2Fresh(new MemoryStorage(), { size: MiB, clusterSize: '3k' })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
  });
});

describeQemu('createQcow2Fresh output judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-bulk-'));
  });
  afterAll(() => cleanup());

  for (const options of [{}, { clusterSize: 512, refcountBits: 1 }, { compat: 'v2', clusterSize: '8k' }, { extendedL2: true, clusterSize: '32k' }]) {
    it(`qemu-img check is clean and compare matches the model; map agrees with our extents: ${JSON.stringify(options)}`, async () => {
      const storage = new MemoryStorage();
      const w = await fresh(storage, options);
      const model = new Uint8Array(w.size);
      await writeMix(w, model);
      const ours = await collectExtents(w.extents());
      await (await w.finish()).close();
      const image = join(dir, `bulk-${Object.values(options).join('-') || 'default'}.qcow2`);
      const raw = `${image}.raw`;
      writeFileSync(image, storage.toBytes());
      writeFileSync(raw, model);
      const check = qemuCheck(image, 'qcow2');
      expect(check.status, check.stderr).toBe(0);
      expect(qemuCompare(image, raw, 'qcow2', 'raw')).toBe(true);
      // Guest ranges that hold data, merged whatever their host offsets.
      const theirs: Array<[number, number]> = [];
      for (const m of qemuMap(image, 'qcow2').filter((x) => x.data)) {
        const last = theirs[theirs.length - 1];
        if (last && last[1] === m.start) last[1] += m.length;
        else theirs.push([m.start, m.start + m.length]);
      }
      expect(theirs).toEqual(ours.filter((e) => e.kind === 'data').map((e) => [e.offset, e.offset + e.length]));
    });
  }
});
