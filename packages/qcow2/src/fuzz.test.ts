/**
 * Damaged metadata found by chance: random bytes of the metadata clusters
 * are changed, and opening, reading everything and listing extents must
 * either work or fail with an ImageError — never another exception, a
 * hang or a huge allocation.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ImageError } from '@img/block';
import { loadFixture, memoryResolver, openBytes } from '../test/fixtures.js';

async function exercise(bytes: Uint8Array): Promise<void> {
  const disk = await openBytes(bytes, { resolver: memoryResolver });
  try {
    if (disk.size <= 4 * 1024 * 1024) await disk.read(0, disk.size);
    for await (const _ of disk.extents()) continue;
    await disk.info();
    for (const s of disk.snapshots) {
      const snap = await disk.openSnapshot(s.id);
      if (snap.size <= 4 * 1024 * 1024) await snap.read(0, snap.size);
    }
  } finally {
    await disk.close();
  }
}

describe('random metadata damage', () => {
  for (const name of ['refcount-16.qcow2', 'compressed-zstd-512.qcow2', 'extended-l2.qcow2', 'snapshots.qcow2', 'v2-4k.qcow2', 'chain-top.qcow2']) {
    it(`${name}: open/read/extents either work or throw ImageError`, async () => {
      const original = loadFixture(name);
      // Metadata lives in the first clusters of these small images.
      const span = Math.min(original.length, 48 * 1024);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.nat(span - 1), fc.nat(255)), { minLength: 1, maxLength: 8 }), async (edits) => {
          const bytes = original.slice();
          for (const [at, value] of edits) bytes[at] = value;
          try {
            await exercise(bytes);
          } catch (e) {
            if (!ImageError.isInstance(e)) throw e;
          }
        }),
        { seed: 20261121, numRuns: 150 },
      );
      expect(true).toBe(true);
    });
  }
});

describe('random metadata damage, then writes', () => {
  for (const name of ['refcount-16.qcow2', 'compressed-zlib-4k.qcow2', 'extended-l2.qcow2', 'snapshots.qcow2', 'v2-4k.qcow2']) {
    it(`${name}: writable open, writes, zeroes, discards and a check either work or throw ImageError`, async () => {
      const original = loadFixture(name);
      const span = Math.min(original.length, 48 * 1024);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.nat(span - 1), fc.nat(255)), { minLength: 1, maxLength: 6 }), fc.nat(), async (edits, seed) => {
          const bytes = original.slice();
          for (const [at, value] of edits) bytes[at] = value;
          try {
            const disk = await openBytes(bytes, { readOnly: false, resolver: memoryResolver });
            try {
              const size = disk.size;
              if (size > 0 && size <= 64 * 1024 * 1024) {
                const at = seed % size;
                const len = Math.min(size - at, 1 + (seed % 20000));
                await disk.write(at, new Uint8Array(len).fill(seed & 0xff)).catch(rethrowUnlessImageError);
                await disk.writeZeroes((at * 7) % size, Math.min(size - ((at * 7) % size), 5000)).catch(rethrowUnlessImageError);
                await disk.discard((at * 3) % size, Math.min(size - ((at * 3) % size), 9000)).catch(rethrowUnlessImageError);
              }
            } finally {
              await disk.close().catch(rethrowUnlessImageError);
            }
            const { checkQcow2 } = await import('./check-qcow2.js');
            const { MemoryStorage } = await import('@img/block');
            await checkQcow2(MemoryStorage.from(bytes)).catch(rethrowUnlessImageError);
          } catch (e) {
            rethrowUnlessImageError(e);
          }
        }),
        { seed: Number(process.env.IMG_SEED ?? 4242), numRuns: Number(process.env.IMG_RUNS ?? 100) },
      );
    });
  }
});

function rethrowUnlessImageError(e: unknown): void {
  if (!ImageError.isInstance(e)) throw e;
}

describe('random metadata damage, read as a stream', () => {
  for (const name of ['v3-64k.qcow2', 'compressed-zstd-512.qcow2', 'compressed-zlib-4k.qcow2', 'extended-l2.qcow2', 'refcount-1.qcow2']) {
    it(`${name}: readQcow2Stream decodes or throws ImageError, and never hands out more than the disk`, async () => {
      const { readQcow2Stream } = await import('./read-stream.js');
      const original = loadFixture(name);
      const span = Math.min(original.length, 48 * 1024);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.nat(span - 1), fc.nat(255)), { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 70_000 }), async (edits, chunk) => {
          const bytes = original.slice();
          for (const [at, value] of edits) bytes[at] = value;
          try {
            const src = await readQcow2Stream(
              (async function* () {
                for (let at = 0; at < bytes.length; at += chunk) yield bytes.subarray(at, at + chunk);
              })(),
            );
            let total = 0;
            for await (const p of src.pieces) {
              expect(p.offset + p.data.length).toBeLessThanOrEqual(src.size);
              total += p.data.length;
              if (total > 256 * 1024 * 1024) break;
            }
          } catch (e) {
            rethrowUnlessImageError(e);
          }
        }),
        { seed: Number(process.env.IMG_SEED ?? 777), numRuns: Number(process.env.IMG_RUNS ?? 60) },
      );
    });
  }
});
