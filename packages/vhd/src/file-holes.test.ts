import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Extent } from '@img/block';
import { seededBytes } from '@img/testkit';
import { createVhd } from './create.js';
import { openVhd } from './open.js';

const KiB = 1024;

describe('vhd extents with fileHoles on a fully allocated image', () => {
  it('asks the file system a few times for the whole walk, not once per block, and reads nothing but bitmaps', async () => {
    const blockSize = 64 * KiB;
    const blocks = 256;
    const built = new MemoryStorage({ name: 'full.vhd' });
    const disk = await createVhd(built, { size: blocks * blockSize, blockSize });
    await disk.write(0, seededBytes(blocks * blockSize, 11));
    await disk.close();
    const storage = MemoryStorage.from(built.toBytes(), { name: 'full.vhd', readOnly: true });
    // As a file system that cannot say how much it holds: the windows must keep the questions few.
    (storage as { allocatedBytes?: unknown }).allocatedBytes = undefined;
    const image = await openVhd(storage);
    let rangeCalls = 0;
    let reads = 0;
    const ranges = storage.ranges.bind(storage);
    storage.ranges = (o, n) => {
      rangeCalls++;
      return ranges(o, n);
    };
    const readInto = storage.readInto.bind(storage);
    storage.readInto = (at, into) => {
      reads++;
      return readInto(at, into);
    };
    const read = storage.read.bind(storage);
    storage.read = (at, n) => {
      reads++;
      return read(at, n);
    };
    const got: Extent[] = [];
    for await (const e of image.extents({ fileHoles: true, hostOffsets: true })) got.push(e);
    await image.close();
    // One data extent per block (blocks are not contiguous in the file: a bitmap sits between them).
    expect(got.every((e) => e.kind === 'data')).toBe(true);
    expect(got.reduce((n, e) => n + e.length, 0)).toBe(blocks * blockSize);
    // Each question may cost the file system a walk to the next hole (the end of this file): one per block was quadratic.
    expect(rangeCalls).toBeLessThanOrEqual(2);
    // The sector bitmaps, one read per block at most; no sector beside a hole (there is none) is read.
    expect(reads).toBeLessThanOrEqual(blocks);
  });

  it('does not ask at all when the storage holds every byte of the file (no hole to find)', async () => {
    const built = new MemoryStorage({ name: 'dense.vhd' });
    const disk = await createVhd(built, { size: 16 * 64 * KiB, blockSize: 64 * KiB });
    await disk.write(0, seededBytes(16 * 64 * KiB, 12));
    await disk.close();
    const walk = async (full: boolean) => {
      const storage = MemoryStorage.from(built.toBytes(), { name: 'dense.vhd', readOnly: true });
      let calls = 0;
      const ranges = storage.ranges.bind(storage);
      storage.ranges = (o, n) => {
        calls++;
        return ranges(o, n);
      };
      storage.allocatedBytes = full ? () => storage.size() : async () => 0;
      const image = await openVhd(storage);
      const out: Extent[] = [];
      for await (const e of image.extents({ fileHoles: true, hostOffsets: true })) out.push(e);
      await image.close();
      return { out, calls };
    };
    const asked = await walk(false);
    const told = await walk(true);
    expect(told.out).toEqual(asked.out);
    expect(asked.calls).toBeGreaterThan(0);
    expect(told.calls).toBe(0);
  });
});
