import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual, collectExtents, type Disk, type FreshImageWriter } from '@img/block';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuInfo, qemuMap, seededBytes, tempDir } from '@img/testkit';
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

  it('clusters given back are handed out again lowest first, and finish moves the last clusters into the gaps in guest order (no reversed runs)', async () => {
    const storage = new MemoryStorage();
    const w = await fresh(storage, {});
    const cs = 65536;
    // Two batches placed before the first is settled, as the copy loop has them in flight: zeros, then data.
    const zeros = w.placeRuns!(1 * MiB, 1 * MiB);
    const data = w.placeRuns!(4 * MiB, 1 * MiB);
    const model = new Uint8Array(w.size);
    const d = seededBytes(MiB, 9);
    model.set(d, 4 * MiB);
    await storage.write(data[1]!, d);
    await w.settleRuns!(Float64Array.of(0, zeros[1]!, zeros[2]!));
    // A later placement takes the given-back clusters in ascending order: one piece.
    const again = w.placeRuns!(0, 4 * cs);
    expect(again).toEqual([0, zeros[1]!, 4 * cs]);
    const e = seededBytes(4 * cs, 10);
    model.set(e, 0);
    await storage.write(again[1]!, e);
    const disk = await w.finish();
    expect(bytesEqual(await disk.read(0, disk.size), model)).toBe(true);
    // The 12 clusters moved into the 12 gaps keep guest order: 4 MiB..5 MiB is two ascending pieces (the
    // four clusters that stayed, then the twelve moved), where moving last-into-first made thirteen.
    const extents = (await collectExtents(disk.extents({ hostOffsets: true }))).filter((x) => x.kind === 'data');
    const moved = extents.filter((x) => x.offset >= 4 * MiB && x.offset < 5 * MiB);
    expect(moved.map((x) => x.length)).toEqual([4 * cs, 12 * cs]);
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });

  it('a cluster a run covers only in part and nothing was written into is given back at finish (a raw file whose first 4 KiB are written zeros)', async () => {
    const storage = new MemoryStorage();
    const w = await fresh(storage, {});
    const head = w.placeRuns!(0, 4096);
    const data = w.placeRuns!(4 * MiB, MiB);
    const d = seededBytes(MiB, 11);
    await storage.write(data[1]!, d);
    await w.settleRuns!(Float64Array.of(0, head[1]!, 4096));
    const disk = await w.finish();
    const extents = (await collectExtents(disk.extents())).filter((x) => x.kind === 'data');
    expect(extents.map((x) => [x.offset, x.length])).toEqual([[4 * MiB, MiB]]);
    expect(bytesEqual(await disk.read(4 * MiB, MiB), d)).toBe(true);
    await disk.close();
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
    for (const o of [{ preallocation: 'metadata' }, { preallocation: 'full' }, { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, { dataFile: 'data.raw' }] as const) {
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

  const sizes: Array<[number, Record<string, unknown>, string]> = [
    [64 * MiB, {}, ''],
    [2 ** 40, {}, ''],
    [2 ** 40, { clusterSize: '4k' }, 'cluster_size=4k'],
    [4 * 2 ** 40, { clusterSize: '2M' }, 'cluster_size=2M'],
    [64 * MiB, { clusterSize: 512 }, 'cluster_size=512'],
    [64 * MiB, { compat: 'v2' }, 'compat=0.10'],
    [2 ** 30, { extendedL2: true, clusterSize: '32k' }, 'extended_l2=on,cluster_size=32k'],
    [2 ** 30, { refcountBits: 1, lazyRefcounts: true }, 'refcount_bits=1,lazy_refcounts=on'],
  ];
  for (const [size, options, qemuOptions] of sizes) {
    it(`while data arrives the file is qemu-img create's empty image (header fields and tables byte for byte): ${size} ${JSON.stringify(options)}`, async () => {
      const storage = new MemoryStorage();
      const w = await createQcow2Fresh(storage, { size, ...options });
      if (!w) throw new Error('no bulk writer');
      const ours = storage.toBytes();
      const theirsFile = join(dir, 'created.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', ...(qemuOptions ? ['-o', qemuOptions] : []), theirsFile, String(size)]);
      const theirs = readFileSync(theirsFile);
      const view = new DataView(ours.buffer, ours.byteOffset);
      const cs = 2 ** view.getUint32(20); // cluster_bits
      const headerLength = options.compat === 'v2' ? 72 : view.getUint32(100);
      // The header fields; the extensions after them are a courtesy qemu writes for some cluster sizes only.
      expect(bytesEqual(ours.subarray(0, headerLength), theirs.subarray(0, headerLength))).toBe(true);
      // Refcount table, refcount block, L1 table: the same bytes (qemu leaves the L1 cluster's tail unwritten).
      const padded = new Uint8Array(ours.length);
      padded.set(theirs.subarray(0, ours.length));
      expect(theirs.length).toBeLessThanOrEqual(ours.length);
      expect(bytesEqual(ours.subarray(cs), padded.subarray(cs))).toBe(true);
      // Mid-conversion: qemu takes the file for an empty qcow2 image of that size that checks clean.
      const d = seededBytes(3 * cs, 1);
      await w.write(size - 2 * cs, d.subarray(0, 2 * cs));
      await w.write(0, d.subarray(0, cs));
      const during = join(dir, 'during.qcow2');
      writeFileSync(during, storage.toBytes());
      const info = qemuInfo(during);
      expect({ format: info['format'], size: info['virtual-size'] }).toEqual({ format: 'qcow2', size });
      expect(qemuCheck(during, 'qcow2').status).toBe(0);
      expect(qemuMap(during, 'qcow2').filter((m) => m.data)).toEqual([]);
      const disk = await w.finish();
      await disk.close();
      writeFileSync(during, storage.toBytes());
      expect(qemuCheck(during, 'qcow2').status).toBe(0);
      expect(
        qemuMap(during, 'qcow2')
          .filter((m) => m.data)
          .reduce((n, m) => n + m.length, 0),
      ).toBe(3 * cs);
    });
  }

  it('1 TiB virtual, 4k clusters, refcount_bits 64: data in 4096 places far apart needs many refcount blocks appended; check clean, map and content agree', async () => {
    const storage = new MemoryStorage();
    const size = 2 ** 40;
    const cs = 4096;
    const w = await createQcow2Fresh(storage, { size, clusterSize: cs, refcountBits: 64 });
    if (!w) throw new Error('no bulk writer');
    const spacing = size / 4096;
    const written: number[] = [];
    for (let k = 0; k < 4096; k++) {
      const at = k * spacing + ((k * 7) % 512) * cs;
      written.push(at);
      await w.write(at, seededBytes(cs, k + 1));
    }
    const disk = await w.finish();
    for (const k of [0, 1, 2047, 4095]) expect(bytesEqual(await disk.read(written[k]!, cs), seededBytes(cs, k + 1))).toBe(true);
    await disk.close();
    const bytes = storage.toBytes();
    // 1 header + 1 refcount table + 3 refcount blocks + 1024 L1 clusters = 1029; 4096 data + 4096 L2 tables; 9237 clusters
    // need 19 blocks of 512 refcounts, so 16 are appended (the table stays in place: its 512 entries cover 256k clusters).
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    expect(Number(view.getBigUint64(48))).toBe(cs);
    expect(bytes.length / cs).toBe(1029 + 8192 + 16);
    const file = join(dir, 'tib.qcow2');
    writeFileSync(file, bytes);
    const check = qemuCheck(file, 'qcow2');
    expect(check.status, check.stderr).toBe(0);
    const map = qemuMap(file, 'qcow2').filter((m) => m.data);
    expect(map.map((m) => m.start)).toEqual(written);
    expect(map.every((m) => m.length === cs)).toBe(true);
  });
});
