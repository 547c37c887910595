import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Extent } from './disk.js';
import { FILE_HOLES_SLICE, FileHoles, fileHolePieces, splitAtFileHoles } from './file-holes.js';
import { MemoryStorage } from './memory-storage.js';

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

describe('FileHoles', () => {
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
          const map = new FileHoles(storage, await storage.size(), windowPages * 64 * KiB);
          for (const [offset, length] of questions) {
            expect(await map.holes(offset, length)).toEqual(await directHoles(storage, offset, length));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('answers as the storage does when the storage stops short of each window (a limit on the ranges of one answer)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.boolean(), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 44 * 64 * KiB }), fc.integer({ min: 1, max: 10 * 64 * KiB })), { minLength: 1, maxLength: 30 }),
        async (pages, windowPages, cut, questions) => {
          const storage = new MemoryStorage({ name: 'h' });
          await storage.truncate(pages.length * 64 * KiB);
          for (let i = 0; i < pages.length; i++) if (pages[i]) await storage.write(i * 64 * KiB + 100, new Uint8Array([1]));
          const limits: Array<number | undefined> = [];
          const source = { ranges: (o: number, n: number, limit?: number) => (limits.push(limit), storage.ranges(o, n, Math.min(limit ?? Infinity, cut))) };
          const map = new FileHoles(source, await storage.size(), windowPages * 64 * KiB);
          for (const [offset, length] of questions) {
            expect(await map.holes(offset, length)).toEqual(await directHoles(storage, offset, length));
          }
          expect(limits.every((l) => l !== undefined && l > 0 && l <= 16384)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('asks a dense file once for many blocks, and grows its window', async () => {
    const storage = new MemoryStorage({ name: 'd' });
    await storage.write(0, new Uint8Array(64 * MiB).fill(1));
    const map = new FileHoles(storage, await storage.size(), 4 * MiB);
    for (let at = 0; at < 64 * MiB; at += 2 * MiB) expect(await map.holes(at, 2 * MiB)).toEqual([]);
    // Windows of 4, 8, 16, 32 MiB, then one that reaches the end.
    expect(map.asked).toBeLessThanOrEqual(5);
  });
});

describe('fileHolePieces', () => {
  it('splits a long extent a slice at a time, each slice as the holes lie, data across a slice edge in two pieces', async () => {
    const slice = FILE_HOLES_SLICE;
    const storage = new MemoryStorage({ name: 'long' });
    await storage.truncate(3 * slice);
    const data: Array<[number, number]> = [
      [slice - 64 * KiB, slice + 64 * KiB],
      [100 * MiB, 100 * MiB + 64 * KiB],
      [2 * slice - 64 * KiB, 2 * slice + 128 * KiB],
    ];
    for (const [a, b] of data) await storage.write(a, new Uint8Array(b - a).fill(3));
    const holes = new FileHoles(storage, await storage.size());
    const e: Extent = { offset: 1 << 20, length: 3 * slice, kind: 'data', depth: 2, hostOffset: 0, file: 'long' };
    const pieces: Extent[] = [];
    let k = 0;
    for await (const part of fileHolePieces(e, 0, storage, holes)) {
      // Each array covers its own slice exactly.
      expect(part[0]!.offset).toBe(e.offset + k * slice);
      expect(part.reduce((n, p) => n + p.length, 0)).toBe(slice);
      pieces.push(...part);
      k++;
    }
    expect(k).toBe(3);
    for (const p of pieces) {
      expect(p.depth).toBe(2);
      if (p.kind === 'data') expect(p.hostOffset).toBe(p.offset - e.offset);
    }
    // Joined where they touch: the data ranges, zeros between them.
    const joined: Array<[number, number, string]> = [];
    for (const p of pieces) {
      const last = joined.at(-1);
      if (last && last[2] === p.kind && last[1] === p.offset) last[1] += p.length;
      else joined.push([p.offset, p.offset + p.length, p.kind]);
    }
    const expected: Array<[number, number, string]> = [];
    let pos = 0;
    for (const [a, b] of data) {
      expected.push([e.offset + pos, e.offset + a, 'zero'], [e.offset + a, e.offset + b, 'data']);
      pos = b;
    }
    expected.push([e.offset + pos, e.offset + 3 * slice, 'zero']);
    expect(joined).toEqual(expected);
    // The data across the first edge comes as two pieces, one in each slice.
    expect(pieces.filter((p) => p.kind === 'data')).toHaveLength(5);
  });
});

describe('splitAtFileHoles', () => {
  it('covers the extent exactly; zero pieces read as zeros, in whole sectors; data pieces keep their host offsets', async () => {
    await fc.assert(
      fc.asyncProperty(
        // Per 64 KiB page of the file: never written, or written with a few bytes at a sector.
        fc.array(fc.option(fc.integer({ min: 0, max: 127 }), { nil: undefined }), { minLength: 1, maxLength: 24 }),
        fc.integer({ min: 0, max: 20 * 128 }),
        fc.integer({ min: 1, max: 8 * 128 }),
        fc.boolean(),
        async (pages, startSector, sectors, withHost) => {
          const storage = new MemoryStorage({ name: 'f' });
          await storage.truncate(pages.length * 64 * KiB);
          for (const [i, at] of pages.entries()) if (at !== undefined) await storage.write(i * 64 * KiB + at * 512 + 7, new Uint8Array([1, 2, 3]));
          const host = startSector * 512;
          const e: Extent = { offset: 1000 * 512, length: sectors * 512, kind: 'data', depth: 2, ...(withHost ? { hostOffset: host, file: 'f' } : {}) };
          const split = splitAtFileHoles(e, host, storage, new FileHoles(storage, await storage.size(), 64 * KiB));
          const pieces = split instanceof Promise ? await split : split;
          let pos = e.offset;
          for (const p of pieces) {
            expect(p.offset).toBe(pos);
            expect(p.length % 512).toBe(0);
            expect(p.depth).toBe(2);
            pos += p.length;
            const bytes = new Uint8Array(p.length);
            await storage.readInto(host + p.offset - e.offset, bytes);
            if (p.kind === 'zero') expect(bytes.every((b) => b === 0)).toBe(true);
            else {
              expect(p.kind).toBe('data');
              expect(p.hostOffset).toBe(withHost ? host + p.offset - e.offset : undefined);
            }
          }
          expect(pos).toBe(e.offset + e.length);
        },
      ),
      { numRuns: 200 },
    );
  });
});
