/**
 * The refcount table of an open image and its refcount blocks: the table
 * loaded and checked, the blocks read through a cache, the blocks that
 * cannot be trusted, and the primitive writes (a range of a block, one
 * table entry). Which clusters to allocate is refcount-frontier.ts's
 * business, new blocks and tables refcount-growth.ts's, and Refcounts
 * (refcount.ts) puts them together.
 */
import { readU32Be, writeU64Be, corrupt, hex } from '@img/block';
import type { Storage } from '@img/block';
import { L2Cache } from './l2-cache.js';
import type { RefcountBatch } from './pending-writes.js';
import { MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { MAX_HOST_OFFSET } from './mapping.js';
import { OVERLAP, overlapKindName, type OverlapMap } from './overlap.js';
import { readRefcount, refcountTableEntryOffset } from './refcount-entry.js';

const FORMAT = 'qcow2';

/**
 * Refcount table entries: offsets of refcount blocks (0: none). A block
 * unaligned or outside the file is ERR_IMG_CORRUPT. With `forCheck`, an
 * entry whose range lies wholly past the end of the file reads as none
 * instead: check counts it and repair 'all' clears it, as qemu-img check
 * counts it and its repair drops it. Any other open refuses it: a write
 * that grows the file could put data where the entry points (seed 1003
 * case 81 of the rerun: qemu-img check then counted the block twice).
 */
function parseTable(bytes: Uint8Array, clusterSize: number, refcountBits: number, fileSize: number, tableOffset: number, file: string | undefined, forCheck: boolean): number[] {
  const out: number[] = new Array(bytes.length / 8);
  const perBlock = (clusterSize * 8) / refcountBits;
  const fileClusters = Math.ceil(fileSize / clusterSize);
  for (let i = 0; i < out.length; i++) {
    const hi = readU32Be(bytes, i * 8);
    const lo = readU32Be(bytes, i * 8 + 4);
    const offset = refcountTableEntryOffset(hi, lo);
    if (offset !== 0 && (offset % clusterSize !== 0 || offset + clusterSize > fileSize || offset > MAX_HOST_OFFSET)) {
      if (forCheck && i * perBlock >= fileClusters) {
        out[i] = 0;
        continue;
      }
      throw corrupt(FORMAT, file, `refcount block at ${hex(offset)} (refcount table entry ${i} at ${hex(tableOffset + i * 8)}) is unaligned or lies past the end of the file`, {
        field: 'refcount table entry',
        offset: tableOffset + i * 8,
        actual: offset,
      });
    }
    out[i] = offset;
  }
  return out;
}

/** Where an image's refcount table is and what it counts. */
export interface RefcountTableOptions {
  storage: Storage;
  file: string;
  clusterSize: number;
  refcountBits: number;
  tableOffset: number;
  tableClusters: number;
  fileSize: number;
  /**
   * The image's metadata map: refcount table and blocks are added to it,
   * and the allocator never returns a cluster it holds.
   */
  overlap?: OverlapMap;
  /** Opened by check: refcount table entries past the file with a bad block read as none (see parseTable). */
  forCheck?: boolean;
}

/** The refcount table of an open image, its cached refcount blocks, and the blocks it cannot trust. */
export class RefcountTable {
  readonly clusterSize: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  #o: RefcountTableOptions;
  #table: number[];
  #tableOffset: number;
  #tableClusters: number;
  #blocks: L2Cache;
  /**
   * One past the last cluster of the file when it was opened (on a block
   * device: one past the last cluster in use, see {@link endOnDevice}).
   */
  #loadEnd: number;
  /**
   * Refcount table indices whose block cannot be trusted: missing although
   * clusters of its range lie in the file, or pointing at other metadata
   * (the refcount table itself, an L1 or L2 table, the header). Clusters
   * of such a range that lie in the file count as used; the first change
   * in the range replaces the block by a new one that says so.
   */
  #untrusted = new Set<number>();
  /** What made each untrusted block untrusted (for the problem report). */
  #untrustedWhy = new Map<number, string>();

  private constructor(o: RefcountTableOptions, table: number[]) {
    this.#o = o;
    this.clusterSize = o.clusterSize;
    this.bits = o.refcountBits;
    this.perBlock = (o.clusterSize * 8) / o.refcountBits;
    this.#table = table;
    this.#tableOffset = o.tableOffset;
    this.#tableClusters = o.tableClusters;
    this.#blocks = new L2Cache(Math.max(4, Math.floor((4 * 1024 * 1024) / o.clusterSize)));
    this.#loadEnd = Math.ceil(o.fileSize / o.clusterSize);
    const map = o.overlap;
    map?.add(OVERLAP.REFCOUNT_TABLE, o.tableOffset, o.tableClusters * o.clusterSize);
    const covering = Math.max(table.length, Math.ceil(this.#loadEnd / this.perBlock));
    for (let t = 0; t < covering; t++) {
      const at = table[t] ?? 0;
      if (at === 0) {
        // On a block device the image ends well before the device does: endOnDevice() looks again once it knows where.
        if (t * this.perBlock < this.#loadEnd && !o.storage.fixedSize) this.#distrust(t, 'it is missing although clusters of its range lie in the file');
        continue;
      }
      const held = map?.kindsAt(at / o.clusterSize) ?? 0;
      if (held) {
        this.#distrust(t, `its refcount block at ${hex(at)} is the ${overlapKindName(held)}`);
        table[t] = 0;
        continue;
      }
      map?.add(OVERLAP.REFCOUNT_BLOCK, at, o.clusterSize);
    }
  }

  /** Loads the refcount table (bounded by qemu's 8 MiB) and checks every entry. */
  static async load(o: RefcountTableOptions): Promise<RefcountTable> {
    const bytes = o.tableClusters * o.clusterSize;
    if (bytes > MAX_REFCOUNT_TABLE_BYTES) throw corrupt(FORMAT, o.file, `refcount table of ${o.tableClusters} clusters exceeds 8 MiB`, { field: 'refcount_table_clusters', offset: 56 });
    const raw = new Uint8Array(bytes);
    const n = await o.storage.readInto(o.tableOffset, raw);
    if (n < bytes) throw corrupt(FORMAT, o.file, `refcount table at ${hex(o.tableOffset)} is cut short by the end of the file`, { field: 'refcount_table_offset', offset: 48 });
    return new RefcountTable(o, parseTable(raw, o.clusterSize, o.refcountBits, o.fileSize, o.tableOffset, o.file, o.forCheck ?? false));
  }

  /**
   * On a block device the file's size is the device's, not the image's:
   * the clusters past the image hold stale bytes. The image ends after its
   * last cluster in use (qemu's view: it allocates by refcounts alone), so
   * the allocation frontier goes there (this answers it), and new
   * clusters, refcount blocks and tables go right after the image as they
   * would in a file, not past the end of the device. A missing refcount
   * block below that end is distrusted as it would be in a file of that
   * size.
   */
  async endOnDevice(): Promise<number> {
    const end = (await this.lastInUse()) + 1;
    this.#loadEnd = Math.max(1, end);
    for (let t = 0; t * this.perBlock < this.#loadEnd; t++) {
      if ((this.#table[t] ?? 0) === 0) this.#distrust(t, 'it is missing although clusters of its range are in use');
    }
    return this.#loadEnd;
  }

  /** Adds the refcount table and the trusted refcount blocks to `map`. */
  mapInto(map: OverlapMap): void {
    map.add(OVERLAP.REFCOUNT_TABLE, this.#tableOffset, this.#tableClusters * this.clusterSize);
    for (const at of this.#table) if (at !== 0) map.add(OVERLAP.REFCOUNT_BLOCK, at, this.clusterSize);
  }

  #distrust(t: number, why: string): void {
    this.#untrusted.add(t);
    this.#untrustedWhy.set(t, why);
  }

  /** Whether the block of table entry `t` could not be trusted at open and has not been replaced since. */
  isUntrusted(t: number): boolean {
    return this.#untrusted.has(t);
  }

  /** Refcount table entries that could not be trusted, and why (problems found at open, not yet repaired). */
  get untrustedBlocks(): ReadonlyArray<{ index: number; reason: string }> {
    return [...this.#untrustedWhy].filter(([t]) => this.#untrusted.has(t)).map(([index, reason]) => ({ index, reason }));
  }

  /** One past the last cluster of the image when it was opened: an untrusted block's clusters below it count as used. */
  get loadEnd(): number {
    return this.#loadEnd;
  }

  get tableOffset(): number {
    return this.#tableOffset;
  }

  get tableClusters(): number {
    return this.#tableClusters;
  }

  /** Refcount block offsets, by table index. */
  get table(): readonly number[] {
    return this.#table;
  }

  /** Refcount block `tableIndex` (through the cache), or undefined where the table has none. */
  async block(tableIndex: number): Promise<Uint8Array | undefined> {
    const offset = this.#table[tableIndex] ?? 0;
    if (offset === 0) return undefined;
    return this.#blocks.get(offset, async () => {
      const b = new Uint8Array(this.clusterSize);
      await this.#o.storage.readInto(offset, b);
      return b;
    });
  }

  /**
   * Refcount block `t` if it can be read without I/O: the cached block,
   * null where the table has none (every count 0), undefined where the
   * block is not cached or cannot be trusted (ask {@link get}).
   */
  peekBlock(t: number): Uint8Array | null | undefined {
    if (this.#untrusted.size !== 0 && this.#untrusted.has(t)) return undefined;
    const offset = this.#table[t] ?? 0;
    return offset === 0 ? null : this.#blocks.peek(offset);
  }

  /** The refcount of cluster `index`. */
  async get(index: number): Promise<number> {
    const t = Math.floor(index / this.perBlock);
    if (this.#untrusted.has(t)) return index < this.#loadEnd ? 1 : 0;
    const block = await this.block(t);
    return block ? readRefcount(block, index % this.perBlock, this.bits) : 0;
  }

  /** Whether every cluster of [first, first + count) has refcount 0 (an untrusted block's clusters in the file count as used, as in {@link get}). */
  async allFree(first: number, count: number): Promise<boolean> {
    const per = this.perBlock;
    for (let i = first; i < first + count;) {
      const t = Math.floor(i / per);
      const stop = Math.min(first + count, (t + 1) * per);
      if (this.#untrusted.has(t)) {
        if (i < this.#loadEnd) return false;
      } else {
        const block = await this.block(t);
        if (block) for (let j = i; j < stop; j++) if (readRefcount(block, j % per, this.bits) !== 0) return false;
      }
      i = stop;
    }
    return true;
  }

  /**
   * The last cluster whose refcount is not 0, or -1: where a preallocating
   * resize starts its refcount area (qemu's qcow2_get_last_cluster, which
   * looks down from the end of the file; this looks down from the last
   * refcount block, so that counts a crash left past the end of the file
   * are seen). A block that could not be trusted counts its clusters in
   * the file as used, as {@link get} does.
   */
  async lastInUse(): Promise<number> {
    const per = this.perBlock;
    for (let t = Math.max(this.#table.length, Math.ceil(this.#loadEnd / per)) - 1; t >= 0; t--) {
      if (this.#untrusted.has(t)) {
        if (t * per < this.#loadEnd) return Math.min(this.#loadEnd, (t + 1) * per) - 1;
        continue;
      }
      const block = await this.block(t);
      if (!block) continue;
      for (let k = per - 1; k >= 0; k--) if (readRefcount(block, k, this.bits) !== 0) return t * per + k;
    }
    return -1;
  }

  /** Writes entries [fromEntry, toEntry) of block `t` (the bytes that hold them) from `block`. */
  async writeBlockRange(t: number, block: Uint8Array, fromEntry: number, toEntry: number): Promise<void> {
    const from = Math.floor((fromEntry * this.bits) / 8);
    const to = Math.ceil((toEntry * this.bits) / 8);
    const at = this.#table[t]!;
    this.#o.overlap?.check(this.#o.file, at + from, to - from, OVERLAP.REFCOUNT_BLOCK);
    await this.#o.storage.write(at + from, block.subarray(from, to));
  }

  /**
   * Holds block `t` in memory until {@link writeBatch} writes `batch`:
   * were the cache to drop it meanwhile (a long search for free clusters
   * reads many blocks), the block would be read again without the counts
   * the batch changed, and they would be lost.
   */
  pinForBatch(batch: RefcountBatch, t: number, block: Uint8Array): void {
    if (!batch.pinned.has(t)) {
      this.#blocks.pin(this.#table[t]!, block);
      batch.pinned.set(t, this.#table[t]!);
    }
  }

  /** Writes each block range a batch recorded, once, with the counts as they are now; empties the batch. */
  async writeBatch(batch: RefcountBatch): Promise<void> {
    try {
      const writes: Promise<void>[] = [];
      for (const [t, [from, to]] of batch.ranges) {
        const block = await this.block(t);
        if (block) writes.push(this.writeBlockRange(t, block, from, to));
      }
      batch.ranges.clear();
      await Promise.all(writes);
    } finally {
      for (const at of batch.pinned.values()) this.#blocks.unpin(at);
      batch.pinned.clear();
    }
  }

  /** Keeps a refcount block just written at `offset` in the cache. */
  cacheBlock(offset: number, block: Uint8Array): void {
    this.#blocks.put(offset, block);
  }

  /** Points table entry `t` at the refcount block at `offset` (in memory; trusted from now on): {@link writeEntry} writes it. */
  setEntry(t: number, offset: number): void {
    this.#table[t] = offset;
    this.#untrusted.delete(t);
  }

  /** Writes table entry `t` as it is in memory. */
  writeEntry(t: number): Promise<void> {
    const entry = new Uint8Array(8);
    writeU64Be(entry, 0, this.#table[t]!);
    this.#o.overlap?.check(this.#o.file, this.#tableOffset + t * 8, 8, OVERLAP.REFCOUNT_TABLE);
    return this.#o.storage.write(this.#tableOffset + t * 8, entry);
  }

  /** Replaces the entries by those of a new table (blocks are looked up there from now on); {@link relocate} follows once it is written. */
  replaceEntries(table: number[]): void {
    this.#table = table;
  }

  /** The table now lives at `offset`, `clusters` long (the header is switched to it next). */
  relocate(offset: number, clusters: number): void {
    this.#tableOffset = offset;
    this.#tableClusters = clusters;
  }

  /**
   * Takes over a refcount table (and its blocks) that another writer laid
   * out and a header switch made current: the table is read again, cached
   * blocks are forgotten.
   */
  async switchTable(tableOffset: number, tableClusters: number, fileSize: number): Promise<void> {
    const raw = new Uint8Array(tableClusters * this.clusterSize);
    const n = await this.#o.storage.readInto(tableOffset, raw);
    if (n < raw.length) throw corrupt(FORMAT, this.#o.file, `refcount table at ${hex(tableOffset)} is cut short by the end of the file`, { field: 'refcount_table_offset', offset: 48 });
    this.#table = parseTable(raw, this.clusterSize, this.bits, fileSize, tableOffset, this.#o.file, this.#o.forCheck ?? false);
    this.#tableOffset = tableOffset;
    this.#tableClusters = tableClusters;
    this.#blocks.clear();
  }

  /** Forgets cached blocks (after a repair rewrote them). */
  clearCache(): void {
    this.#blocks.clear();
  }
}
