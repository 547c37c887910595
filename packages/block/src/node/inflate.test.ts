import { seededBytes } from '@img/testkit';
import { deflateRawSync, deflateSync } from 'node:zlib';
import { describe, expect, it, vi } from 'vitest';
import { INFLATE_BAD, INFLATE_OK, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, inflateBlocks, nativeInflateAvailable } from './inflate.js';
import { nativeStatus } from './native-loader.js';

const native = nativeStatus().loaded;
if (!native && process.env.CI) throw new Error('CI: the native helper must load for these tests');

/** Concatenates `parts` into one buffer and answers the subarray of each. */
function packed(parts: Uint8Array[]): Uint8Array[] {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  return parts.map((p) => {
    all.set(p, at);
    at += p.length;
    return all.subarray(at - p.length, at);
  });
}

describe.skipIf(!native)('inflateBlocks: many streams inflated by the native helper', () => {
  it('is available where the helper loaded, and nativeStatus says so', () => {
    expect(nativeInflateAvailable()).toBe(true);
    expect(nativeStatus().features.inflate).toBe(true);
  });

  it('inflates zlib streams into place as node:zlib does, over several batches, and ignores bytes after a stream', async () => {
    const grain = 65536;
    const plains = Array.from({ length: 37 }, (_, i) => (i % 3 === 0 ? seededBytes(grain, i) : i % 3 === 1 ? new Uint8Array(grain).fill(i) : seededBytes(1000 + i, i)));
    const streams = plains.map((p, i) => {
      const z = deflateSync(p);
      // Every fourth stream is followed by bytes that are not part of it (a padded grain).
      return i % 4 === 0 ? Buffer.concat([z, Buffer.from('padding after the stream')]) : z;
    });
    const inputs = packed(streams.map((z) => new Uint8Array(z)));
    const out = new Uint8Array(plains.length * grain).fill(0xee);
    const blocks = inputs.map((input, i) => ({ input, out: out.subarray(i * grain, (i + 1) * grain) }));
    const got = await inflateBlocks(blocks, 15, 3);
    expect(got).toEqual(plains.map((p) => ({ status: INFLATE_OK, bytes: p.length })));
    plains.forEach((p, i) => {
      expect(Buffer.from(out.subarray(i * grain, i * grain + p.length)).equals(Buffer.from(p))).toBe(true);
      // Past what a short stream produced, the output is left as it was.
      if (p.length < grain) expect(out[i * grain + p.length]).toBe(0xee);
    });
  });

  it('answers per block why a stream has no output: bad, too large by one byte, cut short; raw deflate with negative windowBits', async () => {
    const whole = seededBytes(4096, 9);
    const z = new Uint8Array(deflateSync(whole));
    const inputs = packed([z, new Uint8Array(100).fill(7), new Uint8Array(deflateSync(new Uint8Array(4097))), z.subarray(0, z.length - 5), new Uint8Array(deflateRawSync(whole)), z]);
    const out = new Uint8Array(6 * 4096);
    const blocks = inputs.map((input, i) => ({ input, out: out.subarray(i * 4096, (i + 1) * 4096) }));
    const got = await inflateBlocks(blocks, 15);
    expect(got?.map((r) => r.status)).toEqual([INFLATE_OK, INFLATE_BAD, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, INFLATE_BAD, INFLATE_OK]);
    // zlib's own reasons, as node:zlib's errors carry them; what a cut-short stream wrote so far.
    expect(got?.[1]?.message).toBe('incorrect header check');
    expect(got?.[2]?.bytes).toBe(4096);
    expect(got?.[3]?.bytes).toBeGreaterThan(0);
    expect(got?.[3]?.bytes).toBeLessThan(4096);
    expect(got?.[0]?.message).toBeUndefined();
    expect(Buffer.from(out.subarray(0, 4096)).equals(Buffer.from(whole))).toBe(true);
    const raw = packed([new Uint8Array(deflateRawSync(whole)), z]);
    const out2 = new Uint8Array(2 * 4096);
    const rawGot = await inflateBlocks(
      [
        { input: raw[0]!, out: out2.subarray(0, 4096) },
        { input: raw[1]!, out: out2.subarray(4096) },
      ],
      -15,
    );
    expect(rawGot?.map((r) => [r.status, r.bytes])).toEqual([
      [INFLATE_OK, 4096],
      [INFLATE_BAD, 0],
    ]);
    expect(Buffer.from(out2.subarray(0, 4096)).equals(Buffer.from(whole))).toBe(true);
  });

  it('declines (undefined, nothing done) when the inputs or outputs lie in different buffers, and when there is nothing to do', () => {
    const z = new Uint8Array(deflateSync(new Uint8Array(10)));
    const z2 = new Uint8Array(deflateSync(new Uint8Array(10)));
    const out = new Uint8Array(20);
    expect(
      inflateBlocks(
        [
          { input: z, out: out.subarray(0, 10) },
          { input: z2, out: out.subarray(10) },
        ],
        15,
      ),
    ).toBeUndefined();
    expect(inflateBlocks([], 15)).toBeUndefined();
  });

  it('IMG_NATIVE_INFLATE=0 turns it off, and nativeStatus (what img doctor prints) says so', async () => {
    const saved = process.env.IMG_NATIVE_INFLATE;
    process.env.IMG_NATIVE_INFLATE = '0';
    try {
      vi.resetModules();
      const loader = await import('./native-loader.js');
      const inflate = await import('./inflate.js');
      expect(loader.nativeStatus().features.inflate).toBe(false);
      expect(inflate.nativeInflateAvailable()).toBe(false);
      const z = new Uint8Array(deflateSync(new Uint8Array(10)));
      expect(inflate.inflateBlocks([{ input: z, out: new Uint8Array(10) }], 15)).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.IMG_NATIVE_INFLATE;
      else process.env.IMG_NATIVE_INFLATE = saved;
      vi.resetModules();
    }
  });
});
