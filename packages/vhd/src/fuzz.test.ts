/**
 * Damaged images: random bytes of the metadata (footers, dynamic header,
 * BAT, bitmaps, parent locators) are overwritten; opening, reading,
 * mapping and checking must either work or throw an ImageError, never
 * crash, hang or allocate without bound.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, diskExtents } from '@img/block';
import { testImagesDir } from '@img/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { openVhd } from './open.js';
import { readVhdStream } from './read-stream.js';

async function differencingSample(): Promise<Uint8Array> {
  const parent = await createVhd(new MemoryStorage({ name: 'p.vhd' }), { size: 300_000, blockSize: 4096 });
  const s = new MemoryStorage({ name: 'c.vhd' });
  const c = await createVhd(s, { parent: { disk: parent, relativePath: 'p.vhd', absolutePath: '/images/p.vhd' }, blockSize: 4096 });
  await c.write(5000, new Uint8Array(9000).fill(1));
  return s.toBytes();
}

const samples: Array<[string, () => Promise<Uint8Array>, number]> = [
  ['dynamic-default', async () => new Uint8Array(readFileSync(join(testImagesDir, 'vhd/dynamic-default.vhd'))), 512 * 3 + 20480],
  ['fixed-force-size', async () => new Uint8Array(readFileSync(join(testImagesDir, 'vhd/fixed-force-size.vhd'))), 0],
  ['differencing', differencingSample, 8192],
];

async function exercise(bytes: Uint8Array): Promise<void> {
  const expectImageError = (e: unknown) => {
    if (!ImageError.isInstance(e)) throw e;
  };
  // Trusted opens read on past bad checksums (as qemu): they see more damage than untrusted ones.
  for (const untrusted of [true, false]) {
    try {
      const disk = await openVhd(MemoryStorage.from(bytes, { name: 'f.vhd' }), { noBacking: true, untrusted });
      const extents = await diskExtents(disk);
      expect(extents.length).toBeGreaterThan(0);
      await disk.read(0, Math.min(disk.size, 1 << 20));
      await disk.info();
    } catch (e) {
      expectImageError(e);
    }
  }
  try {
    const src = await readVhdStream(
      (async function* () {
        yield bytes;
      })(),
    );
    for await (const _ of src.pieces);
  } catch (e) {
    expectImageError(e);
  }
  const r = await checkVhd(MemoryStorage.from(bytes, { name: 'f.vhd' }));
  expect(r.format).toBe('vhd');
}

describe('damaged metadata never crashes', () => {
  for (const [name, make, metaEnd] of samples) {
    it(`${name}: random byte damage in the metadata`, async () => {
      const base = await make();
      const regions = [
        [0, 512],
        [Math.max(0, base.length - 512), base.length],
        [512, Math.max(512, metaEnd)],
      ].filter(([a, b]) => b! > a!);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.nat(regions.length - 1), fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), async (edits) => {
          const b = base.slice();
          for (const [r, at, value] of edits) {
            const [from, to] = regions[r]!;
            b[from! + (at % (to! - from!))] = value;
          }
          await exercise(b);
        }),
        { seed: 2024, numRuns: 150 },
      );
    });
  }
});
