import { describe, expect, it } from 'vitest';
import { SlotMap } from './slot-map.js';

describe('SlotMap', () => {
  it('hands out slots in order, again lowest first once given back, and closes gaps moving the last slots in guest order', () => {
    const m = new SlotMap(4, 10, 512, 10 * 512);
    // Units 0-3 (a batch of zeros), then 8-11 (data), placed before the zeros are settled.
    for (const u of [0, 1, 2, 3, 8, 9, 10, 11]) m.slot(u, true);
    expect(m.next).toBe(18);
    expect([0, 1, 2, 3].map((u) => m.slot(u, false))).toEqual([10, 11, 12, 13]);
    for (const s of [13, 10, 12, 11]) m.release(s);
    expect(m.slot(0, false)).toBe(0);
    // A new unit takes the lowest given-back slot.
    expect(m.slot(20, true)).toBe(10);
    expect(m.unitIn(10)).toBe(20);
    // Gaps 11-13; the last three slots (units 9, 10, 11) move into them in unit order, not reversed.
    expect(m.closeGaps()).toEqual([
      [15, 11],
      [16, 12],
      [17, 13],
    ]);
    expect(m.next).toBe(15);
    expect([8, 9, 10, 11].map((u) => m.slot(u, false))).toEqual([14, 11, 12, 13]);
    expect(m.unitIn(17)).toBe(-1);
  });

  it('drops given-back slots at the end without moving anything; pieces join host-contiguous units', () => {
    const m = new SlotMap(8, 1, 512, 0);
    for (const u of [0, 1, 2]) m.slot(u, true);
    m.release(3);
    m.release(2);
    expect(m.closeGaps()).toEqual([]);
    expect(m.next).toBe(2);
    const pieces: number[][] = [];
    m.pieces(100, 3 * 512, true, (g, h, n) => pieces.push([g, h, n]));
    // Unit 0 at slot 1, units 1-3 new at slots 2-4: one piece, host = guest here.
    expect(pieces).toEqual([[100, 100, 1536]]);
  });

  it('places runs in one go exactly as unit by unit: same slots, same pieces, same map, with given-back slots and crossed tables', () => {
    // A reference: the same walk with one slot() call per unit, as pieces() did before it placed fresh runs in one go.
    const unitWalk = (m: SlotMap, offset: number, length: number, out: number[]) => {
      let run: number[] | undefined;
      for (let pos = offset; pos < offset + length;) {
        const u = Math.floor(pos / m.unitBytes);
        const n = Math.min(offset + length - pos, (u + 1) * m.unitBytes - pos);
        const at = m.position(m.slot(u, true)) + (pos - u * m.unitBytes);
        if (run && run[1]! + run[2]! === at) run[2]! += n;
        else {
          if (run) out.push(...run);
          run = [pos, at, n];
        }
        pos += n;
      }
      if (run) out.push(...run);
    };
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let round = 0; round < 40; round++) {
      const fast = new SlotMap(8, 3, 512, 4096);
      const slow = new SlotMap(8, 3, 512, 4096);
      for (let op = 0; op < 60; op++) {
        if (rand(5) === 0 && fast.next > 3) {
          // Give a slot back (both maps agree on the slots, so the same one).
          const s = 3 + rand(fast.next - 3);
          fast.release(s);
          slow.release(s);
          continue;
        }
        const offset = rand(64 * 512);
        const length = 1 + rand(20 * 512);
        const a: number[] = [];
        const b: number[] = [];
        fast.pieces(offset, length, true, (g, h, n) => a.push(g, h, n));
        unitWalk(slow, offset, length, b);
        expect(a).toEqual(b);
        expect(fast.next).toBe(slow.next);
      }
      for (let u = 0; u < 96; u++) expect(fast.slot(u, false)).toBe(slow.slot(u, false));
      for (let s = 3; s < fast.next; s++) expect(fast.unitIn(s)).toBe(slow.unitIn(s));
      expect(fast.closeGaps()).toEqual(slow.closeGaps());
      // Every unit that holds a slot, before and after the moves, is in one of its table's `used` pairs, in both maps.
      for (const m of [fast, slow]) {
        for (const [t, table] of m.tables) {
          const pairs = m.used.get(t) ?? [];
          table.forEach((slot, i) => {
            if (slot !== 0) expect(pairs.some((_, k) => k % 2 === 0 && pairs[k]! <= i && i < pairs[k]! + pairs[k + 1]!)).toBe(true);
          });
          for (let k = 0; k < pairs.length; k += 2) expect(pairs[k]! + pairs[k + 1]!).toBeLessThanOrEqual(8);
        }
      }
    }
  });
});
