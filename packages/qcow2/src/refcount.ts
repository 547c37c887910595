/**
 * Refcounts (spec: "Host cluster management"): the refcount table, its
 * refcount blocks, and the cluster allocator built on them.
 *
 * Refcount changes are written through at once (a block is written back
 * whenever it changes), so that callers can order them against other
 * metadata with flush barriers: refcounts are raised before anything
 * points at a cluster and lowered only after nothing does.
 */
import { concatBytes, readU32Be, writeU32Be, corrupt, hex, unsupported, writeU64Be } from '@img/block';
import type { Storage } from '@img/block';
import { L2Cache } from './l2-cache.js';
import { RefcountBatch, type PendingWrites } from './pending-writes.js';
import { MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { MAX_HOST_OFFSET } from './mapping.js';
import { OVERLAP, overlapKindName, type OverlapMap } from './overlap.js';

const FORMAT = 'qcow2';
/** New refcount blocks of a refcount area go out in writes of at most this many bytes. */
const AREA_PIECE = 4 * 1024 * 1024;

/**
 * The refcount block offset of a refcount table entry (spec: "Refcount
 * table": bits 9-63, 0 for none). Unlike L1 and L2 entries the top byte
 * is part of the offset: an entry with any of bits 56-63 set names a block
 * far past any file (inexact above 2^53, which only compares as past the end).
 */
export function refcountTableEntryOffset(hi: number, lo: number): number {
  return hi * 0x1_0000_0000 + ((lo & ~0x1ff) >>> 0);
}

/** Reads entry `index` of a refcount block with `bits`-wide entries. */
export function readRefcount(block: Uint8Array, index: number, bits: number): number {
  if (bits === 16) return (block[index * 2]! << 8) | block[index * 2 + 1]!;
  if (bits < 8) {
    const bit = index * bits;
    return (block[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
  }
  if (bits === 8) return block[index]!;
  if (bits === 32) return readU32Be(block, index * 4);
  // 64-bit: values past 2^53 cannot be real counts; report them as the largest safe value.
  const hi = readU32Be(block, index * 8);
  const lo = readU32Be(block, index * 8 + 4);
  return hi > 0x1fffff ? Number.MAX_SAFE_INTEGER : hi * 0x1_0000_0000 + lo;
}

/** Writes entry `index` of a refcount block. */
export function writeRefcount(block: Uint8Array, index: number, bits: number, value: number): void {
  if (bits === 16) {
    block[index * 2] = value >>> 8;
    block[index * 2 + 1] = value & 0xff;
  } else if (bits < 8) {
    const bit = index * bits;
    const mask = ((1 << bits) - 1) << (bit & 7);
    block[bit >> 3] = (block[bit >> 3]! & ~mask) | ((value << (bit & 7)) & mask);
  } else if (bits === 8) {
    block[index] = value;
  } else if (bits === 32) {
    writeU32Be(block, index * 4, value);
  } else {
    writeU64Be(block, index * 8, value);
  }
}

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

/**
 * Refcount blocks and refcount table clusters that count `clusters`
 * clusters plus themselves: qemu's fixed-point loop (its refcount-area
 * sizing without the generous margin), shared by create, measure and
 * the refcount area of a preallocating resize.
 */
export function refcountFixedPoint(clusters: number, clusterSize: number, perBlock: number): { blocks: number; table: number } {
  const perTableCluster = clusterSize / 8;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return { blocks, table };
}

export interface RefcountOptions {
  storage: Storage;
  file: string;
  clusterSize: number;
  refcountBits: number;
  tableOffset: number;
  tableClusters: number;
  fileSize: number;
  /** Called after the refcount table moved (the header must be rewritten). */
  onTableMoved: (offset: number, clusters: number) => Promise<void>;
  /** Flush barrier between dependent metadata writes (a no-op with lazy refcounts). */
  barrier: () => Promise<void>;
  /**
   * The image's metadata map: refcount table and blocks are added to it,
   * and the allocator never returns a cluster it holds.
   */
  overlap?: OverlapMap;
  /** Opened by check: refcount table entries past the file with a bad block read as none (see parseTable). */
  forCheck?: boolean;
}

/** The refcount structures of an open, writable image, and its cluster allocator. */
export class Refcounts {
  readonly clusterSize: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  readonly maxRefcount: number;
  #o: RefcountOptions;
  #table: number[];
  #tableOffset: number;
  #tableClusters: number;
  #blocks: L2Cache;
  /** One past the last cluster in use (the allocation frontier). */
  #end: number;
  /** No free cluster lies below this one. */
  #freeHint = 0;
  /** No free run of more than one cluster starts below this one (except clusters freed since). */
  #runHint = 0;
  /**
   * One past the last cluster of the file when it was opened (on a block
   * device: one past the last cluster in use, see {@link load}).
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

  private constructor(o: RefcountOptions, table: number[]) {
    this.#o = o;
    this.clusterSize = o.clusterSize;
    this.bits = o.refcountBits;
    this.perBlock = (o.clusterSize * 8) / o.refcountBits;
    this.maxRefcount = o.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** o.refcountBits - 1;
    this.#table = table;
    this.#tableOffset = o.tableOffset;
    this.#tableClusters = o.tableClusters;
    this.#blocks = new L2Cache(Math.max(4, Math.floor((4 * 1024 * 1024) / o.clusterSize)));
    this.#end = Math.ceil(o.fileSize / o.clusterSize);
    this.#loadEnd = this.#end;
    const map = o.overlap;
    map?.add(OVERLAP.REFCOUNT_TABLE, o.tableOffset, o.tableClusters * o.clusterSize);
    const covering = Math.max(table.length, Math.ceil(this.#loadEnd / this.perBlock));
    for (let t = 0; t < covering; t++) {
      const at = table[t] ?? 0;
      if (at === 0) {
        // On a block device the image ends well before the device does: load() looks again once it knows where.
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

  /** Adds the refcount table and the trusted refcount blocks to `map`. */
  mapInto(map: OverlapMap): void {
    map.add(OVERLAP.REFCOUNT_TABLE, this.#tableOffset, this.#tableClusters * this.clusterSize);
    for (const at of this.#table) if (at !== 0) map.add(OVERLAP.REFCOUNT_BLOCK, at, this.clusterSize);
  }

  #distrust(t: number, why: string): void {
    this.#untrusted.add(t);
    this.#untrustedWhy.set(t, why);
  }

  /** Refcount table entries that could not be trusted, and why (problems found at open, not yet repaired). */
  get untrustedBlocks(): ReadonlyArray<{ index: number; reason: string }> {
    return [...this.#untrustedWhy].filter(([t]) => this.#untrusted.has(t)).map(([index, reason]) => ({ index, reason }));
  }

  /** The last cluster of [first, first + count) the overlap map holds, or -1. */
  #heldIn(first: number, count: number): number {
    return this.#o.overlap?.lastIn(first, first + count) ?? -1;
  }

  /** Whether every cluster of [first, first + count) has refcount 0 (an untrusted block's clusters in the file count as used, as in {@link get}). */
  async #allFree(first: number, count: number): Promise<boolean> {
    const per = this.perBlock;
    for (let i = first; i < first + count;) {
      const t = Math.floor(i / per);
      const stop = Math.min(first + count, (t + 1) * per);
      if (this.#untrusted.has(t)) {
        if (i < this.#loadEnd) return false;
      } else {
        const block = await this.#block(t);
        if (block) for (let j = i; j < stop; j++) if (readRefcount(block, j % per, this.bits) !== 0) return false;
      }
      i = stop;
    }
    return true;
  }

  /** The last cluster of [first, first + count) at or past the allocation frontier whose refcount is not 0, or -1. */
  async #countedPastEnd(first: number, count: number): Promise<number> {
    for (let c = first + count - 1; c >= Math.max(first, this.#end); c--) if ((await this.get(c)) !== 0) return c;
    return -1;
  }

  /**
   * The allocation frontier moved past clusters the overlap map holds
   * (metadata a corrupt image points past the end of the file): new
   * refcount blocks and tables never land on them.
   */
  #endPastHeld(): number {
    const map = this.#o.overlap;
    if (map) while (map.kindsAt(this.#end)) this.#end++;
    return this.#end;
  }

  /** Whether the allocator may hand out cluster `index` with refcount `count`: never metadata the map holds. */
  #free(index: number, count: number): boolean {
    return count === 0 && !(this.#o.overlap?.kindsAt(index) ?? 0);
  }

  /** Loads the refcount table (bounded by qemu's 8 MiB) and checks every entry. */
  static async load(o: RefcountOptions): Promise<Refcounts> {
    const bytes = o.tableClusters * o.clusterSize;
    if (bytes > MAX_REFCOUNT_TABLE_BYTES) throw corrupt(FORMAT, o.file, `refcount table of ${o.tableClusters} clusters exceeds 8 MiB`, { field: 'refcount_table_clusters', offset: 56 });
    const raw = new Uint8Array(bytes);
    const n = await o.storage.readInto(o.tableOffset, raw);
    if (n < bytes) throw corrupt(FORMAT, o.file, `refcount table at ${hex(o.tableOffset)} is cut short by the end of the file`, { field: 'refcount_table_offset', offset: 48 });
    const rc = new Refcounts(o, parseTable(raw, o.clusterSize, o.refcountBits, o.fileSize, o.tableOffset, o.file, o.forCheck ?? false));
    if (o.storage.fixedSize) await rc.#frontierOnDevice();
    return rc;
  }

  /**
   * On a block device the file's size is the device's, not the image's:
   * the clusters past the image hold stale bytes. The image ends after its
   * last cluster in use (qemu's view: it allocates by refcounts alone), so
   * the allocation frontier is put there, and new clusters, refcount
   * blocks and tables go right after the image as they would in a file,
   * not past the end of the device. A missing refcount block below that
   * end is distrusted as it would be in a file of that size.
   */
  async #frontierOnDevice(): Promise<void> {
    const end = (await this.lastInUse()) + 1;
    this.#end = Math.max(1, end);
    this.#loadEnd = this.#end;
    for (let t = 0; t * this.perBlock < this.#loadEnd; t++) {
      if ((this.#table[t] ?? 0) === 0) this.#distrust(t, 'it is missing although clusters of its range are in use');
    }
  }

  get tableOffset(): number {
    return this.#tableOffset;
  }

  get tableClusters(): number {
    return this.#tableClusters;
  }

  /** Refcount block offsets, by table index (a copy). */
  get table(): readonly number[] {
    return this.#table;
  }

  /** One past the highest cluster index allocated so far. */
  get endCluster(): number {
    return this.#end;
  }

  async #block(tableIndex: number): Promise<Uint8Array | undefined> {
    const offset = this.#table[tableIndex] ?? 0;
    if (offset === 0) return undefined;
    return this.#blocks.get(offset, async () => {
      const b = new Uint8Array(this.clusterSize);
      await this.#o.storage.readInto(offset, b);
      return b;
    });
  }

  /** The refcount of cluster `index`. */
  async get(index: number): Promise<number> {
    const t = Math.floor(index / this.perBlock);
    if (this.#untrusted.has(t)) return index < this.#loadEnd ? 1 : 0;
    const block = await this.#block(t);
    return block ? readRefcount(block, index % this.perBlock, this.bits) : 0;
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
    let i = first;
    const end = first + count;
    while (i < end) {
      const t = Math.floor(i / this.perBlock);
      const stop = Math.min(end, (t + 1) * this.perBlock);
      if (delta > 0 || this.#untrusted.has(t)) await this.#ensureBlock(t);
      const block = await this.#block(t);
      if (!block) {
        throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${i} (${hex(i * this.clusterSize)}) would drop below zero: no refcount block covers it`, { field: 'refcount', offset: i * this.clusterSize });
      }
      for (let j = i; j < stop; j++) {
        const k = j % this.perBlock;
        const v = readRefcount(block, k, this.bits) + delta;
        if (v < 0) throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${j} (${hex(j * this.clusterSize)}) would drop below zero`, { field: 'refcount', offset: j * this.clusterSize });
        if (v > this.maxRefcount) throw corrupt(FORMAT, this.#o.file, `refcount of cluster ${j} would exceed ${this.maxRefcount}`, { field: 'refcount', offset: j * this.clusterSize });
        writeRefcount(block, k, this.bits, v);
        if (v === 0) {
          if (j < this.#freeHint) this.#freeHint = j;
          if (j < this.#runHint) this.#runHint = j;
        }
      }
      if (pending instanceof RefcountBatch) {
        // Held in memory until writeBatch: were the cache to drop it meanwhile (a long search for free clusters
        // reads many blocks), the block would be read again without these counts, and they would be lost.
        if (!pending.pinned.has(t)) {
          this.#blocks.pin(this.#table[t]!, block);
          pending.pinned.set(t, this.#table[t]!);
        }
        pending.note(t, i % this.perBlock, stop - t * this.perBlock);
        i = stop;
        continue;
      }
      const written = this.#writeBlockRange(t, block, i % this.perBlock, stop - t * this.perBlock);
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
    if (this.#untrusted.has(t)) await this.#ensureBlock(t);
    const current = await this.get(index);
    if (current !== value) await this.add(index, 1, value - current);
  }

  /** Writes each block range a batch recorded, once, with the counts as they are now; empties the batch. */
  async writeBatch(batch: RefcountBatch): Promise<void> {
    try {
      const writes: Promise<void>[] = [];
      for (const [t, [from, to]] of batch.ranges) {
        const block = await this.#block(t);
        if (block) writes.push(this.#writeBlockRange(t, block, from, to));
      }
      batch.ranges.clear();
      await Promise.all(writes);
    } finally {
      for (const at of batch.pinned.values()) this.#blocks.unpin(at);
      batch.pinned.clear();
    }
  }

  async #writeBlockRange(t: number, block: Uint8Array, fromEntry: number, toEntry: number): Promise<void> {
    const from = Math.floor((fromEntry * this.bits) / 8);
    const to = Math.ceil((toEntry * this.bits) / 8);
    const at = this.#table[t]!;
    this.#o.overlap?.check(this.#o.file, at + from, to - from, OVERLAP.REFCOUNT_BLOCK);
    await this.#o.storage.write(at + from, block.subarray(from, to));
  }

  /**
   * Makes sure refcount block `t` exists. A new block goes at the end of
   * the file; if it lies in its own range it describes itself, else the
   * block covering it is made first.
   */
  async #ensureBlock(t: number): Promise<void> {
    while ((this.#table[t] ?? 0) === 0) {
      const at = this.#endPastHeld();
      const ownerIndex = Math.floor(at / this.perBlock);
      if (ownerIndex !== t && (this.#table[ownerIndex] ?? 0) === 0) {
        await this.#ensureBlock(ownerIndex);
        continue;
      }
      if (t >= this.#table.length || ownerIndex >= this.#table.length) {
        await this.#growTable(Math.max(t, ownerIndex) + 1);
        continue;
      }
      this.#end = at + 1;
      const block = new Uint8Array(this.clusterSize);
      // A block that replaces an untrusted one counts every cluster of its range in the file as used
      // (leaks at worst, never a live cluster handed out again).
      if (this.#untrusted.has(t)) {
        for (let c = t * this.perBlock; c < Math.min(this.#loadEnd, (t + 1) * this.perBlock); c++) writeRefcount(block, c % this.perBlock, this.bits, 1);
      }
      if (ownerIndex === t) writeRefcount(block, at % this.perBlock, this.bits, 1);
      this.#o.overlap?.check(this.#o.file, at * this.clusterSize, this.clusterSize);
      await this.#o.storage.write(at * this.clusterSize, block);
      if (ownerIndex !== t) await this.add(at, 1, 1);
      await this.#o.barrier();
      this.#table[t] = at * this.clusterSize;
      this.#untrusted.delete(t);
      this.#o.overlap?.add(OVERLAP.REFCOUNT_BLOCK, at * this.clusterSize, this.clusterSize);
      this.#blocks.put(at * this.clusterSize, block);
      const entry = new Uint8Array(8);
      writeU64Be(entry, 0, at * this.clusterSize);
      this.#o.overlap?.check(this.#o.file, this.#tableOffset + t * 8, 8, OVERLAP.REFCOUNT_TABLE);
      await this.#o.storage.write(this.#tableOffset + t * 8, entry);
      await this.#o.barrier();
    }
  }

  /**
   * Moves the refcount table to a bigger one at the end of the file, with
   * new self-describing refcount blocks for its own clusters where needed.
   */
  async #growTable(minEntries: number): Promise<void> {
    const cs = this.clusterSize;
    const perCluster = cs / 8;
    let entries = Math.max(minEntries, Math.ceil(this.#table.length * 1.5), perCluster);
    let clusters = 0;
    let newBlocks: number[] = [];
    let start = this.#endPastHeld();
    // Find a size that covers the table itself and the blocks that describe it, on clusters no metadata holds.
    for (;;) {
      clusters = Math.ceil(entries / perCluster);
      newBlocks = [];
      // Blocks are needed for every block index covering [start, start+clusters+newBlocks) that has none.
      let span = clusters;
      for (let guard = 0; guard < 64; guard++) {
        newBlocks = [];
        for (let t = Math.floor(start / this.perBlock); t <= Math.floor((start + span - 1) / this.perBlock); t++) {
          if ((this.#table[t] ?? 0) === 0) newBlocks.push(t);
        }
        if (clusters + newBlocks.length === span) break;
        span = clusters + newBlocks.length;
      }
      const maxIndex = Math.max(this.#table.length, minEntries, ...newBlocks.map((t) => t + 1));
      const held = this.#heldIn(start, clusters + newBlocks.length);
      if (held >= 0) {
        this.#end = held + 1;
        start = this.#endPastHeld();
        continue;
      }
      if (maxIndex <= clusters * perCluster) break;
      entries = maxIndex;
    }
    if (clusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
      throw corrupt(FORMAT, this.#o.file, `the refcount table would exceed qemu's 8 MiB bound`, { field: 'refcount_table_clusters' });
    }
    const table = this.#table.slice();
    while (table.length < clusters * perCluster) table.push(0);
    // Write the new blocks (they count the table and themselves), then the table.
    const blockAt = start + clusters;
    const blocks = new Map<number, Uint8Array>();
    newBlocks.forEach((t, i) => {
      table[t] = (blockAt + i) * cs;
      blocks.set(t, new Uint8Array(cs));
    });
    this.#end = blockAt + newBlocks.length;
    // Refcounts of the new clusters: in new blocks directly, in existing blocks through add().
    const fresh: number[] = [];
    for (let c = start; c < this.#end; c++) {
      const t = Math.floor(c / this.perBlock);
      const nb = blocks.get(t);
      if (nb) writeRefcount(nb, c % this.perBlock, this.bits, 1);
      else fresh.push(c);
    }
    for (const [t, b] of blocks) {
      this.#o.overlap?.check(this.#o.file, table[t]!, cs);
      await this.#o.storage.write(table[t]!, b);
      this.#blocks.put(table[t]!, b);
      this.#o.overlap?.add(OVERLAP.REFCOUNT_BLOCK, table[t]!, cs);
    }
    this.#table = table;
    for (const c of fresh) await this.add(c, 1, 1);
    const bytes = new Uint8Array(clusters * cs);
    table.forEach((off, i) => writeU64Be(bytes, i * 8, off));
    this.#o.overlap?.check(this.#o.file, start * cs, bytes.length);
    await this.#o.storage.write(start * cs, bytes);
    await this.#o.barrier();
    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    this.#tableOffset = start * cs;
    this.#tableClusters = clusters;
    this.#o.overlap?.add(OVERLAP.REFCOUNT_TABLE, start * cs, clusters * cs);
    await this.#o.onTableMoved(this.#tableOffset, clusters);
    this.#o.overlap?.remove(OVERLAP.REFCOUNT_TABLE, oldOffset, oldClusters * cs);
    await this.#o.barrier();
    await this.add(oldOffset / cs, oldClusters, -1);
  }

  /**
   * Allocates `count` contiguous clusters (refcount 1) and returns the host
   * offset of the first. Reuses free clusters inside the file before
   * growing it. `pending`: as in {@link add}.
   */
  async allocate(count: number, pending?: PendingWrites | RefcountBatch): Promise<number> {
    let first = await this.#findFree(count);
    for (;;) {
      // Past the end of the file the refcounts say nothing: metadata there (a table pointing past the end) still counts.
      let used = this.#heldIn(first, count);
      // So do refcounts raised past the end by a crash before the file grew over the clusters (a leak, not free space).
      if (used < 0) used = await this.#countedPastEnd(first, count);
      if (used < 0) break;
      if (used + 1 > this.#end) this.#end = used + 1;
      first = await this.#findFree(count);
    }
    if (first + count > this.#end) this.#end = first + count;
    await this.add(first, count, 1, pending);
    if (first + count > this.#end) this.#end = first + count;
    return first * this.clusterSize;
  }

  /**
   * Allocates exactly clusters [first, first+count) (refcount 1) if every
   * one of them is free; answers false (and changes nothing) otherwise.
   * Compressed data that runs on past the cluster it starts in uses it.
   * `batch`: as in {@link add}.
   */
  async allocateAt(first: number, count: number, batch?: RefcountBatch): Promise<boolean> {
    if (this.#heldIn(first, count) >= 0 || !(await this.#allFree(first, count))) return false;
    if (first + count > this.#end) this.#end = first + count;
    await this.add(first, count, 1, batch);
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
      const block = await this.#block(t);
      if (!block) continue;
      for (let k = per - 1; k >= 0; k--) if (readRefcount(block, k, this.bits) !== 0) return t * per + k;
    }
    return -1;
  }

  /**
   * qemu's refcount area (qcow2_refcount_area with an exact size), which
   * its preallocating truncate lays out before the data clusters: from
   * cluster `start` (past every cluster in use), a new refcount block for
   * each table entry without one, then a new refcount table, sized so that
   * they cover themselves and `additional` clusters after them. Blocks
   * already there count the new clusters in place. The blocks and the
   * table are written and flushed, the header switches to the table, and
   * the old table is freed: a crash on the way leaves leaks at worst.
   * Answers the first cluster after the new table (where the additional
   * clusters go), or undefined, with nothing changed, where a block of the
   * area could not be trusted at open or a cluster of it is in use or
   * holds metadata. A table over qemu's 8 MiB bound is ERR_IMG_UNSUPPORTED.
   */
  async reserveArea(start: number, additional: number): Promise<number | undefined> {
    const cs = this.clusterSize;
    const per = this.perBlock;
    const perCluster = cs / 8;
    const total = refcountFixedPoint(start + additional, cs, per).blocks;
    const first = Math.floor(start / per);
    let kept = this.#table.length;
    while (kept > 0 && (this.#table[kept - 1] ?? 0) === 0) kept--;
    // qemu drops the blocks past the ones it needs (they count only free clusters); they stay here, so that their own clusters are not leaked.
    const entries = Math.ceil(Math.max(total, kept, 1) / perCluster) * perCluster;
    const tableClusters = entries / perCluster;
    if (tableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
      throw unsupported(FORMAT, this.#o.file, `preallocating ${additional} more clusters needs a refcount table of ${tableClusters * cs} bytes, over qemu's 8 MiB bound`, { field: 'size' });
    }
    let fresh = 0;
    for (let t = first; t < total; t++) {
      if (this.#untrusted.has(t)) return undefined;
      if ((this.#table[t] ?? 0) === 0) fresh++;
    }
    const tableAt = start + fresh;
    const end = tableAt + tableClusters;
    if (this.#heldIn(start, end - start) >= 0 || !(await this.#allFree(start, end - start))) return undefined;
    const storage = this.#o.storage;
    const overlap = this.#o.overlap;
    const table = this.#table.slice(0, entries);
    while (table.length < entries) table.push(0);
    // New blocks follow each other from `start`: they go out a piece at a time.
    const piece: Array<[number, Uint8Array]> = [];
    const writePiece = async (): Promise<void> => {
      if (!piece.length) return;
      const at = piece[0]![0];
      await storage.write(at, piece.length === 1 ? piece[0]![1] : concatBytes(piece.map(([, b]) => b)));
      for (const [offset, block] of piece) {
        this.#blocks.put(offset, block);
        overlap?.add(OVERLAP.REFCOUNT_BLOCK, offset, cs);
      }
      piece.length = 0;
    };
    let next = start;
    for (let t = first; t < total; t++) {
      const lo = Math.max(start, t * per);
      const hi = Math.min(end, (t + 1) * per);
      if (table[t]) {
        if (lo >= hi) continue;
        const block = (await this.#block(t))!;
        for (let c = lo; c < hi; c++) writeRefcount(block, c % per, this.bits, 1);
        await this.#writeBlockRange(t, block, lo - t * per, hi - t * per);
        continue;
      }
      const block = new Uint8Array(cs);
      for (let c = lo; c < hi; c++) writeRefcount(block, c % per, this.bits, 1);
      table[t] = next * cs;
      overlap?.check(this.#o.file, next * cs, cs);
      piece.push([next * cs, block]);
      next++;
      if (piece.length * cs >= AREA_PIECE) await writePiece();
    }
    await writePiece();
    if (end > this.#end) this.#end = end;
    const bytes = new Uint8Array(entries * 8);
    table.forEach((offset, i) => {
      if (offset) writeU64Be(bytes, i * 8, offset);
    });
    overlap?.check(this.#o.file, tableAt * cs, bytes.length);
    await storage.write(tableAt * cs, bytes);
    await this.#o.barrier();
    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    this.#table = table;
    this.#tableOffset = tableAt * cs;
    this.#tableClusters = tableClusters;
    overlap?.add(OVERLAP.REFCOUNT_TABLE, tableAt * cs, bytes.length);
    await this.#o.onTableMoved(this.#tableOffset, tableClusters);
    overlap?.remove(OVERLAP.REFCOUNT_TABLE, oldOffset, oldClusters * cs);
    await this.#o.barrier();
    await this.add(oldOffset / cs, oldClusters, -1);
    return end;
  }

  /**
   * The first cluster of a free run of `count` clusters at or after the
   * hint, or the end of the file (a free run touching the end continues
   * into new clusters). Single clusters and runs keep separate hints so
   * that a lone free cluster does not make every multi-cluster search
   * rescan the file.
   */
  async #findFree(count: number): Promise<number> {
    const from = count === 1 ? this.#freeHint : Math.max(this.#freeHint, this.#runHint);
    let run = 0;
    let runStart = from;
    let firstFree = -1;
    let i = from;
    while (i < this.#end) {
      const t = Math.floor(i / this.perBlock);
      const untrusted = this.#untrusted.has(t);
      const block = untrusted ? undefined : await this.#block(t);
      const stop = Math.min(this.#end, (t + 1) * this.perBlock);
      for (; i < stop; i++) {
        const refs = untrusted ? (i < this.#loadEnd ? 1 : 0) : block ? readRefcount(block, i % this.perBlock, this.bits) : 0;
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
    const raw = new Uint8Array(tableClusters * this.clusterSize);
    const n = await this.#o.storage.readInto(tableOffset, raw);
    if (n < raw.length) throw corrupt(FORMAT, this.#o.file, `refcount table at ${hex(tableOffset)} is cut short by the end of the file`, { field: 'refcount_table_offset', offset: 48 });
    this.#table = parseTable(raw, this.clusterSize, this.bits, fileSize, tableOffset, this.#o.file, this.#o.forCheck ?? false);
    this.#tableOffset = tableOffset;
    this.#tableClusters = tableClusters;
    this.#blocks.clear();
    this.#freeHint = 0;
    this.#runHint = 0;
  }

  /** Forgets cached blocks (after a repair rewrote them). */
  clearCache(): void {
    this.#blocks.clear();
  }

  /** Marks cluster indices up to `end` as in use by the file (after external growth). */
  noteEnd(endCluster: number): void {
    if (endCluster > this.#end) this.#end = endCluster;
  }
}
