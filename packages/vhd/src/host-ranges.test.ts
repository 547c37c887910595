import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Extent } from '@img/block';
import { seededBytes } from '@img/testkit';
import { createVhd } from './create.js';
import { HostRanges } from './host-ranges.js';
import { openVhd } from './open.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** The holes of [offset, offset + length) as the storage itself answers (gaps in its answer and the end of the file are holes). */
async function directHoles(storage: MemoryStorage, offset: number, length: number): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  let pos = offset;
  for (const r of await storage.ranges(offset, length)) {
    if (r.data) {
      if (r.offset > pos) out.push([pos, r.offset]);
      pos = r.offset + r.length;
    }
  }
  if (pos < offset + length) out.push([pos, offset + length]);
  // Merge touching holes (the storage answers per page).
  const merged: Array<[number, number]> = [];
  for (const h of out) {
    const last = merged.at(-1);
    if (last && last[1] === h[0]) last[1] = h[1];
    else merged.push([...h]);
  }
  return merged;
}

describe('HostRanges', () => {
  it('answers every question as the storage does, across window edges, out of order and past the end of the file', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.boolean(), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 1, max: 6 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 44 * 64 * KiB }), fc.integer({ min: 1, max: 10 * 64 * KiB })), { minLength: 1, maxLength: 30 }),
        async (pages, windowPages, questions) => {
          // MemoryStorage keeps 64 KiB pages: a page written is data, a page never written a hole.
          const storage = new MemoryStorage({ name: 'h' });
          await storage.truncate(pages.length * 64 * KiB);
          for (let i = 0; i < pages.length; i++) if (pages[i]) await storage.write(i * 64 * KiB + 100, new Uint8Array([1]));
          const map = new HostRanges(storage, await storage.size(), windowPages * 64 * KiB);
          for (const [offset, length] of questions) {
            expect(await map.holes(offset, length)).toEqual(await directHoles(storage, offset, length));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('asks a dense file once for many blocks, and grows its window', async () => {
    const storage = new MemoryStorage({ name: 'd' });
    await storage.write(0, new Uint8Array(64 * MiB).fill(1));
    const map = new HostRanges(storage, await storage.size(), 4 * MiB);
    for (let at = 0; at < 64 * MiB; at += 2 * MiB) expect(await map.holes(at, 2 * MiB)).toEqual([]);
    // Windows of 4, 8, 16, 32 MiB, then one that reaches the end.
    expect(map.asked).toBeLessThanOrEqual(5);
  });
});

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
