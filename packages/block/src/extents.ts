/**
 * Tools over extent sequences. Formats produce raw runs (often one per
 * cluster); these merge, clip, check and re-chunk them.
 */
import type { Disk, Extent, ExtentOptions } from './disk.js';

type Extents = Iterable<Extent> | AsyncIterable<Extent>;

function canMerge(a: Extent, b: Extent): boolean {
  if (a.kind !== b.kind || a.depth !== b.depth || a.file !== b.file) return false;
  if (a.offset + a.length !== b.offset) return false;
  if (a.hostOffset === undefined && b.hostOffset === undefined) return true;
  if (a.hostOffset === undefined || b.hostOffset === undefined) return false;
  return a.hostOffset + a.length === b.hostOffset;
}

/** Merges adjacent extents that have the same kind, depth, file and contiguous host offsets. */
export async function* mergeExtents(extents: Extents): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  for await (const e of extents) {
    if (e.length === 0) continue;
    if (pending && canMerge(pending, e)) {
      pending.length += e.length;
      continue;
    }
    if (pending) yield pending;
    pending = { ...e };
  }
  if (pending) yield pending;
}

/**
 * Merges arrays of extents as {@link mergeExtents} merges single ones,
 * across the arrays too: each array out holds the merged extents so far
 * but the last, which waits for the next array (it may go on there). No
 * array out is empty. For formats that find their extents an array at a
 * time (Disk.extentBatches).
 */
export async function* mergeExtentBatches(batches: AsyncIterable<readonly Extent[]>): AsyncGenerator<Extent[]> {
  let pending: Extent | undefined;
  for await (const batch of batches) {
    const out: Extent[] = [];
    for (const e of batch) {
      if (e.length === 0) continue;
      if (pending && canMerge(pending, e)) {
        pending.length += e.length;
        continue;
      }
      if (pending) out.push(pending);
      pending = { ...e };
    }
    if (out.length) yield out;
  }
  if (pending) yield [pending];
}

/** The extents of arrays of them, one at a time (a format's extents() over its extentBatches()). */
export async function* flattenExtentBatches(batches: AsyncIterable<readonly Extent[]>): AsyncGenerator<Extent> {
  for await (const batch of batches) yield* batch;
}

/** Each extent alone in an array: extents() as extentBatches() hands them over. */
export async function* singleExtentBatches(extents: Extents): AsyncGenerator<Extent[]> {
  for await (const e of extents) yield [e];
}

/**
 * A disk's extents in arrays: its {@link Disk.extentBatches} where it has
 * them, else its extents() one per array.
 *
 * @example
 * ```ts
 * for await (const batch of diskExtentBatches(disk, { hostOffsets: true })) {
 *   for (const e of batch) if (e.kind === 'data') dataBytes += e.length;
 * }
 * ```
 */
export function diskExtentBatches(disk: Disk, options?: ExtentOptions): AsyncIterable<readonly Extent[]> {
  return disk.extentBatches ? disk.extentBatches(options) : singleExtentBatches(disk.extents(options));
}

/** Clips extents to `[offset, offset + length)`, dropping what lies outside. */
export async function* clipExtents(extents: Extents, offset: number, length: number): AsyncGenerator<Extent> {
  const end = offset + length;
  for await (const e of extents) {
    const s = Math.max(e.offset, offset);
    const t = Math.min(e.offset + e.length, end);
    if (t <= s) {
      if (e.offset >= end) break;
      continue;
    }
    const out: Extent = { ...e, offset: s, length: t - s };
    if (e.hostOffset !== undefined) out.hostOffset = e.hostOffset + (s - e.offset);
    yield out;
  }
}

/** Collects an extent sequence into an array. */
export async function collectExtents(extents: Extents): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of extents) out.push(e);
  return out;
}

/** Problems found by validateExtentCover; empty when the cover is valid. */
export function validateExtentCover(extents: readonly Extent[], offset: number, length: number, { requireMerged = true }: { requireMerged?: boolean } = {}): string[] {
  const problems: string[] = [];
  let pos = offset;
  let prev: Extent | undefined;
  for (const [i, e] of extents.entries()) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.length <= 0) {
      problems.push(`extent ${i} has a bad offset/length (${e.offset}+${e.length})`);
    }
    if (e.kind !== 'data' && e.kind !== 'zero' && e.kind !== 'hole') problems.push(`extent ${i} has unknown kind ${String(e.kind)}`);
    if (e.offset !== pos) problems.push(`extent ${i} starts at ${e.offset}, expected ${pos} (${e.offset > pos ? 'gap' : 'overlap'})`);
    if (requireMerged && prev && canMerge(prev, e)) problems.push(`extents ${i - 1} and ${i} should have been merged`);
    pos = e.offset + e.length;
    prev = e;
  }
  if (pos !== offset + length) problems.push(`extents end at ${pos}, expected ${offset + length}`);
  return problems;
}

