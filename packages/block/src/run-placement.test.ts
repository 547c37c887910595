import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from './memory-storage.js';
import { joinPlacedExtent, PlacedRuns, type PieceWalk, type WriterPhase } from './run-placement.js';
import type { Extent } from './disk.js';
import type { Storage } from './storage.js';

const UNIT = 16;

/** Units handed out in the order they are first touched, after a 64-byte header: guest unit -> host unit. */
function unitMap(): { walk: PieceWalk; hostOf: Map<number, number> } {
  const hostOf = new Map<number, number>();
  const walk: PieceWalk = (offset, length, allocate, each) => {
    for (let pos = offset; pos < offset + length;) {
      const u = Math.floor(pos / UNIT);
      const n = Math.min(offset + length - pos, (u + 1) * UNIT - pos);
      if (!hostOf.has(u) && allocate) hostOf.set(u, hostOf.size);
      const h = hostOf.get(u);
      if (h !== undefined) each(pos, 64 + h * UNIT + pos - u * UNIT, n);
      pos += n;
    }
  };
  return { walk, hostOf };
}

type Op = { op: 'write'; at: number; len: number; seed: number } | { op: 'zero'; at: number; len: number };

describe('PlacedRuns', () => {
  it('reads back what was written and zeroed, as a flat model does, with only touched units allocated', async () => {
    const size = 512;
    const ops = fc.array(
      fc.oneof(
        fc.record({ op: fc.constant('write' as const), at: fc.integer({ min: 0, max: size - 1 }), len: fc.integer({ min: 1, max: 80 }), seed: fc.integer({ min: 1, max: 255 }) }),
        fc.record({ op: fc.constant('zero' as const), at: fc.integer({ min: 0, max: size - 1 }), len: fc.integer({ min: 1, max: 80 }) }),
      ),
      { maxLength: 20 },
    );
    await fc.assert(
      fc.asyncProperty(ops, async (list: Op[]) => {
        const storage = new MemoryStorage();
        const { walk, hostOf } = unitMap();
        const io = new PlacedRuns({ format: 'test', storage, size: 512 }, walk, () => 'open');
        const model = new Uint8Array(size);
        const written = new Set<number>();
        for (const o of list) {
          const len = Math.min(o.len, size - o.at);
          if (o.op === 'write') {
            const data = new Uint8Array(len).map((_, i) => (o.seed + i) & 0xff || 1);
            await io.write(o.at, data);
            model.set(data, o.at);
            for (let u = Math.floor(o.at / UNIT); u * UNIT < o.at + len; u++) written.add(u);
          } else {
            await io.writeZeroes(o.at, len);
            model.fill(0, o.at, o.at + len);
          }
        }
        await io.settle();
        expect(io.failure).toBeUndefined();
        const back = new Uint8Array(size).fill(0xee);
        await io.readInto(0, back);
        expect(back).toEqual(model);
        expect(new Set(hostOf.keys())).toEqual(written);
      }),
      { numRuns: 60 },
    );
  });

  it('places runs at the host positions later writes use', async () => {
    const storage = new MemoryStorage();
    const { walk } = unitMap();
    const io = new PlacedRuns({ format: 'test', storage, size: 512 }, walk, () => 'open');
    expect(io.place(40, 30)).toEqual([40, 64 + 8, 8, 48, 64 + 16, 16, 64, 64 + 32, 6]);
    await io.write(48, new Uint8Array(16).fill(7));
    expect((await storage.read(64 + 16, 16)).every((b) => b === 7)).toBe(true);
  });

  it('keeps the first failed write for settle() and failure', async () => {
    const storage = new MemoryStorage();
    const failing: Storage = Object.assign(Object.create(storage) as Storage, {
      write: () => Promise.reject(new Error('disk full')),
    });
    const io = new PlacedRuns({ format: 'test', storage: failing, size: 512 }, unitMap().walk, () => 'open');
    await expect(io.write(0, new Uint8Array(40))).rejects.toThrow('disk full');
    await io.settle();
    expect((io.failure as Error).message).toBe('disk full');
  });
});

describe('PlacedRuns checks', () => {
  it('refuses ranges outside the disk and I/O in a state that does not allow it', async () => {
    let phase: WriterPhase = 'open';
    const io = new PlacedRuns({ format: 'test', storage: new MemoryStorage(), size: 64 }, unitMap().walk, () => phase);
    await expect(io.write(60, new Uint8Array(8))).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    expect(() => io.place(-1, 4)).toThrow(expect.objectContaining({ code: 'ERR_IMG_INVALID_ARG' }));
    phase = 'finishing';
    await expect(io.writeZeroes(0, 8)).rejects.toThrow(/closed/);
    expect(() => io.place(0, 4)).toThrow(/closed/);
    expect((await io.read(0, 8)).length).toBe(8);
    for (const end of ['finished', 'aborted'] as const) {
      phase = end;
      await expect(io.readInto(0, new Uint8Array(8))).rejects.toThrow(/closed/);
    }
  });
});

describe('joinPlacedExtent', () => {
  it('joins extents of one kind, and host runs only where they are contiguous', () => {
    const cur: Extent = { offset: 0, length: 10, kind: 'data', hostOffset: 100 };
    expect(joinPlacedExtent(cur, { offset: 10, length: 5, kind: 'data', hostOffset: 110 })).toBe(true);
    expect(cur.length).toBe(15);
    expect(joinPlacedExtent(cur, { offset: 15, length: 5, kind: 'data', hostOffset: 200 })).toBe(false);
    expect(joinPlacedExtent(cur, { offset: 15, length: 5, kind: 'hole' })).toBe(false);
    expect(joinPlacedExtent(undefined, { offset: 15, length: 5, kind: 'hole' })).toBe(false);
    const hole: Extent = { offset: 15, length: 5, kind: 'hole' };
    expect(joinPlacedExtent(hole, { offset: 20, length: 5, kind: 'hole' })).toBe(true);
    expect(hole.length).toBe(10);
    expect(cur.length).toBe(15);
  });
});
