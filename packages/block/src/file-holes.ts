/**
 * The holes of an image's file, as the file system reports them
 * (`Storage.ranges`), asked a window at a time and kept for one extent
 * walk, and the data a format stores over them split off as zeros: what a
 * format's extents say when asked for `fileHoles`, as qemu's block status
 * asks the file below a format. A qcow2 preallocated with metadata, or a
 * fixed VHD or flat VMDK left sparse, then reads as zeros without a read.
 *
 * Asking once per block made the map of a fully allocated image quadratic
 * in its size: on tmpfs, SEEK_HOLE walks every page from the offset to the
 * next hole, which in such a file is its end, so each block's question
 * cost as much as the rest of the file (a 2 GiB image's map took longer
 * than qemu-img's whole conversion). One window answers for many blocks,
 * and a window that came back with no hole (or very few) makes the next
 * one twice as large.
 */
import type { Extent } from './disk.js';
import type { Storage, StorageRange } from './storage.js';
import { isAllZero } from './zero.js';

/** What the walk needs of a storage. */
export interface RangesSource {
  ranges(offset: number, length: number, limit?: number): Promise<StorageRange[]>;
}

const MiB = 1024 * 1024;
/** The first window's size in bytes of the file. */
const FIRST_WINDOW = 256 * MiB;
/** Windows never grow past this (the answer for a dense file is one run, whatever the size). */
const MAX_WINDOW = 64 * 1024 * MiB;
/** Windows never shrink below this. */
const MIN_WINDOW = 4 * MiB;
/** A window with more data runs than this makes the next one half as large (memory: 16 bytes a run). */
const MANY_RUNS = 8192;
/** The most ranges asked of the storage at once (a window of a dense file ends where they do). */
const RANGE_LIMIT = 2 * MANY_RUNS;
/** Windows kept: blocks placed out of order in the file (Hyper-V, compact) still find theirs. */
const KEPT_WINDOWS = 4;

interface Window {
  start: number;
  end: number;
  /** Data runs inside [start, end) as start, end pairs, sorted; the rest of the window is holes. */
  data: Float64Array;
}

/** The hole maps of read-only storages, kept while the storage is (see {@link FileHoles.of}). */
const readOnlyHoles = new WeakMap<Storage, Promise<FileHoles | undefined>>();

/**
 * What the file system says about the holes of one file, for one extent
 * walk (formats use it to answer `fileHoles`), or for every walk over a
 * read-only file.
 */
export class FileHoles {
  readonly #source: RangesSource;
  readonly #fileEnd: number;
  #windowSize: number;
  readonly #windows: Window[] = [];
  /** Questions asked of the storage so far (a test counts them). */
  asked = 0;