/** Throws an Error listing the problems if the cover is not valid. For tests. */
export function assertExtentCover(extents: readonly Extent[], offset: number, length: number, options?: { requireMerged?: boolean }): void {
  const problems = validateExtentCover(extents, offset, length, options);
  if (problems.length) throw new Error(`invalid extent cover:\n  ${problems.slice(0, 10).join('\n  ')}`);
}

/**
 * Splits extents so that no piece is longer than `chunkSize` and pieces of
 * long extents start on multiples of `chunkSize` (aligned I/O).
 */
export async function* chunkExtents(extents: Extents, chunkSize: number): AsyncGenerator<Extent> {
  if (!(chunkSize > 0)) throw new RangeError('chunkSize must be positive');
  for await (const e of extents) yield* chunkExtent(e, chunkSize);
}

/**
 * One extent as chunkExtents splits it: `e` itself when it lies within one
 * chunk, else pieces that start on multiples of `chunkSize`. Synchronous,
 * for loops that take extents one at a time.
 */
export function chunkExtent(e: Extent, chunkSize: number): Extent[] {
  if (!(chunkSize > 0)) throw new RangeError('chunkSize must be positive');
  if (!(e.length > 0)) return [];
  const end = e.offset + e.length;
  if (Math.floor(e.offset / chunkSize) === Math.floor((end - 1) / chunkSize)) return [e];
  const pieces: Extent[] = [];
  for (let pos = e.offset; pos < end;) {
    const next = Math.min(end, (Math.floor(pos / chunkSize) + 1) * chunkSize);
    const piece: Extent = { ...e, offset: pos, length: next - pos };
    if (e.hostOffset !== undefined) piece.hostOffset = e.hostOffset + (pos - e.offset);
    pieces.push(piece);
    pos = next;
  }
  return pieces;
}

/**
 * Validates and normalises an ExtentOptions range for a disk of `size` bytes.
 * Formats call this at the top of extents().
 */
export function extentRange(options: ExtentOptions | undefined, size: number): { start: number; end: number } {
  const start = options?.offset ?? 0;
  const length = options?.length ?? size - start;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > size) {
    throw new RangeError(`extents range ${start}+${length} is outside a disk of ${size} bytes`);
  }
  return { start, end: start + length };
}

/** Sums extent lengths by kind. */
export async function summarizeExtents(extents: Extents): Promise<Record<'data' | 'zero' | 'hole', number>> {
  const totals = { data: 0, zero: 0, hole: 0 };
  for await (const e of extents) totals[e.kind] += e.length;
  return totals;
}

/** All extents of a disk as an array (convenience for tools and tests). */
export function diskExtents(disk: Disk, options?: ExtentOptions): Promise<Extent[]> {
  return collectExtents(disk.extents(options));
}

/**
 * The extents of [from, to) an image does not hold itself, for a format
 * whose unallocated ranges fall through to a parent (a backing file): the
 * parent's extents one layer down (`depth` + 1), a hole past the parent's
 * end; or a hole at depth 0 when there is no parent or only the top layer
 * is asked for (`topOnly`).
 *
 * @example
 * ```ts
 * yield* parentExtents(this.parent, gapStart, gapEnd, options);
 * ```
 */
export async function* parentExtents(parent: Disk | undefined, from: number, to: number, options: ExtentOptions = {}): AsyncGenerator<Extent> {
  if (options.topOnly || !parent) {
    yield { offset: from, length: to - from, kind: 'hole', depth: 0 };
    return;
  }
  const stop = Math.min(to, parent.size);
  if (from < stop) {
    for await (const e of parent.extents({ offset: from, length: stop - from, hostOffsets: options.hostOffsets ?? false, fileHoles: options.fileHoles ?? false })) {
      yield { ...e, depth: (e.depth ?? 0) + 1 };
    }
  }
  if (stop < to) yield { offset: Math.max(from, stop), length: to - Math.max(from, stop), kind: 'hole', depth: 1 };
}
