/**
 * Refcounts (spec: "Host cluster management"): the refcount structures of
 * an open, writable image and the cluster allocator built on them, put
 * together from the refcount table and its blocks (refcount-table.ts),
 * the allocation frontier (refcount-frontier.ts) and the growth of blocks
 * and tables (refcount-growth.ts). This module changes counts.
 *
 * Refcount changes are written through at once (a block is written back
 * whenever it changes), so that callers can order them against other
 * metadata with flush barriers: refcounts are raised before anything
 * points at a cluster and lowered only after nothing does.
 */
import { corrupt, hex } from '@img/block';
import { RefcountBatch, type PendingWrites } from './pending-writes.js';
import type { OverlapMap } from './overlap.js';
import { readRefcount, writeRefcount } from './refcount-entry.js';
import { RefcountTable, type RefcountTableOptions } from './refcount-table.js';
import { AllocationFrontier } from './refcount-frontier.js';
import { ensureRefcountBlock, reserveRefcountArea, type RefcountGrowthContext, type RefcountGrowthOptions } from './refcount-growth.js';

const FORMAT = 'qcow2';

/** Where an image's refcount structures are, and how their changes reach the image. */
export type RefcountOptions = RefcountTableOptions & RefcountGrowthOptions;

/** The refcount structures of an open, writable image, and its cluster allocator. */
export class Refcounts {
  readonly clusterSize: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  readonly maxRefcount: number;
  #o: RefcountOptions;
  #table: RefcountTable;
  #frontier: AllocationFrontier;
  #growth: RefcountGrowthContext;

  private constructor(o: RefcountOptions, table: RefcountTable, end: number) {
    this.#o = o;
    this.clusterSize = o.clusterSize;
    this.bits = o.refcountBits;
    this.perBlock = (o.clusterSize * 8) / o.refcountBits;
    this.maxRefcount = o.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** o.refcountBits - 1;
    this.#table = table;
    this.#frontier = new AllocationFrontier(table, o.overlap, end);
    this.#growth = { o, table, frontier: this.#frontier, add: (first, count, delta) => this.add(first, count, delta) };
  }

  /**
   * Loads the refcount table (bounded by qemu's 8 MiB) and checks every
   * entry. The allocation frontier starts at the end of the file, or on a
   * block device after the image's last cluster in use (see
   * {@link RefcountTable.endOnDevice}).
   */
  static async load(o: RefcountOptions): Promise<Refcounts> {
    const table = await RefcountTable.load(o);
    const end = o.storage.fixedSize ? await table.endOnDevice() : Math.ceil(o.fileSize / o.clusterSize);
    return new Refcounts(o, table, end);
  }

  /** Adds the refcount table and the trusted refcount blocks to `map`. */
  mapInto(map: OverlapMap): void {
    this.#table.mapInto(map);
  }

  /** Refcount table entries that could not be trusted, and why (problems found at open, not yet repaired). */
  get untrustedBlocks(): ReadonlyArray<{ index: number; reason: string }> {
    return this.#table.untrustedBlocks;
  }

  get tableOffset(): number {
    return this.#table.tableOffset;
  }

  get tableClusters(): number {
    return this.#table.tableClusters;
  }

  /** Refcount block offsets, by table index (a copy). */
  get table(): readonly number[] {
    return this.#table.table;
  }

  /** One past the highest cluster index allocated so far. */
  get endCluster(): number {
    return this.#frontier.end;
  }

  /** The refcount of cluster `index`. */
  get(index: number): Promise<number> {
    return this.#table.get(index);
  }

  /** Refcount block `t` if readable without I/O (see RefcountTable.peekBlock). */
  peekBlock(t: number): Uint8Array | null | undefined {
    return this.#table.peekBlock(t);
  }

