/**
 * Damaged images: random bytes of a sparse extent's metadata (header,
 * embedded descriptor, grain directories, grain tables, grain markers,
 * the streamOptimized footer) are overwritten; opening, reading, mapping,
 * checking and the pipe reader must either work or throw an ImageError,
 * never crash, hang or allocate without bound.
 */
import { join } from 'node:path';
import { ImageError, MemoryStorage, diskExtents } from '@img/block';
import { readVmdkBytes, testImagesDir } from '@img/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkVmdk } from './check.js';
import { openVmdk } from './open.js';
import { readVmdkStream } from './read-stream.js';

/** [name, bytes, metadata regions [from, to)] */
function sample(name: string): [string, Uint8Array, Array<[number, number]>] {
  const v = readVmdkBytes(join(testImagesDir, 'vmdk', name));
  const b = v.bytes;
  const overHead = Number(v.view.getBigUint64(64, true)) * 512;
  const regions: Array<[number, number]> = [
    [0, 512],
    [512, Math.min(b.length, Math.max(1024, overHead))],
    [Math.max(0, b.length - 1536), b.length],
  ];
  // The first grain table and the first grain (its marker, when compressed).
  const table = v.tableOffset(0);
  if (table > 0 && table < b.length) {
    regions.push([table, Math.min(b.length, table + 2048)]);
    const grain = v.view.getUint32(table, true) * 512;
    if (grain > 0 && grain < b.length) regions.push([grain, Math.min(b.length, grain + 512)]);
  }
  return [name, b, regions];
}

const samples = ['sparse.vmdk', 'zeroed-grain.vmdk', 'stream-qemu.vmdk', 'stream-vmdkstream.vmdk'].map(sample);

function expectImageError(e: unknown): void {
  if (!ImageError.isInstance(e)) throw e;
  expect(e.code).toMatch(/^ERR_IMG_[A-Z_]+$/);
}

async function exercise(bytes: Uint8Array): Promise<void> {
  for (const untrusted of [true, false]) {
    try {
      const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'f.vmdk', readOnly: true }), { noBacking: true, untrusted });
      try {
        const extents = await diskExtents(disk);
        expect(extents.length).toBeGreaterThan(0);
        await disk.read(0, Math.min(disk.size, 1 << 20));
        await disk.info();
      } finally {
        await disk.close();
      }
    } catch (e) {
      expectImageError(e);
    }
  }
  try {
    const src = await readVmdkStream(
      (async function* () {
        yield bytes.subarray(0, 700);
        yield bytes.subarray(700);
      })(),
    );
    for await (const _ of src.pieces);
  } catch (e) {
    expectImageError(e);
  }
  try {
    const r = await checkVmdk(MemoryStorage.from(bytes, { name: 'f.vmdk', readOnly: true }), { untrusted: true });
    expect(r.format).toBe('vmdk');
  } catch (e) {
    expectImageError(e);
  }
}

describe('damaged metadata never crashes', () => {
  for (const [name, base, regions] of samples) {
    it(`${name}: random damage in the metadata`, async () => {
      const edit = fc.tuple(fc.nat(regions.length - 1), fc.nat(), fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(-1, -2, -3)));
      await fc.assert(
        fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 6 }), async (edits) => {
          const b = base.slice();
          const view = new DataView(b.buffer);
          for (const [r, at, value] of edits) {
            const [from, to] = regions[r]!;
            const p = from + (at % (to - from));
            // -1..-3: an absurd u32 (all ones, top bit, a sector past the end) at the aligned offset.
            if (value >= 0) b[p] = value;
            else if ((p & ~3) + 4 <= b.length) view.setUint32(p & ~3, value === -1 ? 0xffffffff : value === -2 ? 0x80000000 : (b.length >> 9) + 1, true);
          }
          await exercise(b);
        }),
        { seed: 2026, numRuns: 60 },
      );
    });
  }
});
