import { afterAll, describe, expect, it } from 'vitest';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { goldenSuite, tempDir } from '@img/testkit';
import { diskExtents, validateExtentCover } from './extents.js';
import type { Extent } from './disk.js';
import { MemoryStorage } from './memory-storage.js';
import { FileStorage } from './node/file-storage.js';
import { createRaw, openRaw, rawDriver } from './raw.js';

goldenSuite({
  format: 'raw',
  open: async (path) => openRaw(await FileStorage.open(path)),
  // Without SEEK_HOLE a raw file's holes are reported as data; qemu sees them as zero.
  allowDataForZero: true,
});

describe('raw format', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('rounds an odd file size up to a sector and reads the padding as zeros', async () => {
    const storage = MemoryStorage.from(new Uint8Array(1000003).fill(9));
    const disk = await openRaw(storage);
    expect(disk.size).toBe(1000448);
    const tail = await disk.read(1000000, 448);
    expect([...tail.subarray(0, 3)]).toEqual([9, 9, 9]);
    expect(tail.subarray(3).every((b) => b === 0)).toBe(true);
    const extents = await diskExtents(disk);
    expect(extents.at(-1)).toEqual({ offset: 1000003, length: 445, kind: 'zero', depth: 0 });
  });

  it('creates a sparse image, writes, zeroes and reports holes from the storage', async () => {
    const storage = new MemoryStorage();
    const disk = await createRaw(storage, { size: 4 * 1024 * 1024 });
    await disk.write(65536 * 3, new Uint8Array(100).fill(5));
    const ext = await diskExtents(disk);
    expect(ext).toEqual([
      { offset: 0, length: 196608, kind: 'zero', depth: 0 },
      { offset: 196608, length: 65536, kind: 'data', depth: 0 },
      { offset: 262144, length: 4194304 - 262144, kind: 'zero', depth: 0 },
    ]);
    await disk.writeZeroes(65536 * 3, 100);
    expect((await disk.read(65536 * 3, 100)).every((b) => b === 0)).toBe(true);
    await expect(disk.write(4 * 1024 * 1024 - 1, new Uint8Array(2))).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
  });

  it('refuses writes to a read-only disk', async () => {
    const disk = await openRaw(MemoryStorage.from(new Uint8Array(512)));
    await expect(disk.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
  });

  it('resizes: grows freely, shrinks only when asked', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: 1024 });
    await disk.resize(4096);
    expect(disk.size).toBe(4096);
    await expect(disk.resize(512)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await disk.resize(512, { shrink: true });
    expect(disk.size).toBe(512);
  });

  it('resize --preallocation: full and falloc give the added bytes their place in the file, metadata is refused, shrinking takes off only', async () => {
    const storage = new MemoryStorage();
    const disk = await createRaw(storage, { size: 1024 });
    await disk.resize(64 * 1024, { preallocation: 'full' });
    expect(await storage.ranges(0, 64 * 1024)).toEqual([{ offset: 0, length: 64 * 1024, data: true }]);
    await disk.resize(128 * 1024, { preallocation: 'falloc' });
    expect(await storage.ranges(64 * 1024, 64 * 1024)).toEqual([{ offset: 64 * 1024, length: 64 * 1024, data: true }]);
    await disk.resize(192 * 1024);
    expect((await storage.ranges(128 * 1024, 64 * 1024)).some((r) => !r.data)).toBe(true);
    await expect(disk.resize(256 * 1024, { preallocation: 'metadata' })).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
    await expect(disk.resize(512, { shrink: true, preallocation: 'full' })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    expect(disk.size).toBe(192 * 1024);
  });

  it('creates files through the driver with full preallocation', async () => {
    const path = join(tmp.path, 'full.img');
    const disk = await rawDriver.create(await FileStorage.create(path), { size: 3000, preallocation: 'full' });
    expect(disk.size).toBe(3072);
    expect((await disk.read(0, 3072)).every((b) => b === 0)).toBe(true);
    await disk.close();
    await expect(rawDriver.create(new MemoryStorage(), { size: 1, preallocation: 'bogus' })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
  });

  it('create with falloc reserves every byte as qemu-img create -o preallocation=falloc does (it allocated nothing)', async () => {
    const path = join(tmp.path, 'falloc.img');
    const disk = await rawDriver.create(await FileStorage.create(path), { size: 4 << 20, preallocation: 'falloc' });
    await disk.close();
    // The oracle's number: qemu-img reserves the whole size (du 4096 KiB here).
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(4 << 20);
    const storage = new MemoryStorage();
    await createRaw(storage, { size: 64 * 1024, preallocation: 'falloc' });
    expect(await storage.ranges(0, 64 * 1024)).toEqual([{ offset: 0, length: 64 * 1024, data: true }]);
  });

  it('hands a sparse file\u2019s extents over a window of ranges at a time, runs across the windows\u2019 edges whole', async () => {
    const MiB = 1024 * 1024;
    const path = join(tmp.path, 'windows.img');
    const storage = await FileStorage.create(path);
    await storage.truncate(256 * MiB);
    // Across the first window's end (64 MiB) and the second's (64 + 128 MiB).
    await storage.write(64 * MiB - 512 * 1024, new Uint8Array(MiB).fill(1));
    await storage.write(192 * MiB - 4096, new Uint8Array(8192).fill(2));
    const disk = await openRaw(storage);
    try {
      const arrays: Extent[][] = [];
      for await (const a of disk.extentBatches({ hostOffsets: true })) arrays.push([...a]);
      expect(arrays.every((a) => a.length > 0)).toBe(true);
      const flat = arrays.flat();
      expect(validateExtentCover(flat, 0, disk.size)).toEqual([]);
      const data = flat.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length, e.hostOffset, e.file]);
      // Without SEEK_DATA the whole file is one data run.
      if (data.length > 1) {
        expect(data).toEqual([
          [64 * MiB - 512 * 1024, MiB, 64 * MiB - 512 * 1024, path],
          [192 * MiB - 4096, 8192, 192 * MiB - 4096, path],
        ]);
      }
      expect(await diskExtents(disk, { hostOffsets: true })).toEqual(flat);
    } finally {
      await disk.close();
    }
  });

  it('walks a file of many runs a bounded number of ranges at a time, and a storage that answers less than asked still gives every extent', async () => {
    const page = 64 * 1024;
    // 300 runs of 64 KiB data and 64 KiB holes (MemoryStorage keeps 64 KiB pages).
    const runs = async () => {
      const m = new MemoryStorage({ name: 'runs' });
      await m.truncate(600 * page);
      for (let i = 0; i < 300; i++) await m.write(2 * i * page, new Uint8Array(page).fill(i & 255));
      return m;
    };
    const expected = await diskExtents(await openRaw(await runs()));
    expect(expected.filter((e) => e.kind === 'data')).toHaveLength(300);
    for (const cut of [1, 2, 3, 7]) {
      // A storage that stops after `cut` ranges, whatever the limit: the walk must ask on from where each answer ends.
      const limits: Array<number | undefined> = [];
      const short = await runs();
      const ranges = short.ranges.bind(short);
      Object.defineProperty(short, 'ranges', { value: (offset: number, length: number, limit?: number) => (limits.push(limit), ranges(offset, length, Math.min(limit ?? Infinity, cut))) });
      const disk = await openRaw(short);
      expect(await diskExtents(disk)).toEqual(expected);
      // Every question carried a limit of a few thousand ranges.
      expect(limits.length).toBeGreaterThanOrEqual(Math.floor(600 / cut));
      expect(limits.every((l) => l !== undefined && l > 0 && l <= 4096)).toBe(true);
    }
  });

  it('probes anything weakly', () => {
    expect(rawDriver.probe(new Uint8Array(10), 10)).toBe(1);
  });
});