  /**
   * Adds `delta` to the refcounts of clusters [first, first+count). Blocks
   * are created where needed; each changed block is written once. With
   * `pending`, the block writes are started but not awaited: they are
   * added there, for a caller that has other I/O to overlap
   * with them and awaits them all before its next barrier. (Each write
   * sends the block as it is when the write runs, so overlapping writes of
   * one block still leave the latest counts on disk.) With a
   * {@link RefcountBatch}, nothing is written: the changed ranges are
   * recorded there for {@link writeBatch}, which the caller runs before
   * anything that depends on the counts reaches the disk.
   */
  async add(first: number, count: number, delta: number, pending?: PendingWrites | RefcountBatch): Promise<void> {
    const table = this.#table;
    let i = first;
    const end = first + count;
    while (i < end) {
      const t = Math.floor(i / this.perBlock);
      const stop = Math.min(end, (t + 1) * this.perBlock);
      if (delta > 0 || table.isUntrusted(t)) await ensureRefcountBlock(this.#growth, t);
      const block = await table.block(t);
      if (!block) {
        throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${i} (${hex(i * this.clusterSize)}) would drop below zero: no refcount block covers it`, { field: 'refcount', offset: i * this.clusterSize });
      }
      for (let j = i; j < stop; j++) {
        const k = j % this.perBlock;
        const v = readRefcount(block, k, this.bits) + delta;
        if (v < 0) throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${j} (${hex(j * this.clusterSize)}) would drop below zero`, { field: 'refcount', offset: j * this.clusterSize });
        if (v > this.maxRefcount) throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${j} would exceed ${this.maxRefcount}`, { field: 'refcount', offset: j * this.clusterSize });
        writeRefcount(block, k, this.bits, v);
        if (v === 0) this.#frontier.noteFree(j);
      }
      if (pending instanceof RefcountBatch) {
        // Held in memory until writeBatch (see pinForBatch).
        table.pinForBatch(pending, t, block);
        pending.note(t, i % this.perBlock, stop - t * this.perBlock);
        i = stop;
        continue;
      }
      const written = table.writeBlockRange(t, block, i % this.perBlock, stop - t * this.perBlock);
      // The caller settles `pending` before its barrier (PendingWrites holds a failure until then).
      if (pending) pending.add(written);
      else await written;
      i = stop;
    }
  }

  /**
   * Sets the refcount of one cluster (repairs). A block that could not be
   * trusted at open is replaced first (by one that counts every cluster of
   * its range in the file as used), so the value reaches the disk even
   * where the untrusted block already answered `value`.
   */
  async set(index: number, value: number): Promise<void> {
    const t = Math.floor(index / this.perBlock);
    if (this.#table.isUntrusted(t)) await ensureRefcountBlock(this.#growth, t);
    const current = await this.get(index);
    if (current !== value) await this.add(index, 1, value - current);
  }

  /** Writes each block range a batch recorded, once, with the counts as they are now; empties the batch. */
  writeBatch(batch: RefcountBatch): Promise<void> {
    return this.#table.writeBatch(batch);
  }

  /**
   * Allocates `count` contiguous clusters (refcount 1) and returns the host
   * offset of the first. Reuses free clusters inside the file before
   * growing it. `pending`: as in {@link add}.
   */
  async allocate(count: number, pending?: PendingWrites | RefcountBatch): Promise<number> {
    const frontier = this.#frontier;
    let first = await frontier.findFree(count);
    for (;;) {
      // Past the end of the file the refcounts say nothing: metadata there (a table pointing past the end) still counts.
      let used = frontier.heldIn(first, count);
      // So do refcounts raised past the end by a crash before the file grew over the clusters (a leak, not free space).
      if (used < 0) used = await frontier.countedPastEnd(first, count);
      if (used < 0) break;
      frontier.noteEnd(used + 1);
      first = await frontier.findFree(count);
    }
    frontier.noteEnd(first + count);
    await this.add(first, count, 1, pending);
    frontier.noteEnd(first + count);
    return first * this.clusterSize;
  }

  /**
   * Allocates exactly clusters [first, first+count) (refcount 1) if every
   * one of them is free; answers false (and changes nothing) otherwise.
   * Compressed data that runs on past the cluster it starts in uses it.
   * `batch`: as in {@link add}.
   */
  async allocateAt(first: number, count: number, batch?: RefcountBatch): Promise<boolean> {
    if (this.#frontier.heldIn(first, count) >= 0 || !(await this.#table.allFree(first, count))) return false;
    this.#frontier.noteEnd(first + count);
    await this.add(first, count, 1, batch);
    return true;
  }

  /** The last cluster whose refcount is not 0, or -1 (see {@link RefcountTable.lastInUse}). */
  lastInUse(): Promise<number> {
    return this.#table.lastInUse();
  }

  /** qemu's refcount area for a preallocating resize (see {@link reserveRefcountArea}). */
  reserveArea(start: number, additional: number): Promise<number | undefined> {
    return reserveRefcountArea(this.#growth, start, additional);
  }

  /** Drops one reference from each cluster in [offset, offset + bytes). */
  async release(offset: number, bytes: number): Promise<void> {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + bytes - 1) / this.clusterSize);
    await this.add(first, last - first + 1, -1);
  }

  /**
   * Takes over a refcount table (and its blocks) that another writer laid
   * out and a header switch made current (snapshot-commit.ts): the table is
   * read again, cached blocks and the free-space hints are forgotten.
   */
  async switchTable(tableOffset: number, tableClusters: number, fileSize: number): Promise<void> {
    await this.#table.switchTable(tableOffset, tableClusters, fileSize);
    this.#frontier.forgetHints();
  }

  /** Forgets cached blocks (after a repair rewrote them). */
  clearCache(): void {
    this.#table.clearCache();
  }

  /** Marks cluster indices up to `end` as in use by the file (after external growth). */
  noteEnd(endCluster: number): void {
    this.#frontier.noteEnd(endCluster);
  }
}
