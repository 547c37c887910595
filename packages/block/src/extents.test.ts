import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Extent } from './disk.js';
import { assertExtentCover, chunkExtent, chunkExtents, clipExtents, collectExtents, diskExtentBatches, flattenExtentBatches, mergeExtentBatches, mergeExtents, validateExtentCover } from './extents.js';
import type { Disk } from './disk.js';

const kinds = ['data', 'zero', 'hole'] as const;
const runsArb = fc.array(fc.record({ length: fc.integer({ min: 1, max: 10_000 }), kind: fc.constantFrom(...kinds), depth: fc.integer({ min: 0, max: 2 }) }), {
  minLength: 1,
  maxLength: 30,
});

function toExtents(runs: Array<{ length: number; kind: Extent['kind']; depth: number }>): Extent[] {
  let pos = 0;
  return runs.map((r) => {
    const e: Extent = { offset: pos, length: r.length, kind: r.kind, depth: r.depth };
    pos += r.length;
    return e;
  });
}

/** kind+depth of every byte range boundary, to compare covers semantically. */
function kindAt(extents: Extent[], pos: number): string {
  const e = extents.find((x) => x.offset <= pos && pos < x.offset + x.length);
  return e ? `${e.kind}/${e.depth}` : 'none';
}

describe('extent tools', () => {
  it('mergeExtents yields a valid maximally merged cover with the same meaning', async () => {
    await fc.assert(
      fc.asyncProperty(runsArb, async (runs) => {
        const input = toExtents(runs);
        const total = input.reduce((n, e) => n + e.length, 0);
        const merged = await collectExtents(mergeExtents(input));
        assertExtentCover(merged, 0, total);
        for (const e of input) {
          expect(kindAt(merged, e.offset)).toBe(`${e.kind}/${e.depth}`);
          expect(kindAt(merged, e.offset + e.length - 1)).toBe(`${e.kind}/${e.depth}`);
        }
      }),
      { seed: 1, numRuns: 200 },
    );
  });

  it('mergeExtentBatches merges across the arrays as mergeExtents merges the extents in a row, and hands over no empty array', async () => {
    await fc.assert(
      fc.asyncProperty(runsArb, fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 40 }), async (runs, cuts) => {
        const input = toExtents(runs);
        // Cut the extents into arrays of 0 to 4 (empty arrays too), hosts contiguous in places so that host runs cross cuts.
        const withHosts = input.map((e, i) => (i % 3 === 0 ? e : { ...e, hostOffset: 1_000_000 + e.offset }));
        const arrays: Extent[][] = [];
        let at = 0;
        for (const n of cuts) {
          arrays.push(withHosts.slice(at, at + n).map((e) => ({ ...e })));
          at += n;
        }
        arrays.push(withHosts.slice(at).map((e) => ({ ...e })));
        async function* feed() {
          yield* arrays;
        }
        const out: Extent[][] = [];
        for await (const a of mergeExtentBatches(feed())) out.push(a);
        expect(out.every((a) => a.length > 0)).toBe(true);
        expect(out.flat()).toEqual(await collectExtents(mergeExtents(withHosts)));
        expect(await collectExtents(flattenExtentBatches(mergeExtentBatches(feed())))).toEqual(out.flat());
      }),
      { seed: 3, numRuns: 200 },
    );
  });

  it('diskExtentBatches takes a disk\u2019s own arrays where it has them, else its extents one per array', async () => {
    const extents: Extent[] = [
      { offset: 0, length: 10, kind: 'data', depth: 0 },
      { offset: 10, length: 5, kind: 'hole', depth: 0 },
    ];
    async function* one() {
      yield* extents;
    }
    const plain = { extents: () => one() } as unknown as Disk;
    const seen: Extent[][] = [];
    for await (const a of diskExtentBatches(plain)) seen.push([...a]);
    expect(seen).toEqual([[extents[0]], [extents[1]]]);
    async function* both() {
      yield extents;
    }
    const batched = { extents: () => one(), extentBatches: () => both() } as unknown as Disk;
    seen.length = 0;
    for await (const a of diskExtentBatches(batched)) seen.push([...a]);
    expect(seen).toEqual([extents]);
  });

  it('clipExtents keeps exactly the requested range', async () => {
    await fc.assert(
      fc.asyncProperty(runsArb, fc.nat(), fc.nat(), async (runs, a, b) => {
        const input = toExtents(runs);
        const total = input.reduce((n, e) => n + e.length, 0);
        const start = a % (total + 1);
        const length = b % (total - start + 1);
        const clipped = await collectExtents(clipExtents(input, start, length));
        expect(validateExtentCover(clipped, start, length, { requireMerged: false })).toEqual([]);
        for (const e of clipped) expect(kindAt(input, e.offset)).toBe(`${e.kind}/${e.depth}`);
      }),
      { seed: 2, numRuns: 200 },
    );
  });

  it('clipExtents shifts host offsets with the start', async () => {
    const out = await collectExtents(clipExtents([{ offset: 0, length: 100, kind: 'data', hostOffset: 1000 }], 10, 20));
    expect(out).toEqual([{ offset: 10, length: 20, kind: 'data', hostOffset: 1010 }]);
  });

  it('chunkExtents splits on chunk boundaries without changing the cover', async () => {
    await fc.assert(
      fc.asyncProperty(runsArb, fc.integer({ min: 64, max: 5000 }), async (runs, chunk) => {
        const input = toExtents(runs);
        const total = input.reduce((n, e) => n + e.length, 0);
        const pieces = await collectExtents(chunkExtents(input, chunk));
        expect(validateExtentCover(pieces, 0, total, { requireMerged: false })).toEqual([]);
        for (const p of pieces) {
          expect(p.length).toBeLessThanOrEqual(chunk);
          // a piece never crosses a chunk boundary
          expect(Math.floor(p.offset / chunk)).toBe(Math.floor((p.offset + p.length - 1) / chunk));
        }
      }),
      { seed: 3, numRuns: 200 },
    );
  });

  it('chunkExtent keeps an extent within one chunk as it is and moves host offsets with the pieces', () => {
    const inOne = { offset: 4096, length: 4096, kind: 'data' as const, hostOffset: 65536, file: 'a' };
    expect(chunkExtent(inOne, 8192)[0]).toBe(inOne);
    expect(chunkExtent({ offset: 6000, length: 5000, kind: 'data', hostOffset: 100, file: 'a' }, 4096)).toEqual([
      { offset: 6000, length: 2192, kind: 'data', hostOffset: 100, file: 'a' },
      { offset: 8192, length: 2808, kind: 'data', hostOffset: 2292, file: 'a' },
    ]);
    expect(chunkExtent({ offset: 8192, length: 0, kind: 'zero' }, 4096)).toEqual([]);
    expect(() => chunkExtent(inOne, 0)).toThrow(RangeError);
  });

  it('validateExtentCover names gaps, overlaps, unmerged runs and a short end', () => {
    expect(
      validateExtentCover(
        [
          { offset: 0, length: 10, kind: 'data' },
          { offset: 12, length: 5, kind: 'zero' },
          { offset: 15, length: 5, kind: 'zero' },
          { offset: 20, length: 5, kind: 'zero' },
        ],
        0,
        30,
      ),
    ).toEqual(['extent 1 starts at 12, expected 10 (gap)', 'extent 2 starts at 15, expected 17 (overlap)', 'extents 2 and 3 should have been merged', 'extents end at 25, expected 30']);
  });
});
