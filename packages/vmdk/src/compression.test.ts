import { seededBytes } from '@img/testkit';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { deflateGrain, deflateGrains, inflateGrain, vmdkCodecs } from './compression.js';

describe('grain compression (Node codecs)', () => {
  it('runs with node:zlib in the tests, as Node loads the package', () => {
    expect(vmdkCodecs().name).toBe('node');
  });

  it('the worker pool gives the same bytes as this thread, grain by grain, the last grain short', async () => {
    const grain = 65536;
    const data = new Uint8Array(5 * grain + 1000);
    data.set(seededBytes(grain, 1), 0);
    data.fill(0x61, grain, 3 * grain);
    data.set(seededBytes(1000, 2), 5 * grain);
    const pooled = await deflateGrains(data, grain);
    expect(pooled).toHaveLength(6);
    for (const [i, c] of pooled.entries()) {
      const plain = data.subarray(i * grain, Math.min(data.length, (i + 1) * grain));
      expect(Buffer.from(c).equals(Buffer.from(await deflateGrain(plain)))).toBe(true);
      expect(Buffer.from(await inflateGrain(c, grain, { hostOffset: 0 })).equals(Buffer.from(plain))).toBe(true);
    }
  });

  it('inflation stops at one grain (a bomb) and refuses what is not zlib', async () => {
    await expect(inflateGrain(deflateSync(new Uint8Array(1 << 20)), 65536, { hostOffset: 0x1000 })).rejects.toThrow(/at 0x1000 inflates to more than one grain/);
    await expect(inflateGrain(new Uint8Array(100).fill(7), 65536, { hostOffset: 0 })).rejects.toThrow(/not a valid zlib stream/);
  });
});
