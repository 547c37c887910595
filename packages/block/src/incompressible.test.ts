import { deflateRawSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { looksIncompressible } from './incompressible.js';

/** Deterministic pseudo-random bytes (xorshift32). */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function text(n: number): Uint8Array {
  const words = 'the cluster table of a disk image holds offsets and lengths for every block it maps '.repeat(Math.ceil(n / 80));
  return new TextEncoder().encode(words).subarray(0, n);
}

describe('looksIncompressible', () => {
  it('says yes for random bytes and for deflate output, which deflate cannot shrink', () => {
    for (let seed = 1; seed <= 50; seed++) {
      const data = noise(65536, seed);
      expect(looksIncompressible(data)).toBe(true);
      // The oracle: deflate at qemu's level does not make it smaller.
      expect(deflateRawSync(data, { level: 6, windowBits: 12 }).length).toBeGreaterThanOrEqual(data.length);
    }
    const packed = gzipSync(noise(1 << 20, 3)).subarray(0, 65536);
    expect(looksIncompressible(packed)).toBe(true);
  });

  it('says no for zeros, text, a byte pattern, and random bytes with a run deflate would shrink', () => {
    expect(looksIncompressible(new Uint8Array(65536))).toBe(false);
    expect(looksIncompressible(text(65536))).toBe(false);
    expect(looksIncompressible(Uint8Array.from({ length: 65536 }, (_, i) => i & 0xff))).toBe(false);
    expect(looksIncompressible(Uint8Array.from({ length: 65536 }, (_, i) => (i * 7) & 0xff))).toBe(false);
    for (const [at, length] of [
      [0, 4608],
      [30_000, 4608],
      [65536 - 4608, 4608],
      [12_345, 6000],
    ] as const) {
      const data = noise(65536, 7);
      data.fill(0, at, at + length);
      expect(looksIncompressible(data)).toBe(false);
      data.set(text(length), at);
      expect(looksIncompressible(data)).toBe(false);
    }
    // A random 4 KiB block repeated: deflate shrinks it (window 32 KiB), and the slices see the repeats.
    const repeated = new Uint8Array(65536);
    for (let at = 0; at < repeated.length; at += 4096) repeated.set(noise(4096, 9), at);
    expect(looksIncompressible(repeated)).toBe(false);
  });

  it('never guesses for inputs under 8 KiB, and handles odd lengths', () => {
    expect(looksIncompressible(noise(4096, 1))).toBe(false);
    expect(looksIncompressible(noise(8191, 1))).toBe(false);
    expect(looksIncompressible(noise(8192, 1))).toBe(true);
    expect(looksIncompressible(noise(2 * 1024 * 1024 + 17, 5))).toBe(true);
    expect(looksIncompressible(noise(65536, 5).subarray(3, 3 + 40000))).toBe(true);
  });
});
