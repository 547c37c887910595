import { seededBytes } from '@img/testkit';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { deflateGrain, deflateGrains, inflateGrain } from './compression.js';

describe('grain compression', () => {
  it('the worker pool gives the same bytes as this thread, grain by grain, the last grain short', async () => {
    const grain = 65536;
    const data = new Uint8Array(5 * grain + 1000);
    data.set(seededBytes(grain, 1), 0);
    data.fill(0x61, grain, 3 * grain);
    data.set(seededBytes(1000, 2), 5 * grain);
    const pooled = await deflateGrains(data, grain);
    expect(pooled).toHaveLength(6);
    pooled.forEach((c, i) => {
      expect(Buffer.from(c).equals(Buffer.from(deflateGrain(data.subarray(i * grain, Math.min(data.length, (i + 1) * grain)))))).toBe(true);
      expect(Buffer.from(inflateGrain(c, grain, { hostOffset: 0 })).equals(Buffer.from(data.subarray(i * grain, Math.min(data.length, (i + 1) * grain))))).toBe(true);
    });
  });

  it('inflation stops at one grain (a bomb) and refuses what is not zlib', () => {
    expect(() => inflateGrain(deflateSync(new Uint8Array(1 << 20)), 65536, { hostOffset: 0x1000 })).toThrow(/at 0x1000 inflates to more than one grain/);
    expect(() => inflateGrain(new Uint8Array(100).fill(7), 65536, { hostOffset: 0 })).toThrow(/not a valid zlib stream/);
  });
});
