import { seededBytes } from '@img/testkit';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { nativeInflateAvailable } from '@img/block/node';
import { deflateGrain, deflateGrains, inflateGrain, inflateGrainsInto, setVmdkCodecs, vmdkCodecs } from './compression.js';
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

  it('stores grains deflate cannot shrink (zlib level 0) and compresses the rest at level 6, on either thread', async () => {
    const grain = 65536;
    const data = new Uint8Array(3 * grain);
    data.set(seededBytes(grain, 5), 0); // random: stored
    data.set(seededBytes(grain, 6), grain);
    data.fill(0, grain + 20_000, grain + 30_000); // random with a zero run: compressed
    data.fill(0x61, 2 * grain); // one value: compressed
    // The zlib header's FLEVEL bits: 0 for level 0, 2 for the default level 6.
    const level = (c: Uint8Array) => c[1]! >> 6;
    for (const compressed of [await deflateGrains(data, grain), await Promise.all([0, 1, 2].map((i) => deflateGrain(data.subarray(i * grain, (i + 1) * grain))))]) {
      expect(compressed.map(level)).toEqual([0, 2, 2]);
      expect(compressed[0]!.length).toBeLessThanOrEqual(grain + 16);
      expect(compressed[1]!.length).toBeLessThan(grain - 9000);
      for (const [i, c] of compressed.entries()) expect(Buffer.from(await inflateGrain(c, grain, { hostOffset: 0 })).equals(Buffer.from(data.subarray(i * grain, (i + 1) * grain)))).toBe(true);
    }
  });

  it('many grains at once (the native helper where it loaded) fill the same bytes as one at a time, zero-filling a short grain', async () => {
    if (process.env.CI) expect(nativeInflateAvailable()).toBe(true);
    const grain = 65536;
    const plains = [seededBytes(grain, 11), new Uint8Array(grain).fill(0x61), seededBytes(5000, 12), seededBytes(grain, 13)];
    const streams = plains.map((p) => new Uint8Array(deflateSync(p)));
    const all = new Uint8Array(streams.reduce((n, z) => n + z.length + 7, 0));
    let at = 0;
    const inputs = streams.map((z) => {
      all.set(z, at);
      at += z.length + 7; // bytes after each stream, as in a padded grain
      return all.subarray(at - z.length - 7, at);
    });
    const fill = async (codecsOn: boolean) => {
      const out = new Uint8Array(plains.length * grain).fill(0xee);
      const saved = codecsOn ? undefined : setVmdkCodecs({ ...vmdkCodecs(), inflateGrains: undefined });
      try {
        await inflateGrainsInto(
          inputs.map((input, i) => ({ input, out: out.subarray(i * grain, (i + 1) * grain), ctx: { hostOffset: i * 512 } })),
          grain,
        );
      } finally {
        if (saved) setVmdkCodecs(saved);
      }
      return out;
    };
    const many = await fill(true);
    const one = await fill(false);
    expect(Buffer.from(many).equals(Buffer.from(one))).toBe(true);
    plains.forEach((p, i) => expect(Buffer.from(many.subarray(i * grain, i * grain + p.length)).equals(Buffer.from(p))).toBe(true));
    expect(many.subarray(2 * grain + 5000, 3 * grain).every((b) => b === 0)).toBe(true);
  });

  it('many grains at once: a bomb, a stream that is not zlib and one cut short are corrupt, naming the first bad grain', async () => {
    const grain = 65536;
    const good = new Uint8Array(deflateSync(seededBytes(grain, 14)));
    const cases: [Uint8Array, RegExp][] = [
      [new Uint8Array(deflateSync(new Uint8Array(grain + 1))), /grain at 0x200 inflates to more than one grain/],
      [new Uint8Array(100).fill(7), /grain at 0x200 is not a valid zlib stream/],
      [good.subarray(0, good.length - 9), /grain at 0x200 is not a valid zlib stream/],
    ];
    for (const [bad, pattern] of cases) {
      const all = new Uint8Array(good.length * 2 + bad.length);
      all.set(good, 0);
      all.set(bad, good.length);
      all.set(good, good.length + bad.length);
      const out = new Uint8Array(3 * grain);
      const jobs = [all.subarray(0, good.length), all.subarray(good.length, good.length + bad.length), all.subarray(good.length + bad.length)].map((input, i) => ({ input, out: out.subarray(i * grain, (i + 1) * grain), ctx: { file: 'x.vmdk', hostOffset: i * 512 } }));
      await expect(inflateGrainsInto(jobs, grain)).rejects.toThrow(pattern);
      await expect(inflateGrainsInto(jobs, grain)).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
      // The same sentence as grain by grain (node:zlib's reason: "incorrect header check", "unexpected end of file").
      const many = await inflateGrainsInto(jobs, grain).catch((e: Error) => e.message);
      const saved = setVmdkCodecs({ ...vmdkCodecs(), inflateGrains: undefined });
      const one = await inflateGrainsInto(jobs, grain)
        .catch((e: Error) => e.message)
        .finally(() => setVmdkCodecs(saved));
      expect(many).toBe(one);
    }
  });
});
