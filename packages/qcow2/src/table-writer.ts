/**
 * The table side of the writer (spec: "Cluster mapping", "Host cluster
 * management"): cluster allocation and release through the refcounts, L1
 * entries, L2 tables made private (allocated, or copied away from a
 * snapshot), L1 growth, and the locks guest writes run under (one per L2
 * table, one for metadata, a gate for exclusive operations).
 *
 * Ordering (crash safety): a cluster's refcount is raised before anything
 * points at it, its data is written and flushed before the L2 entry that
 * maps it, and an old cluster's refcount is lowered only after the new
 * entry is on disk. Work is done per L2 table under that table's lock;
 * refcounts and the L1 table are changed under one metadata lock. A write
 * that changes no entry writes its data after the lock is released, and
 * anything that changes entries first waits for those (in-flight.ts).
 */
import { Mutex, ImageError, ERROR_CODES, readU32Be, writeU32Be } from '@img/block';
import { l1EntryOffset } from './mapping.js';
import { decodeEntry, encodeEntry, type Entry } from './l2-entry.js';
import { ENTRY_COPIED_HI } from './constants.js';
import { loadL2, type MappingView } from './reader.js';
import type { Refcounts } from './refcount.js';
import type { PendingWrites } from './pending-writes.js';
import type { Qcow2Image } from './core.js';
import { InFlightWrites, TableLocks } from './in-flight.js';
import { OVERLAP } from './overlap.js';

/**
 * What a per-table step may leave running after its table's lock is
 * released: the data write of a write that changed no metadata.
 */
export type TableTail = { after: Promise<void> } | undefined;

/** One table's share of an operation: L1 index and the guest bytes [start, end) it maps. */
type TableStep = (l1Index: number, start: number, end: number) => Promise<TableTail | void>;

/** What the writer needs from the image besides its state. */
export interface WriterHooks {
  /** Reads guest bytes of the active layer as they are now (for copy-on-write). */
  read(offset: number, target: Uint8Array): Promise<void>;
  /** Writes the header (after the writer changed it). */
  writeHeader(): Promise<void>;
  /** Runs once before the first change to the image (dirty bit, autoclear bits). */
  beforeFirstWrite(): Promise<void>;
  /** Flush barrier between dependent metadata writes. */
  barrier(): Promise<void>;
}

const TWO32 = 0x1_0000_0000;

/** Writes the 64-bit offset-with-flags `hi:lo` pair at `at`. */
function put64(buf: Uint8Array, at: number, hi: number, lo: number): void {
  writeU32Be(buf, at, hi >>> 0);
  writeU32Be(buf, at + 4, lo >>> 0);
}

/** Allocation, release, L1/L2 table access and locking, shared by every guest write path ({@link Qcow2Writer}). */
export class TableWriter {
  protected readonly s: Qcow2Image;
  protected readonly view: MappingView;
  protected readonly rc: Refcounts | undefined;
  protected readonly hooks: WriterHooks;
  protected readonly tables = new TableLocks();
  protected readonly meta = new Mutex();
  /** Data writes running outside their table's lock (see {@link InFlightWrites}). */
  protected readonly flights = new InFlightWrites();
  /** Free space left in the last host cluster that compressed data went to. */
  protected ctail: { offset: number; end: number } | undefined;
  readonly units: number;
  readonly full: number;
  readonly unitSize: number;

  constructor(state: Qcow2Image, view: MappingView, refcounts: Refcounts | undefined, hooks: WriterHooks) {
    this.s = state;
    this.view = view;
    this.rc = refcounts;
    this.hooks = hooks;
    this.units = state.entryGeom.extendedL2 ? 32 : 1;
    this.full = state.entryGeom.extendedL2 ? 0xffffffff : 1;
    this.unitSize = state.geom.subclusterSize;
  }

  get refcounts(): Refcounts | undefined {
    return this.rc;
  }

  protected decode(table: Uint8Array, index: number, tableOffset: number): Entry {
    return decodeEntry(table, index, this.s.entryGeom, this.s.file, tableOffset);
  }

  protected encode(table: Uint8Array, index: number, e: Entry): void {
    encodeEntry(table, index, e, this.s.entryGeom);
  }

  /** Units of a cluster touched by bytes [a, b) of it, as a bit mask. */
  // ---- metadata helpers ---------------------------------------------

  protected async allocate(count: number): Promise<number> {
    const rc = this.rc!;
    const offset = await this.meta.run(async () => {
      const at = await rc.allocate(count);
      await this.growFile();
      return at;
    });
    return offset;
  }

  /**
   * Allocates `count` contiguous data clusters that the caller writes in
   * full before anything points at them: the file is not grown first (the
   * data write grows it; see {@link noteWritten}), and the refcount block
   * writes are left in flight, added to `pending`, so that
   * they overlap the data write. The caller awaits them before its barrier.
   */
  protected allocateForData(count: number, pending: PendingWrites): Promise<number> {
    const rc = this.rc!;
    return this.meta.run(() => rc.allocate(count, pending));
  }

