/**
 * Zero detection at memory speed: whole 32-bit words read four at a time,
 * early exit on the first non-zero word (data blocks are usually rejected
 * on their first word), and no allocation per block: findZeroRuns walks one
 * word view of the whole buffer instead of a subarray per 512 bytes, which
 * is what used to make zero scanning cost as much in GC as in scanning.
 */

/** A 32-bit word view of `buf` from its first 4-aligned byte, or undefined if it has no whole word. */
function wordView(buf: Uint8Array): { words: Uint32Array; skew: number } | undefined {
  const skew = (4 - (buf.byteOffset & 3)) & 3;
  if (buf.length - skew < 4) return undefined;
  const n = (buf.length - skew) >>> 2;
  return { words: new Uint32Array(buf.buffer, buf.byteOffset + skew, n), skew };
}

/** True if `buf[start, end)` is all zeros; `view` is wordView(buf). */
function rangeIsZero(buf: Uint8Array, view: { words: Uint32Array; skew: number } | undefined, start: number, end: number): boolean {
  let i = start;
  if (view) {
    // Bytes up to the first word boundary (relative to the buffer's aligned start).
    const firstWord = Math.max(0, Math.ceil((start - view.skew) / 4));
    const headEnd = Math.min(end, view.skew + firstWord * 4);
    for (; i < headEnd; i++) if (buf[i] !== 0) return false;
    const lastWord = Math.min(view.words.length, Math.floor((end - view.skew) / 4));
    if (lastWord > firstWord) {
      const w = view.words;
      let j = firstWord;
      // The first word alone: most data blocks stop here.
      if (w[j] !== 0) return false;
      j++;
      const stop4 = lastWord - ((lastWord - j) & 3);
      for (; j < stop4; j += 4) if ((w[j]! | w[j + 1]! | w[j + 2]! | w[j + 3]!) !== 0) return false;
      for (; j < lastWord; j++) if (w[j] !== 0) return false;
      i = view.skew + lastWord * 4;
    }
  }
  for (; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/** True if every byte of `buf` is zero. */
export function isAllZero(buf: Uint8Array): boolean {
  return rangeIsZero(buf, wordView(buf), 0, buf.length);
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
  const view = wordView(buf);
  let pos = 0;
  let last: ZeroRun | undefined;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((base + pos) / granule) + 1) * granule - base);
    const zero = rangeIsZero(buf, view, pos, next);
    if (last && last.zero === zero) last.end = next;
    else runs.push((last = { start: pos, end: next, zero }));
    pos = next;
  }
  if (runs.length === 1) return runs;
  // Fold short interior zero runs into data.
  const out: ZeroRun[] = [];
  for (let i = 0; i < runs.length; i++) {
    const r = runs[i]!;
    const edge = i === 0 || i === runs.length - 1;
    const zero = r.zero && (edge || r.end - r.start >= minZeroRun);
    const prev = out[out.length - 1];
    if (prev && prev.zero === zero) prev.end = r.end;
    else out.push({ start: r.start, end: r.end, zero });
  }
  return out;
}
