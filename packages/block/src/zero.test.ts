import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { findZeroRuns, isAllZero } from './zero.js';

describe('isAllZero', () => {
  it('finds a single non-zero byte anywhere, at any alignment', () => {
    const buf = new Uint8Array(1000);
    for (const start of [0, 1, 2, 3]) {
      for (const len of [0, 1, 3, 4, 5, 17, 500]) {
        const view = buf.subarray(start, start + len);
        expect(isAllZero(view)).toBe(true);
        for (let i = 0; i < len; i++) {
          view[i] = 1;
          expect(isAllZero(view)).toBe(false);
          view[i] = 0;
        }
      }
    }
  });
});

describe('findZeroRuns', () => {
  it('covers the buffer with alternating runs whose zero runs are all zero', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ len: fc.integer({ min: 1, max: 3000 }), zero: fc.boolean() }), { minLength: 1, maxLength: 12 }), fc.constantFrom(0, 512, 4096, 65536), fc.integer({ min: 0, max: 4096 }), (parts, minRun, base) => {
        const total = parts.reduce((n, p) => n + p.len, 0);
        const buf = new Uint8Array(total);
        let at = 0;
        for (const p of parts) {
          if (!p.zero) for (let i = 0; i < p.len; i++) buf[at + i] = (i % 251) + 1;
          at += p.len;
        }
        const runs = findZeroRuns(buf, minRun, 512, base);
        let pos = 0;
        for (const [i, r] of runs.entries()) {
          expect(r.start).toBe(pos);
          expect(r.end).toBeGreaterThan(r.start);
          if (i > 0) expect(r.zero).not.toBe(runs[i - 1]!.zero);
          if (r.zero) {
            expect(isAllZero(buf.subarray(r.start, r.end))).toBe(true);
            const edge = i === 0 || i === runs.length - 1;
            if (!edge) expect(r.end - r.start).toBeGreaterThanOrEqual(minRun);
          }
          pos = r.end;
        }
        expect(pos).toBe(total);
        if (minRun === 0) expect(runs).toEqual([{ start: 0, end: total, zero: false }]);
      }),
      { seed: 42, numRuns: 300 },
    );
  });

  it('keeps a long zero run sparse and folds a short one into data', () => {
    const buf = new Uint8Array(64 * 1024).fill(7);
    buf.fill(0, 8192, 8192 + 16384); // 16 KiB of zeros
    buf.fill(0, 40960, 40960 + 1024); // 1 KiB of zeros
    const runs = findZeroRuns(buf, 4096);
    expect(runs).toEqual([
      { start: 0, end: 8192, zero: false },
      { start: 8192, end: 24576, zero: true },
      { start: 24576, end: 65536, zero: false },
    ]);
  });
});