  /** Records that the file now reaches at least `end` (a data write past its old end). */
  protected noteWritten(end: number): void {
    if (end > this.s.fileSize) this.s.fileSize = end;
  }

  /** Allocates `count` contiguous clusters (refcount 1) for metadata outside the L1/L2 tables (bitmaps). */
  allocateClusters(count: number): Promise<number> {
    return this.allocate(count);
  }

  /**
   * Grows the file over every allocated cluster (new refcount blocks
   * included), so that no mapped cluster lies past its end. Never shrinks.
   * Caller holds the metadata lock.
   */
  protected async growFile(): Promise<void> {
    const end = this.rc!.endCluster * this.s.geom.clusterSize;
    if (end > this.s.fileSize) {
      await this.s.storage.truncate(end);
      this.s.fileSize = end;
    }
  }

  /**
   * Drops one reference from each host cluster of [offset, offset + bytes).
   * While guest reads are in flight the drop waits for them (a read may
   * still be fetching from a cluster that would otherwise be reused).
   */
  async release(offset: number, bytes: number): Promise<void> {
    if (!this.rc) return;
    if (this.s.activeReads > 0) {
      this.s.pendingReleases.push({ offset, bytes });
      return;
    }
    await this.#releaseNow(offset, bytes);
  }

  /** Performs the releases that waited for reads; called when the last read finishes, and on flush. */
  async drainReleases(): Promise<void> {
    const pending = this.s.pendingReleases;
    while (pending.length && this.s.activeReads === 0) {
      const r = pending.shift()!;
      await this.#releaseNow(r.offset, r.bytes);
    }
  }

