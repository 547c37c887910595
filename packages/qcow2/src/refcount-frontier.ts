/**
 * The allocation frontier (one past the last cluster in use) and the
 * search for free clusters below it, with the hints that keep the search
 * from rescanning the file. Reads counts through the refcount table
 * (refcount-table.ts) and never hands out a cluster the overlap map holds;
 * the counts themselves change through Refcounts (refcount.ts).
 */
import type { OverlapMap } from './overlap.js';
import { readRefcount } from './refcount-entry.js';
import type { RefcountTable } from './refcount-table.js';

/** Where new clusters go: the frontier of an open image and its free-space hints. */
export class AllocationFrontier {
  #table: RefcountTable;
  #overlap: OverlapMap | undefined;
  /** One past the last cluster in use (the allocation frontier). */
  #end: number;
  /** No free cluster lies below this one. */
  #freeHint = 0;
  /** No free run of more than one cluster starts below this one (except clusters freed since). */
  #runHint = 0;

  constructor(table: RefcountTable, overlap: OverlapMap | undefined, end: number) {
    this.#table = table;
    this.#overlap = overlap;
    this.#end = end;
  }

  /** One past the highest cluster index allocated so far. */
  get end(): number {
    return this.#end;
  }

  /** Moves the frontier up to `endCluster` (never down). */
  noteEnd(endCluster: number): void {
    if (endCluster > this.#end) this.#end = endCluster;
  }

  /** Cluster `index` dropped to refcount 0: the searches start at or below it again. */
  noteFree(index: number): void {
    if (index < this.#freeHint) this.#freeHint = index;
    if (index < this.#runHint) this.#runHint = index;
  }

  /** Forgets the free-space hints (the refcount table was switched). */
  forgetHints(): void {
    this.#freeHint = 0;
    this.#runHint = 0;
  }

  /** The last cluster of [first, first + count) the overlap map holds, or -1. */
  heldIn(first: number, count: number): number {
    return this.#overlap?.lastIn(first, first + count) ?? -1;
  }

  /** The last cluster of [first, first + count) at or past the allocation frontier whose refcount is not 0, or -1. */
  async countedPastEnd(first: number, count: number): Promise<number> {
    for (let c = first + count - 1; c >= Math.max(first, this.#end); c--) if ((await this.#table.get(c)) !== 0) return c;
    return -1;
  }

  /**
   * The allocation frontier moved past clusters the overlap map holds
   * (metadata a corrupt image points past the end of the file): new
   * refcount blocks and tables never land on them.
   */
  endPastHeld(): number {
    const map = this.#overlap;
    if (map) while (map.kindsAt(this.#end)) this.#end++;
    return this.#end;
  }

  /** Whether the allocator may hand out cluster `index` with refcount `count`: never metadata the map holds. */
  #free(index: number, count: number): boolean {
    return count === 0 && !(this.#overlap?.kindsAt(index) ?? 0);
  }

  /**
   * The first cluster of a free run of `count` clusters at or after the
   * hint, or the end of the file (a free run touching the end continues
   * into new clusters). Single clusters and runs keep separate hints so
   * that a lone free cluster does not make every multi-cluster search
   * rescan the file.
   */
  async findFree(count: number): Promise<number> {
    const table = this.#table;
    const per = table.perBlock;
    const from = count === 1 ? this.#freeHint : Math.max(this.#freeHint, this.#runHint);
    let run = 0;
    let runStart = from;
    let firstFree = -1;
    let i = from;
    while (i < this.#end) {
      const t = Math.floor(i / per);
      const untrusted = table.isUntrusted(t);
      const block = untrusted ? undefined : await table.block(t);
      const stop = Math.min(this.#end, (t + 1) * per);
      const base = t * per;
      const nextZero = block ? zeroFinder(block, table.bits) : undefined;
      for (; i < stop; i++) {
        if (run === 0 && nextZero) {
          // Outside a run, straight to the next count of 0: a full image's walk is one native search per block.
          const k = nextZero(i - base);
          if (k < 0 || base + k >= stop) {
            i = stop;
            break;
          }
          i = base + k;
        }
        const refs = untrusted ? (i < table.loadEnd ? 1 : 0) : block ? readRefcount(block, i % per, table.bits) : 0;
        if (this.#free(i, refs)) {
          if (firstFree < 0) firstFree = i;
          if (run === 0) runStart = i;
          if (++run === count) return this.#found(count, runStart, firstFree);
        } else {
          run = 0;
        }
      }
    }
    return this.#found(count, run > 0 ? runStart : this.#end, firstFree);
  }

  #found(count: number, start: number, firstFree: number): number {
    if (count === 1) this.#freeHint = start + 1;
    else {
      // Nothing below `start` held a long enough run; single clusters may still fit below.
      this.#runHint = start + count;
      if (firstFree === start) this.#freeHint = Math.max(this.#freeHint, start + count);
    }
    return start;
  }
}

/**
 * The index of the next refcount of 0 in `block` at or after an entry, or -1, searched natively where the
 * width has a typed array of its own (8, 16, 32, 64 bits: a count is 0 when all its bytes are); undefined for
 * narrower widths.
 */
function zeroFinder(block: Uint8Array, bits: number): ((from: number) => number) | undefined {
  const { buffer, byteOffset, length } = block;
  switch (bits) {
    case 8:
      return (from) => block.indexOf(0, from);
    case 16: {
      if (byteOffset % 2) return undefined;
      const view = new Uint16Array(buffer, byteOffset, length / 2);
      return (from) => view.indexOf(0, from);
    }
    case 32: {
      if (byteOffset % 4) return undefined;
      const view = new Uint32Array(buffer, byteOffset, length / 4);
      return (from) => view.indexOf(0, from);
    }
    case 64: {
      if (byteOffset % 8) return undefined;
      const view = new BigUint64Array(buffer, byteOffset, length / 8);
      return (from) => view.indexOf(0n, from);
    }
    default:
      return undefined;
  }
}
