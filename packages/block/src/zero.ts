/**
 * Zero detection at memory speed: whole 32-bit words, early exit on the
 * first non-zero word (data blocks are usually rejected on their first word).
 */

/** True if every byte of `buf` is zero. */
export function isAllZero(buf: Uint8Array): boolean {
  const len = buf.length;
  let i = 0;
  // Head until 4-byte aligned, so the word view is legal.
  const head = Math.min(len, (4 - (buf.byteOffset & 3)) & 3);
  for (; i < head; i++) if (buf[i] !== 0) return false;
  const words = (len - i) >>> 2;
  if (words > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset + i, words);
    for (let j = 0; j < words; j++) if (w[j] !== 0) return false;
    i += words * 4;
  }
  for (; i < len; i++) if (buf[i] !== 0) return false;
  return true;
}

/** A run inside a buffer: `[start, end)` and whether it is all zeros. */
export interface ZeroRun {
  start: number;
  end: number;
  zero: boolean;
}

/**
 * Splits `buf` into alternating data and zero runs. Runs are classified
 * in blocks of `granule` bytes (aligned to `base`, the buffer's position in
 * the disk, so results do not depend on how a copy was chunked); a zero run
 * shorter than `minZeroRun` is folded into the data around it. A zero run
 * touching either end of the buffer is kept whatever its length, since it
 * may continue in the neighbouring chunk.
 */
export function findZeroRuns(buf: Uint8Array, minZeroRun: number, granule = 512, base = 0): ZeroRun[] {
  const runs: ZeroRun[] = [];
  if (buf.length === 0) return runs;
  if (minZeroRun <= 0) return [{ start: 0, end: buf.length, zero: false }];
  let pos = 0;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((base + pos) / granule) + 1) * granule - base);
    const zero = isAllZero(buf.subarray(pos, next));
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.end = next;
    else runs.push({ start: pos, end: next, zero });
    pos = next;
  }
  // Fold short interior zero runs into data.
  const out: ZeroRun[] = [];
  for (const [i, r] of runs.entries()) {
    const edge = i === 0 || i === runs.length - 1;
    const zero = r.zero && (edge || r.end - r.start >= minZeroRun);
    const last = out[out.length - 1];
    if (last && last.zero === zero) last.end = r.end;
    else out.push({ start: r.start, end: r.end, zero });
  }
  return out;
}