  async #releaseNow(offset: number, bytes: number): Promise<void> {
    const rc = this.rc!;
    const cs = this.s.geom.clusterSize;
    if (this.ctail) {
      const tail = Math.floor(this.ctail.offset / cs);
      if (tail >= Math.floor(offset / cs) && tail <= Math.floor((offset + bytes - 1) / cs)) this.ctail = undefined;
    }
    // The bytes may be reused: forget what was decompressed or cached from them.
    this.s.decompressed.clear();
    this.s.cache.delete(offset);
    await this.meta.run(() => rc.release(offset, bytes));
  }

  /** Releases what an entry points to (data cluster or compressed bytes). */
  protected async releaseEntry(e: Entry): Promise<void> {
    // A data cluster that is also metadata is corruption: dropping its reference would free the metadata.
    const map = this.s.overlap;
    if (e.compressed) map?.check(this.s.file, e.compressed.host, e.compressed.size);
    else if (e.host !== undefined && !this.s.dataFile) map?.check(this.s.file, e.host, this.s.geom.clusterSize);
    if (e.compressed) await this.release(e.compressed.host, e.compressed.size);
    else if (e.host !== undefined && !this.s.dataFile) await this.release(e.host, this.s.geom.clusterSize);
  }

  protected writeL1Entry(index: number, offset: number, copied: boolean): Promise<void> {
    const l1 = this.view.l1;
    this.s.overlap?.check(this.s.file, this.view.l1Offset + index * 8, 8, OVERLAP.ACTIVE_L1);
    put64(l1, index * 8, (copied ? ENTRY_COPIED_HI : 0) | Math.floor(offset / TWO32), offset);
    return this.s.storage.write(this.view.l1Offset + index * 8, l1.subarray(index * 8, index * 8 + 8));
  }

  /**
   * The L2 table for L1 entry `l1Index`, ready to be changed: allocated if
   * missing, copied if shared with a snapshot. Caller holds the table lock.
   */
  protected async tableFor(l1Index: number): Promise<{ table: Uint8Array; offset: number }> {
    const s = this.s;
    const cs = s.geom.clusterSize;
    const l2Offset = l1EntryOffset(this.view.l1, l1Index, cs, s.file, this.view.l1Offset);
    const copied = l2Offset !== 0 && (readU32Be(this.view.l1, l1Index * 8) & ENTRY_COPIED_HI) !== 0;
    if (l2Offset !== 0 && copied) return { table: await loadL2(s, l2Offset, l1Index), offset: l2Offset };
    const fresh = await this.allocate(1);
    let table: Uint8Array;
    if (l2Offset === 0) {
      table = new Uint8Array(cs);
    } else {
      // Shared with a snapshot. The clusters it maps already count one reference per L1 table that
      // reaches them (taking the snapshot added them), so the copy changes no refcount but the table's.
      table = (await loadL2(s, l2Offset, l1Index)).slice();
      for (let i = 0; i < s.geom.l2Entries; i++) {
        const e = this.decode(table, i, l2Offset);
        if (e.host !== undefined && e.copied) this.encode(table, i, { ...e, copied: false });
      }
    }
    s.overlap?.check(s.file, fresh, cs);
    await s.storage.write(fresh, table);
    await this.hooks.barrier();
    s.cache.put(fresh, table);
    await this.writeL1Entry(l1Index, fresh, true);
    s.overlap?.add(OVERLAP.L2, fresh, cs);
    if (l2Offset !== 0) {
      s.overlap?.remove(OVERLAP.L2, l2Offset, cs);
      await this.hooks.barrier();
      await this.release(l2Offset, cs);
    }
    return { table, offset: fresh };
  }

  /** L2 entry writes that guest writes left in flight ({@link deferTableRange}). */
  #tableWrites = new Set<Promise<void>>();
  #tableWriteError: unknown;

  /**
   * Writes entries first..last of an L2 table without waiting for it: for
   * a guest write that only filled unallocated entries (nothing to release
   * after it), so that the table's lock is free for the next write while
   * this one lands. Nothing depends on it before the next flush, which
   * (like {@link exclusive}) waits for it through {@link settle}; the
   * table stays pinned in the cache until then. Overlapping writes of one
   * table send the table as it is when they run, so the latest entries win.
   */
  protected deferTableRange(tableOffset: number, table: Uint8Array, first: number, last: number): void {
    const es = this.s.geom.l2EntrySize;
    // Checked now, so that the guest write that needs it fails (and marks the image corrupt).
    this.s.overlap?.check(this.s.file, tableOffset + first * es, (last - first + 1) * es, OVERLAP.L2);
    const cache = this.s.cache;
    cache.pin(tableOffset, table);
    const p: Promise<void> = this.writeTableRange(tableOffset, table, first, last).then(
      () => {
        this.#tableWrites.delete(p);
        cache.unpin(tableOffset);
      },
      (e: unknown) => {
        this.#tableWrites.delete(p);
        cache.unpin(tableOffset);
        this.#tableWriteError ??= e;
      },
    );
    this.#tableWrites.add(p);
  }

  /** Waits for the data writes in flight and every deferred L2 write; reports the first L2 write that failed. */
  async settle(): Promise<void> {
    await this.flights.settled();
    while (this.#tableWrites.size) await Promise.all([...this.#tableWrites]);
    if (this.#tableWriteError !== undefined) {
      const e = this.#tableWriteError;
      this.#tableWriteError = undefined;
      throw e;
    }
  }

  protected async writeTableRange(tableOffset: number, table: Uint8Array, first: number, last: number): Promise<void> {
    const es = this.s.geom.l2EntrySize;
    this.s.overlap?.check(this.s.file, tableOffset + first * es, (last - first + 1) * es, OVERLAP.L2);
    this.s.cache.put(tableOffset, table);
    await this.s.storage.write(tableOffset + first * es, table.subarray(first * es, (last + 1) * es));
  }

  /**
   * Runs `fn` with no guest write in flight and none starting (snapshot
   * operations, resize). Writes wait for it to finish.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#gate;
    let release!: () => void;
    this.#gate = new Promise<void>((r) => (release = r));
    this.#exclusives++;
    try {
      await prev;
      while (this.#inflight > 0) await new Promise<void>((r) => this.#idle.push(r));
      // settle() also waits for the data writes that started without a table lock.
      await this.settle();
      await this.hooks.beforeFirstWrite();
      return await fn();
    } finally {
      this.#exclusives--;
      release();
    }
  }

  /** No exclusive operation is running or waiting: a write may start without passing the gate. */
  protected get gateOpen(): boolean {
    return this.#exclusives === 0;
  }

  /**
   * Guest operations take their places in the table locks' queues in the
   * order they are called, so that overlapping ones take effect in that
   * order. One that must wait first (for the header update before the
   * first write, dirty bitmaps, an exclusive operation) holds later ones
   * back from starting without a lock ({@link inOrder}) until it has its
   * places; the waits are the same for all, so they stay in order.
   */
  hold(): void {
    this.#entering++;
  }

  /** Ends a {@link hold}; call it right after the operation took its places (or failed). */
  unhold(): void {
    this.#entering--;
  }

  /**
   * Nothing called earlier is still on its way to the table locks and no
   * exclusive operation is pending: an operation called now may take its
   * places at once, and a write that changes no metadata may skip them.
   */
  get inOrder(): boolean {
    return this.#entering === 0 && this.#exclusives === 0 && this.s.firstWriteDone === true;
  }

  #exclusives = 0;
  #entering = 0;
  #gate: Promise<void> = Promise.resolve();
  #inflight = 0;
  #idle: Array<() => void> = [];

  /**
   * Runs `fn` for each L2 table's share of [offset, offset+length), under
   * that table's lock, tables in parallel. With the gate open and the
   * header updated, the places in the locks' queues are taken before this
   * returns.
   */
  protected perTable(offset: number, length: number, fn: TableStep): Promise<void> {
    if (this.gateOpen && this.s.firstWriteDone) return this.#counted(offset, length, fn);
    return this.#gated(offset, length, fn);
  }

  async #gated(offset: number, length: number, fn: TableStep): Promise<void> {
    this.hold();
    let counted = false;
    try {
      await this.#gate;
      this.#inflight++;
      counted = true;
      await this.hooks.beforeFirstWrite();
    } catch (e) {
      this.unhold();
      if (counted) this.#done();
      throw e;
    }
    this.unhold();
    try {
      await this.#enqueue(offset, length, fn);
    } finally {
      this.#done();
    }
  }

  async #counted(offset: number, length: number, fn: TableStep): Promise<void> {
    this.#inflight++;
    try {
      await this.#enqueue(offset, length, fn);
    } finally {
      this.#done();
    }
  }

  #done(): void {
    if (--this.#inflight === 0) for (const wake of this.#idle.splice(0)) wake();
  }

  /** perTable without the gate (for use inside {@link exclusive}). */
  protected async perTableInner(offset: number, length: number, fn: TableStep): Promise<void> {
    await this.hooks.beforeFirstWrite();
    await this.#enqueue(offset, length, fn);
  }

  /**
   * Queues `fn` on each table's lock now. A step may return a
   * {@link TableTail}: the lock is released when the step returns, and
   * the tail is awaited after.
   */
  #enqueue(offset: number, length: number, fn: TableStep): Promise<void> {
    const cov = this.s.geom.l2Coverage;
    const first = Math.floor(offset / cov);
    // One table (the usual case): no need to gather outcomes.
    if (offset + length <= (first + 1) * cov) return this.tables.run(first, () => fn(first, offset, offset + length)).then((tail) => tail?.after);
    const jobs: Promise<void>[] = [];
    for (let pos = offset; pos < offset + length;) {
      const l1Index = Math.floor(pos / cov);
      const end = Math.min(offset + length, (l1Index + 1) * cov);
      const start = pos;
      jobs.push(this.tables.run(l1Index, () => fn(l1Index, start, end)).then((tail) => tail?.after));
      pos = end;
    }
    return Promise.allSettled(jobs).then((results) => {
      for (const r of results) if (r.status === 'rejected') throw r.reason;
    });
  }

  // ---- L1 growth --------------------------------------------------------

  /** Grows the L1 table to at least `entries` entries (moves it to new clusters). */
  async growL1(entries: number): Promise<void> {
    const s = this.s;
    const cs = s.geom.clusterSize;
    const h = s.header;
    if (entries <= h.l1Size) return;
    const bytes = entries * 8;
    const clusters = Math.ceil(bytes / cs);
    const offset = await this.allocate(clusters);
    const l1 = new Uint8Array(clusters * cs);
    l1.set(this.view.l1.subarray(0, h.l1Size * 8));
    s.overlap?.check(s.file, offset, l1.length);
    await s.storage.write(offset, l1);
    await this.hooks.barrier();
    const oldOffset = h.l1TableOffset;
    const oldClusters = Math.ceil((h.l1Size * 8) / cs);
    h.l1TableOffset = offset;
    h.l1Size = entries;
    this.view.l1 = l1.subarray(0, bytes);
    this.view.l1Offset = offset;
    await this.hooks.writeHeader();
    s.overlap?.add(OVERLAP.ACTIVE_L1, offset, bytes);
    s.overlap?.remove(OVERLAP.ACTIVE_L1, oldOffset, oldClusters * cs);
    await this.hooks.barrier();
    if (oldClusters > 0 && oldOffset > 0) await this.release(oldOffset, oldClusters * cs);
  }

  /** Drops the L2 tables of L1 entries at or past `fromIndex` (after shrinking: they map nothing). */
  async dropTablesFrom(fromIndex: number): Promise<void> {
    const s = this.s;
    const cs = s.geom.clusterSize;
    for (let i = fromIndex; i < s.header.l1Size; i++) {
      await this.tables.run(i, async () => {
        const l2Offset = l1EntryOffset(this.view.l1, i, cs, s.file, this.view.l1Offset);
        if (l2Offset === 0) return;
        await this.writeL1Entry(i, 0, false);
        s.overlap?.remove(OVERLAP.L2, l2Offset, cs);
        await this.hooks.barrier();
        s.cache.delete(l2Offset);
        await this.release(l2Offset, cs);
      });
    }
  }

  /** Throws if the writer met corrupt metadata earlier. */
  static corruptError(file: string): ImageError {
    return new ImageError(ERROR_CODES.CORRUPT, `qcow2: ${file}: the image was marked corrupt by an earlier write; it can only be read`, { data: { format: 'qcow2', file } });
  }
}
