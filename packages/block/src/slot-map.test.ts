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
});
