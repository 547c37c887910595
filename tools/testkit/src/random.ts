/** Deterministic pseudo-random bytes (xorshift32), for reproducible test data. */
export function seededBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
    if (i + 1 < length) out[i + 1] = (x >>> 8) & 0xff;
    if (i + 2 < length) out[i + 2] = (x >>> 16) & 0xff;
    if (i + 3 < length) out[i + 3] = (x >>> 24) & 0xff;
  }
  return out;
}

/**
 * Deterministic text-like bytes (words and line ends from a seeded
 * generator): compresses to about a third, but not to nothing, and
 * differs per seed. For compression tests.
 */
export function seededText(length: number, seed: number): Uint8Array {
  const words = ['qcow2', 'cluster', 'refcount', 'table', 'the', 'of', 'guest', 'host', 'snapshot', String(seed)];
  const out = new Uint8Array(length);
  const encoder = new TextEncoder();
  let x = seed;
  for (let at = 0; at < length;) {
    x = (x * 1103515245 + 12345) >>> 0;
    const w = encoder.encode(`${words[x % words.length]}${x % 7 === 0 ? '.\n' : ' '}`);
    out.set(w.subarray(0, length - at), at);
    at += w.length;
  }
  return out;
}