  /**
   * The holes of `storage` for one walk (for all of them, when it is
   * read-only), or undefined where it cannot tell or says it holds every
   * byte of its file (then there is no hole to find, and on tmpfs the
   * question alone walks every page up to the end).
   */
  static of(storage: Storage): Promise<FileHoles | undefined> {
    // A read-only storage keeps its holes: one map serves every walk over it (a backing file is walked once per
    // hole of the image above it: asked afresh each time, that was two system calls and a window per hole).
    if (!storage.readOnly) return FileHoles.#open(storage);
    let known = readOnlyHoles.get(storage);
    if (!known) readOnlyHoles.set(storage, (known = FileHoles.#open(storage)));
    return known;
  }

  static async #open(storage: Storage): Promise<FileHoles | undefined> {
    if (!storage.ranges) return undefined;
    const fileEnd = await storage.size();
    if (storage.allocatedBytes && (await storage.allocatedBytes()) >= fileEnd) return undefined;
    return new FileHoles({ ranges: (o, n, limit) => storage.ranges!(o, n, limit) }, fileEnd);
  }

  /**
   * `fileEnd`: the file's size when the walk started; a window never reaches
   * past it (a question that does is answered up to its own end).
   */
  constructor(source: RangesSource, fileEnd: number, firstWindow = FIRST_WINDOW) {
    this.#source = source;
    this.#fileEnd = fileEnd;
    this.#windowSize = Math.max(1, firstWindow);
  }

  /**
   * The holes of the file in [offset, offset + length), as sorted, disjoint
   * [start, end) pairs. What lies past the end of the file is a hole (it
   * reads as zeros).
   */
  async holes(offset: number, length: number): Promise<Array<[number, number]>> {
    return this.cachedHoles(offset, length) ?? holesIn(await this.#fetch(offset, offset + length), offset, offset + length);
  }

  /** What {@link holes} answers, without a promise, when a window already asked covers the range; else undefined. */
  cachedHoles(offset: number, length: number): Array<[number, number]> | undefined {
    const end = offset + length;
    const w = this.#windows.find((x) => x.start <= offset && end <= x.end);
    return w ? holesIn(w, offset, end) : undefined;
  }

  async #fetch(offset: number, end: number): Promise<Window> {
    let stop = Math.max(end, Math.min(offset + this.#windowSize, this.#fileEnd));
    const pairs: number[] = [];
    // Asked at most RANGE_LIMIT ranges at a time: an answer cut short past `end` ends the window there (a
    // window of a dense file stays a few thousand runs); one cut short before it is asked on from where it stopped.
    for (let at = offset; at < stop;) {
      this.asked++;
      const found = await this.#source.ranges(at, stop - at, RANGE_LIMIT);
      let reached = at;
      for (const r of found) {
        reached = Math.max(reached, r.offset + r.length);
        if (!r.data || r.length <= 0) continue;
        const a = Math.max(at, r.offset);
        const b = Math.min(stop, r.offset + r.length);
        if (b <= a) continue;
        // Storages may split one run in two; joined, the search below stays simple.
        if (pairs.length > 0 && pairs[pairs.length - 1] === a) pairs[pairs.length - 1] = b;
        else pairs.push(a, b);
      }
      // The whole window answered, or nothing (the rest is a hole).
      if (reached >= stop || reached <= at) break;
      if (reached >= end) {
        stop = reached;
        break;
      }
      at = reached;
    }
    const w: Window = { start: offset, end: stop, data: Float64Array.from(pairs) };
    const runs = pairs.length / 2;
    if (runs <= 2) this.#windowSize = Math.min(MAX_WINDOW, this.#windowSize * 2);
    else if (runs > MANY_RUNS) this.#windowSize = Math.max(MIN_WINDOW, Math.floor(this.#windowSize / 2));
    this.#windows.push(w);
    if (this.#windows.length > KEPT_WINDOWS) this.#windows.shift();
    return w;
  }
}

/** The holes of window `w` in [offset, end). */
function holesIn(w: Window, offset: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const runs = w.data;
  // The first data run that ends after `offset`.
  let lo = 0;
  let hi = runs.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (runs[2 * mid + 1]! <= offset) lo = mid + 1;
    else hi = mid;
  }
  let pos = offset;
  for (let i = lo; i < runs.length / 2 && pos < end; i++) {
    const start = runs[2 * i]!;
    if (start >= end) break;
    if (start > pos) out.push([pos, start]);
    pos = Math.max(pos, runs[2 * i + 1]!);
  }
  if (pos < end) out.push([pos, end]);
  return out;
}

/** The sector: what a hole must cover whole to make a zero extent (holes are pages, so this only matters at their edges). */
const SECTOR = 512;
/** The most bytes read beside a hole (a page of the common file systems). */
const EDGE = 4096;

/**
 * Data extent `e` (one layer's bytes, stored from `host` in `storage`, the
 * file `holes` describes) split where the file has holes: those parts, in
 * whole sectors, become `zero` extents (at `e`'s depth), the rest stays
 * data (a `hostOffset` in `e` follows each piece). `[e]` itself, without a
 * promise, when a window already asked shows no hole under it.
 *
 * A hole starts and ends on a page boundary, so the data beside it may end
 * (or start) with the zeros of a page written in part: those sectors (at
 * most a page's worth) are read and become zero too, so a copy finds no
 * zero edge to leave out and nothing to give back afterwards.
 *
 * All the pieces come in one array, however long `e` is: a walk over
 * extents that may be long takes them in slices ({@link fileHolePieces}).
 */
export function splitAtFileHoles(e: Extent, host: number, storage: Storage, holes: FileHoles): Extent[] | Promise<Extent[]> {
  const cached = holes.cachedHoles(host, e.length);
  if (cached) return cached.length === 0 ? [e] : zeroPieces(e, host, storage, cached);
  return holes.holes(host, e.length).then((h) => (h.length === 0 ? [e] : zeroPieces(e, host, storage, h)));
}

/**
 * The most bytes of an extent {@link fileHolePieces} splits at a time: a
 * slice of a file with a hole every other 4 KiB page is 16,384 pieces.
 */
export const FILE_HOLES_SLICE = 64 * 1024 * 1024;

/**
 * {@link splitAtFileHoles} for an extent of any length, in arrays of the
 * pieces of at most {@link FILE_HOLES_SLICE} bytes of it each: an extent of
 * gigabytes stored over millions of holes (a sparse copy of an image) is
 * not held in pieces all at once. Pieces on either side of a slice's edge
 * are not joined (the caller's merge joins them).
 */
export async function* fileHolePieces(e: Extent, host: number, storage: Storage, holes: FileHoles): AsyncGenerator<Extent[]> {
  for (let at = 0; at < e.length; at += FILE_HOLES_SLICE) {
    const n = Math.min(FILE_HOLES_SLICE, e.length - at);
    const slice: Extent = at === 0 && n === e.length ? e : { ...e, offset: e.offset + at, length: n };
    if (slice !== e && e.hostOffset !== undefined) slice.hostOffset = e.hostOffset + at;
    const pieces = splitAtFileHoles(slice, host + at, storage, holes);
    yield pieces instanceof Promise ? await pieces : pieces;
  }
}

async function zeroPieces(e: Extent, host: number, storage: Storage, holes: ReadonlyArray<readonly [number, number]>): Promise<Extent[]> {
  const from = e.offset;
  const to = e.offset + e.length;
  const depth = e.depth ?? 0;
  const data = (at: number, n: number): Extent => {
    const piece: Extent = { ...e, offset: at, length: n };
    if (e.hostOffset !== undefined) piece.hostOffset = e.hostOffset + (at - from);
    return piece;
  };
  const zero = (at: number, n: number): Extent => ({ offset: at, length: n, kind: 'zero', depth });
  const pieces: Extent[] = [];
  let pos = from;
  for (const [holeStart, holeEnd] of holes) {
    const start = Math.max(pos, Math.ceil((from + holeStart - host) / SECTOR) * SECTOR);
    const stop = Math.min(to, Math.floor((from + holeEnd - host) / SECTOR) * SECTOR);
    if (stop <= start) continue;
    if (start > pos) pieces.push(data(pos, start - pos));
    pieces.push(zero(start, stop - start));
    pos = stop;
  }
  if (pos < to) pieces.push(data(pos, to - pos));
  if (pieces.length === 1) return pieces;
  const out: Extent[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]!;
    if (p.kind !== 'data') {
      out.push(p);
      continue;
    }
    let head = p.offset;
    let tail = p.offset + p.length;
    if (i + 1 < pieces.length) tail -= await zeroSectors(storage, host + tail - from, Math.min(EDGE, tail - head), 'tail');
    if (i > 0 && tail > head) head += await zeroSectors(storage, host + head - from, Math.min(EDGE, tail - head), 'head');
    if (head > p.offset) out.push(zero(p.offset, head - p.offset));
    if (tail > head) out.push(data(head, tail - head));
    if (tail < p.offset + p.length) out.push(zero(Math.max(head, tail), p.offset + p.length - Math.max(head, tail)));
  }
  // Neighbouring zeros (a hole, then the zero sectors read beside it) leave as one extent.
  const merged: Extent[] = [];
  for (const p of out) {
    const last = merged.at(-1);
    if (last && last.kind === 'zero' && p.kind === 'zero' && last.offset + last.length === p.offset) last.length += p.length;
    else merged.push(p);
  }
  return merged;
}

/** How many whole zero sectors end (`tail`: the bytes before `at`) or start (`head`: from `at`) a `length`-byte window of the file. */
async function zeroSectors(storage: Storage, at: number, length: number, side: 'head' | 'tail'): Promise<number> {
  const bytes = new Uint8Array(length);
  const n = await storage.readInto(side === 'tail' ? at - length : at, bytes);
  if (n < length) bytes.fill(0, n);
  let zero = 0;
  for (let k = 0; k + SECTOR <= length; k += SECTOR) {
    const sector = side === 'tail' ? bytes.subarray(length - k - SECTOR, length - k) : bytes.subarray(k, k + SECTOR);
    if (!isAllZero(sector)) break;
    zero += SECTOR;
  }
  return zero;
}
