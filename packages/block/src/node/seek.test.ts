import { afterAll, describe, expect, it } from 'vitest';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '@img/testkit';
import { FileStorage } from './file-storage.js';
import { seekAddon } from './seek.js';
import { nativeStatus } from './native-loader.js';
import { openRaw } from '../raw.js';
import { sparseCopy } from '../sparse-copy.js';
import { createRaw } from '../raw.js';
import { MemoryStorage } from '../memory-storage.js';

const MiB = 1024 * 1024;

describe('SEEK_DATA/SEEK_HOLE helper', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('is loaded when the loader found it, and FileStorage has ranges exactly then', async () => {
    const status = nativeStatus();
    if (!status.loaded) console.warn(`native helper not loaded (${status.reason}): FileStorage.ranges is absent and raw holes are read (fallback)`);
    expect(seekAddon() !== undefined).toBe(status.loaded && status.features.seekData);
    const s = await FileStorage.create(join(tmp.path, 'probe.bin'));
    expect(typeof s.ranges === 'function').toBe(seekAddon() !== undefined);
    await s.close();
  });

  it.skipIf(!seekAddon())('reports data and hole runs of a sparse file as a gap-free cover, and raw extents follow them', async () => {
    const path = join(tmp.path, 'sparse.raw');
    const s = await FileStorage.create(path);
    await s.truncate(64 * MiB);
    await s.write(4 * MiB, new Uint8Array(MiB).fill(1));
    await s.write(40 * MiB, new Uint8Array(2 * MiB).fill(2));
    const ranges = await s.ranges!(0, 64 * MiB);
    expect(ranges).toEqual([
      { offset: 0, length: 4 * MiB, data: false },
      { offset: 4 * MiB, length: MiB, data: true },
      { offset: 5 * MiB, length: 35 * MiB, data: false },
      { offset: 40 * MiB, length: 2 * MiB, data: true },
      { offset: 42 * MiB, length: 22 * MiB, data: false },
    ]);
    // A window that starts and ends inside runs is clipped to the window.
    expect(await s.ranges!(4 * MiB + 4096, 36 * MiB)).toEqual([
      { offset: 4 * MiB + 4096, length: MiB - 4096, data: true },
      { offset: 5 * MiB, length: 35 * MiB, data: false },
      { offset: 40 * MiB, length: 4096, data: true },
    ]);
    await s.close();

    const disk = await openRaw(await FileStorage.open(path));
    const extents = [];
    for await (const e of disk.extents()) extents.push([e.offset / MiB, e.length / MiB, e.kind]);
    expect(extents).toEqual([
      [0, 4, 'zero'],
      [4, 1, 'data'],
      [5, 35, 'zero'],
      [40, 2, 'data'],
      [42, 22, 'zero'],
    ]);
    // A copy reads only the data runs.
    const dst = await createRaw(new MemoryStorage(), { size: disk.size });
    const result = await sparseCopy(disk, dst);
    expect(result.bytesRead).toBe(3 * MiB);
    expect(await dst.read(40 * MiB, 4)).toEqual(new Uint8Array([2, 2, 2, 2]));
    await disk.close();
  });

  it.skipIf(!seekAddon())('raw extents are asked for in doubling windows and joined again where a run crosses one', async () => {
    const path = join(tmp.path, 'windows.raw');
    const s = await FileStorage.create(path);
    await s.truncate(512 * MiB);
    // Windows end at 64, 192 and 448 MiB: one run across the first edge, one across the third, one inside a window.
    await s.write(60 * MiB, new Uint8Array(10 * MiB).fill(3));
    await s.write(100 * MiB, new Uint8Array(MiB).fill(4));
    await s.write(447 * MiB, new Uint8Array(2 * MiB).fill(5));
    const asked: [number, number][] = [];
    const ranges = s.ranges!.bind(s);
    Object.defineProperty(s, 'ranges', { value: (offset: number, length: number) => (asked.push([offset / MiB, length / MiB]), ranges(offset, length)) });
    const disk = await openRaw(s);
    const extents = [];
    for await (const e of disk.extents({ hostOffsets: true })) extents.push([e.offset / MiB, e.length / MiB, e.kind, (e.hostOffset ?? -1) / MiB]);
    expect(asked).toEqual([
      [0, 64],
      [64, 128],
      [192, 256],
      [448, 64],
    ]);
    expect(extents).toEqual([
      [0, 60, 'zero', 0],
      [60, 10, 'data', 60],
      [70, 30, 'zero', 70],
      [100, 1, 'data', 100],
      [101, 346, 'zero', 101],
      [447, 2, 'data', 447],
      [449, 63, 'zero', 449],
    ]);
    await disk.close();
  });

  it.skipIf(!seekAddon())('ranges with a limit stop after about that many and cover up to the end of their last data run', async () => {
    const s = await FileStorage.create(join(tmp.path, 'limit.raw'));
    await s.truncate(8 * MiB);
    // 100 runs: 4 KiB of data every 64 KiB, from 32 KiB on.
    for (let i = 0; i < 100; i++) await s.write(32 * 1024 + i * 64 * 1024, new Uint8Array(4096).fill(9));
    const whole = await s.ranges!(0, 8 * MiB);
    if (whole.filter((r) => r.data).length === 100) {
      expect(whole).toHaveLength(201);
      const cut = await s.ranges!(0, 8 * MiB, 20);
      expect(cut).toEqual(whole.slice(0, 20));
      expect(cut.at(-1)).toMatchObject({ data: true });
      // Asked on from there, the rest as the whole answer has it.
      const end = cut.at(-1)!.offset + cut.at(-1)!.length;
      expect(await s.ranges!(end, 8 * MiB - end)).toEqual(whole.slice(20));
      // A limit the file does not reach: the whole window, its trailing hole included.
      expect(await s.ranges!(0, 8 * MiB, 1000)).toEqual(whole);
    }
    await s.close();
  });

  it.skipIf(!seekAddon())('ranges in whole units: each data run widened to the units it touches, runs that meet joined, cut at the window', async () => {
    const K = 1024;
    const unit = 64 * K;
    const s = await FileStorage.create(join(tmp.path, 'units.raw'));
    await s.truncate(8 * MiB);
    // Inside unit 1; across the edge of units 1 and 2; inside unit 3; inside unit 8.
    for (const [at, len] of [
      [68 * K, 4 * K],
      [120 * K, 16 * K],
      [200 * K, 4 * K],
      [512 * K, 4 * K],
    ]) {
      await s.write(at!, new Uint8Array(len!).fill(3));
    }
    const exact = await s.ranges!(0, 8 * MiB);
    // Only where the file system keeps holes of 4 KiB (the exact answer shows the four runs).
    if (exact.filter((r) => r.data).length === 4) {
      const range = (from: number, to: number, data: boolean) => ({ offset: from * K, length: (to - from) * K, data });
      expect(await s.ranges!(0, 8 * MiB, undefined, unit)).toEqual([range(0, 64, false), range(64, 256, true), range(256, 512, false), range(512, 576, true), range(576, 8 * 1024, false)]);
      // Cut at the question's start and end.
      expect(await s.ranges!(100 * K, 30 * K, undefined, unit)).toEqual([range(100, 130, true)]);
      expect(await s.ranges!(300 * K, 300 * K, undefined, unit)).toEqual([range(300, 512, false), range(512, 576, true), range(576, 600, false)]);
      // A unit of 1 (or none) is the exact answer; so is a unit the helper cannot take.
      expect(await s.ranges!(0, 8 * MiB, undefined, 1)).toEqual(exact);
      expect(await s.ranges!(0, 8 * MiB, undefined, 1.5)).toEqual(exact);
      // Raw extents in clusters: what a measure counts.
      const disk = await openRaw(s);
      const kinds: Array<[number, number, string]> = [];
      for await (const e of disk.extents({ granularity: unit })) kinds.push([e.offset / K, e.length / K, e.kind]);
      expect(kinds).toEqual([
        [0, 64, 'zero'],
        [64, 192, 'data'],
        [256, 256, 'zero'],
        [512, 64, 'data'],
        [576, 8 * 1024 - 576, 'zero'],
      ]);
      // The read-only memory of a data run is of exact runs only: a widened one covers holes.
      await s.close();
      const ro = await FileStorage.open(join(tmp.path, 'units.raw'), { lock: false });
      expect(await ro.ranges!(100 * K, 30 * K, undefined, unit)).toEqual([range(100, 130, true)]);
      expect(await ro.ranges!(100 * K, 10 * K)).toEqual([range(100, 110, false)]);
      await ro.close();
      return;
    }
    await s.close();
  });

  it.skipIf(!seekAddon()?.nowait)('reads small ranges from the page cache on the calling thread, short at the end of the file', async () => {
    const path = join(tmp.path, 'nowait.bin');
    const s = await FileStorage.create(path);
    const data = new Uint8Array(10_000).map((_, i) => (i * 7) & 255);
    await s.write(0, data);
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(path, 'r');
    const buf = new Uint8Array(4096);
    const n = seekAddon()!.nowait!(false, fd, buf.subarray(100), 5000);
    closeSync(fd);
    // Just written, so cached: read in place (or -1 if the kernel would block, -2 if unsupported).
    expect([3996, -1, -2]).toContain(n);
    if (n === 3996) expect(buf.subarray(100)).toEqual(data.subarray(5000, 8996));
    // Through FileStorage: whole, short at the end, and past the end.
    expect(await s.read(8000, 4096)).toEqual(data.subarray(8000));
    expect(await s.read(20_000, 4096)).toEqual(new Uint8Array(0));
    const into = new Uint8Array(300);
    expect(await s.readInto(123, into)).toBe(300);
    expect(into).toEqual(data.subarray(123, 423));
    await s.close();
    await expect(s.readInto(0, into)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });

  it.skipIf(!seekAddon())('a read-only file keeps a data run a question found going on past its window: later questions inside it are not asked again', async () => {
    const path = join(tmp.path, 'known.raw');
    const w = await FileStorage.create(path);
    await w.write(0, new Uint8Array(8 * MiB).fill(7));
    await w.truncate(16 * MiB);
    // The helper gives where a cut run really ends.
    const fd = openSync(path, 'r');
    expect(Array.from(seekAddon()!.seekRanges(fd, MiB, MiB))).toEqual([MiB, 2 * MiB, 8 * MiB]);
    expect(Array.from(seekAddon()!.seekRanges(fd, MiB, 10 * MiB))).toEqual([MiB, 8 * MiB]);
    closeSync(fd);
    const ro = await FileStorage.open(path, { lock: false });
    expect(await ro.ranges!(0, MiB)).toEqual([{ offset: 0, length: MiB, data: true }]);
    // A hole punched meanwhile by another writer: the read-only storage still says data (it reads as zeros either way), a new one asks.
    if (await w.punchHole!(2 * MiB, MiB)) {
      expect(await ro.ranges!(2 * MiB, MiB)).toEqual([{ offset: 2 * MiB, length: MiB, data: true }]);
      const fresh = await FileStorage.open(path, { lock: false });
      expect(await fresh.ranges!(2 * MiB, MiB)).toEqual([{ offset: 2 * MiB, length: MiB, data: false }]);
      await fresh.close();
      // Past the run it knew, and from a writable storage, the kernel is asked.
      expect(await ro.ranges!(7 * MiB, 2 * MiB)).toEqual([
        { offset: 7 * MiB, length: MiB, data: true },
        { offset: 8 * MiB, length: MiB, data: false },
      ]);
      expect(await w.ranges!(2 * MiB, MiB)).toEqual([{ offset: 2 * MiB, length: MiB, data: false }]);
    }
    await ro.close();
    await w.close();
  });

  it.skipIf(!seekAddon())('reports an I/O error (not a crash) on a closed descriptor', async () => {
    const s = await FileStorage.create(join(tmp.path, 'closed.bin'));
    const ranges = s.ranges!;
    await s.close();
    await expect(ranges(0, 4096)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });
});
