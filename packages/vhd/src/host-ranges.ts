/**
 * The holes of a VHD's file, as the file system reports them
 * (`Storage.ranges`), asked a window at a time and kept for one extent
 * walk. Asking once per block made the map of a fully allocated image
 * quadratic in its size: on tmpfs, SEEK_HOLE walks every page from the
 * offset to the next hole, which in such a file is its end, so each block's
 * question cost as much as the rest of the file (a 2 GiB image's map took
 * longer than qemu-img's whole conversion). One window answers for many
 * blocks, and a window that came back with no hole (or very few) makes the
 * next one twice as large.
 */
import type { StorageRange } from '@img/block';

/** What the walk needs of a storage. */
export interface RangesSource {
  ranges(offset: number, length: number): Promise<StorageRange[]>;
}

const MiB = 1024 * 1024;
/** The first window's size in bytes of the file. */
export const FIRST_WINDOW = 256 * MiB;
/** Windows never grow past this (the answer for a dense file is one run, whatever the size). */
const MAX_WINDOW = 64 * 1024 * MiB;
/** Windows never shrink below this. */
const MIN_WINDOW = 4 * MiB;
/** A window with more data runs than this makes the next one half as large (memory: 16 bytes a run). */
const MANY_RUNS = 8192;
/** Windows kept: blocks placed out of order in the file (Hyper-V, compact) still find theirs. */
const KEPT_WINDOWS = 4;

interface Window {
  start: number;
  end: number;
  /** Data runs inside [start, end) as start, end pairs, sorted; the rest of the window is holes. */
  data: Float64Array;
}

/** What the file system says about the holes of one file, for one walk. */
export class HostRanges {
  readonly #storage: RangesSource;
  readonly #fileEnd: number;
  #windowSize: number;
  readonly #windows: Window[] = [];
  /** Questions asked of the storage so far (a test counts them). */
  asked = 0;

  /**
   * `fileEnd`: the file's size when the walk started; a window never reaches
   * past it (a question that does is answered up to its own end).
   */
  constructor(storage: RangesSource, fileEnd: number, firstWindow = FIRST_WINDOW) {
    this.#storage = storage;
    this.#fileEnd = fileEnd;
    this.#windowSize = Math.max(1, firstWindow);
  }

  /**
   * The holes of the file in [offset, offset + length), as sorted, disjoint
   * [start, end) pairs. What lies past the end of the file is a hole (it
   * reads as zeros).
   */
  async holes(offset: number, length: number): Promise<Array<[number, number]>> {
    const end = offset + length;
    const w = this.#windows.find((x) => x.start <= offset && end <= x.end) ?? (await this.#fetch(offset, end));
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

  async #fetch(offset: number, end: number): Promise<Window> {
    const stop = Math.max(end, Math.min(offset + this.#windowSize, this.#fileEnd));
    this.asked++;
    const found = await this.#storage.ranges(offset, stop - offset);
    const pairs: number[] = [];
    for (const r of found) {
      if (!r.data || r.length <= 0) continue;
      const a = Math.max(offset, r.offset);
      const b = Math.min(stop, r.offset + r.length);
      if (b <= a) continue;
      // Storages may split one run in two; joined, the search above stays simple.
      if (pairs.length > 0 && pairs[pairs.length - 1] === a) pairs[pairs.length - 1] = b;
      else pairs.push(a, b);
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
