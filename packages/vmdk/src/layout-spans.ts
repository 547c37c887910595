/**
 * The grains and grain tables of one sparse extent by where they lie in its
 * file, for finding two that share bytes: check's grain-overlap,
 * grain-shared and table-overlap problems, and a writable open's refusal.
 *
 * Memory is 8 bytes per allocated grain and nothing per grain besides: each
 * grain's byte start is one number in a chunk of a Float64Array. A 1 TiB
 * extent of 64 KiB grains (16 M of them) takes 128 MiB here, where a Set of
 * grain offsets passed V8's limit of 2^24 entries and failed the check
 * ("Set maximum size exceeded") after a gigabyte of memory. Tables are few
 * (one per directory entry) and kept apart. Every span is a sector-aligned
 * start plus its kind in the low bits, so one numeric order sorts them all
 * (a grain before a table at the same start). Grains added in file order, as
 * every writer lays out a fresh image, are not sorted at all; otherwise each
 * chunk is sorted in place and the chunks are merged as the sweep reads them.
 */
import { hex } from '@img/block';
import { SECTOR } from './sparse-header.js';

const GRAIN = 0;
const TABLE = 1;
const REDUNDANT_TABLE = 2;

/** The first chunk's length (small images allocate little), doubling up to MAX_CHUNK. */
const FIRST_CHUNK = 1024;
const MAX_CHUNK = 1 << 20;

/** One overlap found by {@link LayoutSpans.overlaps}. */
export interface SpanOverlap {
  /** The later span's start, and what it is ('grain', 'grain table', 'redundant grain table'). */
  offset: number;
  what: string;
  /** Two grain table entries name the same grain (the later span starts where an earlier grain does). */
  shared: boolean;
  message: string;
}

function what(kind: number): string {
  return kind === GRAIN ? 'grain' : kind === TABLE ? 'grain table' : 'redundant grain table';
}

/** A read position in one sorted run of spans (a chunk, the grains in file order across chunks, or the tables). */
interface Cursor {
  runs: readonly Float64Array[];
  run: number;
  at: number;
  value: number;
}

function advance(c: Cursor): boolean {
  for (;;) {
    const r = c.runs[c.run]!;
    if (c.at < r.length) {
      c.value = r[c.at++]!;
      return true;
    }
    if (++c.run >= c.runs.length) return false;
    c.at = 0;
  }
}

function cursor(runs: readonly Float64Array[]): Cursor | undefined {
  const c: Cursor = { runs, run: 0, at: 0, value: 0 };
  return advance(c) ? c : undefined;
}

/** Whether `a` is in ascending order. */
function ascending(a: Float64Array): boolean {
  for (let i = 1; i < a.length; i++) if (a[i]! < a[i - 1]!) return false;
  return true;
}

/** The grains and grain tables of one sparse extent, added one by one, then swept once for overlaps. */
export class LayoutSpans {
  readonly #grainBytes: number;
  readonly #tableBytes: number;
  readonly #tables: number[] = [];
  readonly #full: Float64Array[] = [];
  #chunk = new Float64Array(FIRST_CHUNK);
  #used = 0;
  /** Every grain so far was added at or after the one before it. */
  #inOrder = true;
  #last = -1;

  constructor(grainBytes: number, tableBytes: number) {
    this.#grainBytes = grainBytes;
    this.#tableBytes = tableBytes;
  }

  /** A grain table (or a redundant one) at byte `start` (sector-aligned). */
  addTable(start: number, redundant: boolean): void {
    this.#tables.push(start + (redundant ? REDUNDANT_TABLE : TABLE));
  }

  /** A grain at byte `start` (sector-aligned). */
  addGrain(start: number): void {
    if (this.#used === this.#chunk.length) {
      this.#full.push(this.#chunk);
      this.#chunk = new Float64Array(Math.min(MAX_CHUNK, this.#chunk.length * 2));
      this.#used = 0;
    }
    if (start < this.#last) this.#inOrder = false;
    this.#last = start;
    this.#chunk[this.#used++] = start;
  }

  /**
   * The first `limit` overlaps among everything added: the sweep goes
   * through the spans by start and reports each one that starts before an
   * earlier one ends (a grain is `grainBytes` long, a table `tableBytes`).
   * Call it once: it sorts the chunks in place.
   */
  overlaps(limit: number): SpanOverlap[] {
    const grains = [...this.#full, this.#chunk.subarray(0, this.#used)];
    const cursors: Cursor[] = [];
    const add = (runs: Float64Array[]) => {
      const c = cursor(runs);
      if (c) cursors.push(c);
    };
    if (this.#inOrder) add(grains);
    else
      for (const g of grains) {
        if (!ascending(g)) g.sort();
        add([g]);
      }
    add([Float64Array.from(this.#tables).sort()]);
    const out: SpanOverlap[] = [];
    let end = 0;
    let previous = -1;
    // The cursors as a binary min-heap on their current value (a handful of them: one per chunk out of order).
    const heap = cursors;
    const less = (i: number, j: number) => heap[i]!.value < heap[j]!.value;
    const swap = (i: number, j: number) => {
      const t = heap[i]!;
      heap[i] = heap[j]!;
      heap[j] = t;
    };
    const down = (i: number) => {
      for (;;) {
        const l = 2 * i + 1;
        const m = l + 1 < heap.length && less(l + 1, l) ? l + 1 : l;
        if (l >= heap.length || !less(m, i)) return;
        swap(i, m);
        i = m;
      }
    };
    for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
    while (heap.length > 0) {
      const top = heap[0]!;
      const v = top.value;
      if (!advance(top)) {
        heap[0] = heap[heap.length - 1]!;
        heap.pop();
      }
      if (heap.length > 1) down(0);
      const kind = v % SECTOR;
      const at = v - kind;
      if (previous >= 0 && at < end) {
        const before = previous % SECTOR;
        const beforeAt = previous - before;
        const shared = kind === GRAIN && before === GRAIN && beforeAt === at;
        const message = shared ? `the grain at ${hex(at)} is named by two grain table entries` : `the ${what(kind)} at ${hex(at)} overlaps the ${what(before)} at ${hex(beforeAt)}`;
        out.push({ offset: at, what: what(kind), shared, message });
        if (out.length >= limit) break;
      }
      const spanEnd = at + (kind === GRAIN ? this.#grainBytes : this.#tableBytes);
      if (spanEnd > end) {
        end = spanEnd;
        previous = v;
      }
    }
    return out;
  }
}
