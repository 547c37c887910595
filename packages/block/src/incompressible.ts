/**
 * A cheap guess, before paying for deflate, at whether a cluster or grain
 * is data deflate cannot shrink (already compressed or encrypted files,
 * random bytes). Deflate spends as long on such data as on any other (about
 * 1.3 ms per 64 KiB at level 6 on this project's machines, level 1 no
 * faster) and then stores it: a writer that guesses right skips that work
 * (qcow2 stores the cluster uncompressed, as qemu-img does when deflate does
 * not shrink it; a VMDK grain is written as a stored zlib stream).
 */

/**
 * Whether `bytes` looks like data deflate cannot shrink. Two checks, both
 * must pass: 16 slices of 256 bytes spread evenly over it hold byte values
 * spread as random bytes spread them (neither much more unevenly, as in
 * text, tables or runs of one value, nor much more evenly, as in a
 * counter); and 32 bytes in its middle do not come again one period later,
 * for periods of 512 bytes to 16 KiB (blocks repeated at a sector or page
 * multiple). A run of one value, text or a table longer than about a
 * fifteenth of the input plus 256 bytes covers a whole slice and makes the
 * answer false (shorter ones usually do too). Inputs under 8 KiB are never
 * guessed at (false). The guess can be wrong for data that repeats itself
 * at other distances; such data is then stored instead of compressed, which
 * costs space, never correctness.
 *
 * Self-contained (no imports, no state outside the call), so a worker can
 * embed its source.
 *
 * @example
 * ```ts
 * if (!looksIncompressible(cluster)) compressed = deflate(cluster);
 * ```
 */
export function looksIncompressible(bytes: Uint8Array): boolean {
  const samples = 16;
  const slice = 256;
  // Chi-square bounds for the sampled byte counts against a uniform distribution: 255 degrees of
  // freedom, so random bytes give 255 on average with a standard deviation of about 23. Far below
  // is too even to be chance (a counter, a repeated 0..255 pattern: deflate shrinks those).
  const low = 180;
  const high = 330;
  if (bytes.length < 8192) return false;
  const counts = new Uint16Array(256);
  const step = Math.floor((bytes.length - slice) / (samples - 1));
  for (let s = 0; s < samples; s++) {
    const at = s * step;
    for (let i = at; i < at + slice; i++) counts[bytes[i]!]!++;
  }
  const expected = (samples * slice) / 256;
  let chi = 0;
  for (let v = 0; v < 256; v++) {
    const d = counts[v]! - expected;
    chi += d * d;
  }
  const x = chi / expected;
  if (!(x > low && x < high)) return false;
  // Blocks repeated at a sector or page multiple (deflate finds those; slices a multiple of the period
  // apart would see it in the counts, others not): 32 bytes compared one period apart.
  for (let period = 512; period <= 16384 && period + 32 <= bytes.length; period *= 2) {
    const at = (bytes.length - period - 32) >> 1;
    let same = true;
    for (let i = 0; i < 32 && same; i++) same = bytes[at + i] === bytes[at + period + i];
    if (same) return false;
  }
  return true;
}
