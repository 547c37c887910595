import { seededBytes } from '@img/testkit';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { deflateGrain, deflateGrains, inflateGrain, vmdkCodecs } from './compression.js';
import { deflateGrainsInPool } from './node/codecs.js';

describe('grain compression (Node codecs)', () => {
  it('runs with node:zlib in the tests, as Node loads the package', () => {
    expect(vmdkCodecs().name).toBe('node');
  });

  it('the thread pool gives the same bytes as this thread, grain by grain, the last grain short', async () => {
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
    // The limit is exact: one grain inflates, one byte more does not (the output chunk is a byte past the limit).
    const whole = seededBytes(65536, 3);
    expect(Buffer.from(await inflateGrain(deflateSync(whole), 65536, { hostOffset: 0 })).equals(Buffer.from(whole))).toBe(true);
    await expect(inflateGrain(deflateSync(new Uint8Array(65537)), 65536, { hostOffset: 0x2000 })).rejects.toThrow(/at 0x2000 inflates to more than one grain/);
  });

  it('IMG_COMPRESS_THREADS=0 keeps compression on this thread; 1 compresses one grain at a time, to the same bytes', async () => {
    const saved = process.env.IMG_COMPRESS_THREADS;
    const data = seededBytes(4 * 65536, 4);
    try {
      process.env.IMG_COMPRESS_THREADS = '0';
      expect(await deflateGrainsInPool(data, 65536)).toBeUndefined();
      process.env.IMG_COMPRESS_THREADS = '1';
      const one = await deflateGrainsInPool(data, 65536);
      expect(one?.map((c) => Buffer.from(c).toString('hex'))).toEqual((await deflateGrains(data.slice(), 65536)).map((c) => Buffer.from(c).toString('hex')));
    } finally {
      if (saved === undefined) delete process.env.IMG_COMPRESS_THREADS;
      else process.env.IMG_COMPRESS_THREADS = saved;
    }
  });
});
