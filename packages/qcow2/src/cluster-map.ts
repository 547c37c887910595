/**
 * The cluster map of the active layer (spec: "Cluster mapping"; qemu:
 * qcow2-cluster.c): L1 entries, L2 tables made private before they change
 * (allocated, or copied away from a snapshot), L2 entry writes, L1 growth,
 * and dropping the tables past a new end.
 *
 * Ordering (crash safety): a new L2 table is written and flushed before
 * the L1 entry that points at it, and the table it replaces is released
 * only after that entry is on disk. Every metadata write is checked
 * against the overlap map first.
 */
import { concatBytes } from '@img/block';
import type { Storage } from '@img/block';
import { entryCopied, writeEntryOffset, l1EntryOffset, type EntryGeometry } from './mapping.js';
import { decodeEntry, encodeEntry, writerEntry, type Entry } from './l2-entry.js';
import { forEachL2Entry } from './l2-walk.js';
import { writeHeaderFields, type Qcow2Geometry, type Qcow2Header } from './header.js';
import { loadL2, type MappingView, type ReaderState } from './mapping-view.js';
import { OVERLAP, type OverlapMap } from './overlap.js';
import type { Allocator } from './allocator.js';
import type { Scheduler } from './scheduler.js';

/** The parts of the open image the cluster map reads and changes (the image core is one). */
export interface ClusterMapImage extends ReaderState {
  readonly geom: Qcow2Geometry;
  readonly entryGeom: EntryGeometry;
  readonly header: Readonly<Qcow2Header>;
  setHeader(fields: Partial<Qcow2Header>): void;
  readonly overlap?: OverlapMap;
  readonly storage: Storage;
}

/** L1/L2 lookups and updates of the active layer (see the module comment). */
export class ClusterMap {
  readonly #img: ClusterMapImage;
  readonly #view: MappingView;
  readonly #alloc: Allocator;
  readonly #sched: Scheduler;

  constructor(img: ClusterMapImage, view: MappingView, allocator: Allocator, scheduler: Scheduler) {
    this.#img = img;
    this.#view = view;
    this.#alloc = allocator;
    this.#sched = scheduler;
  }

  /** The active layer's L1 table. */
  get view(): MappingView {
    return this.#view;
  }

  /** Entry `index` of an L2 table. */
  decode(table: Uint8Array, index: number, tableOffset: number): Entry {
    return decodeEntry(table, index, this.#img.entryGeom, this.#img.file, tableOffset);
  }

  /** Sets entry `index` of an L2 table in memory (written by {@link writeTableRange} or {@link queueTableRange}). */
  encode(table: Uint8Array, index: number, e: Entry): void {
    encodeEntry(table, index, e, this.#img.entryGeom);
  }

  /** The L2 table of L1 entry `l1Index` as it is now, private or shared, if it has one (a cache hit answers without a promise). */
  l2OffsetOf(l1Index: number): number {
    return l1EntryOffset(this.#view.l1, l1Index, this.#img.geom.clusterSize, this.#img.file, this.#view.l1Offset);
  }

  /** L1 entry `l1Index` has the COPIED flag: its L2 table belongs to the active layer alone. */
  isPrivate(l1Index: number): boolean {
    const l1 = this.#view.l1;
    return l1Index * 8 < l1.length && entryCopied(l1, l1Index * 8);
  }

  #writeL1Entry(index: number, offset: number, copied: boolean): Promise<void> {
    const img = this.#img;
    const l1 = this.#view.l1;
    img.overlap?.check(img.file, this.#view.l1Offset + index * 8, 8, OVERLAP.ACTIVE_L1);
    writeEntryOffset(l1, index * 8, offset, copied);
    return img.storage.write(this.#view.l1Offset + index * 8, l1.subarray(index * 8, index * 8 + 8));
  }

  /**
   * The L2 table for L1 entry `l1Index`, ready to be changed: allocated if
   * missing, copied if shared with a snapshot. Caller holds the table lock.
   */
  async tableFor(l1Index: number): Promise<{ table: Uint8Array; offset: number }> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    const l2Offset = this.l2OffsetOf(l1Index);
    if (l2Offset !== 0 && this.isPrivate(l1Index)) return { table: await loadL2(img, l2Offset, l1Index), offset: l2Offset };
    if (l2Offset !== 0 && (await this.#alloc.refcounts.get(l2Offset / cs)) === 1) {
      // A damaged image: the COPIED flag is missing although nothing else uses the table (the open gate lets a
      // flag that errs on this side through). The flag is set; copying the table would clear its entries'
      // COPIED flags against their refcounts of 1.
      await this.#writeL1Entry(l1Index, l2Offset, true);
      return { table: await loadL2(img, l2Offset, l1Index), offset: l2Offset };
    }
    const fresh = await this.#alloc.allocate(1);
    let table: Uint8Array;
    if (l2Offset === 0) {
      table = new Uint8Array(cs);
    } else {
      // Shared with a snapshot. The clusters it maps already count one reference per L1 table that
      // reaches them (taking the snapshot added them), so the copy changes no refcount but the table's.
      table = (await loadL2(img, l2Offset, l1Index)).slice();
      const copy = table;
      forEachL2Entry(
        img,
        copy,
        l2Offset,
        (ce, i) => {
          const e = writerEntry(ce, img.entryGeom);
          if (e.host !== undefined && e.copied) this.encode(copy, i, { ...e, copied: false });
        },
        (error) => {
          throw error;
        },
      );
    }
    img.overlap?.check(img.file, fresh, cs);
    await this.#alloc.writeFresh(fresh, cs, async () => {
      await img.storage.write(fresh, table);
      await this.#sched.barrier();
    });
    img.cache.put(fresh, table);
    await this.#writeL1Entry(l1Index, fresh, true);
    img.overlap?.add(OVERLAP.L2, fresh, cs);
    if (l2Offset !== 0) {
      img.overlap?.remove(OVERLAP.L2, l2Offset, cs);
      await this.#sched.barrier();
      await this.#alloc.release(l2Offset, cs);
    }
    return { table, offset: fresh };
  }

  /**
   * Writes entries first..last of an L2 table now (and keeps the table in
   * the cache), after the entries queued by {@link queueTableRange} have
   * landed: an older queued write of the same entries must not land over
   * these.
   */
  async writeTableRange(tableOffset: number, table: Uint8Array, first: number, last: number): Promise<void> {
    const img = this.#img;
    const es = img.geom.l2EntrySize;
    img.overlap?.check(img.file, tableOffset + first * es, (last - first + 1) * es, OVERLAP.L2);
    await this.#sched.barrierWritesLanded(tableOffset);
    img.cache.put(tableOffset, table);
    await img.storage.write(tableOffset + first * es, table.subarray(first * es, (last + 1) * es));
  }

  /**
   * Writes entries first..last of an L2 table as they are now, after the
   * next flush barrier, without waiting for either
   * ({@link Scheduler.afterBarrier}): for a guest write that only filled
   * unallocated entries with data it has written (nothing to release
   * after it), so that the data is on disk before the entries that map it
   * and the table's lock is free for the next write meanwhile. The table
   * stays pinned in the cache until the entries land.
   */
  queueTableRange(tableOffset: number, table: Uint8Array, first: number, last: number): void {
    const img = this.#img;
    const es = img.geom.l2EntrySize;
    // Checked now, so that the guest write that needs it fails (and marks the image corrupt).
    img.overlap?.check(img.file, tableOffset + first * es, (last - first + 1) * es, OVERLAP.L2);
    const cache = img.cache;
    cache.pin(tableOffset, table);
    this.#sched.afterBarrier({ key: tableOffset, at: tableOffset + first * es, bytes: table.slice(first * es, (last + 1) * es), keyBytes: table.length, landed: () => cache.unpin(tableOffset) });
  }

  /**
   * Hooks up new, filled L2 tables for L1 entries that have none, at
   * clusters the caller allocated (in order of L1 index): the tables are
   * written (neighbours in one write) and flushed, then the L1 entries
   * (neighbours in one write). Nothing waits for the table locks: the
   * caller runs alone (a preallocating resize).
   */
  async installTables(tables: ReadonlyArray<{ l1Index: number; offset: number; table: Uint8Array }>): Promise<void> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    for (const t of tables) img.overlap?.check(img.file, t.offset, cs);
    for (let i = 0; i < tables.length;) {
      let j = i + 1;
      while (j < tables.length && tables[j]!.offset === tables[j - 1]!.offset + cs) j++;
      const run = tables.slice(i, j);
      await img.storage.write(run[0]!.offset, run.length === 1 ? run[0]!.table : concatBytes(run.map((t) => t.table)));
      i = j;
    }
    await this.#sched.barrier();
    const l1 = this.#view.l1;
    for (let i = 0; i < tables.length;) {
      let j = i + 1;
      while (j < tables.length && tables[j]!.l1Index === tables[j - 1]!.l1Index + 1) j++;
      for (const t of tables.slice(i, j)) writeEntryOffset(l1, t.l1Index * 8, t.offset, true);
      const from = tables[i]!.l1Index * 8;
      const to = (tables[j - 1]!.l1Index + 1) * 8;
      img.overlap?.check(img.file, this.#view.l1Offset + from, to - from, OVERLAP.ACTIVE_L1);
      await img.storage.write(this.#view.l1Offset + from, l1.subarray(from, to));
      i = j;
    }
    for (const t of tables) img.overlap?.add(OVERLAP.L2, t.offset, cs);
  }

  /** Grows the L1 table to at least `entries` entries (moves it to new clusters). */
  async growL1(entries: number): Promise<void> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    const h = img.header;
    if (entries <= h.l1Size) return;
    const bytes = entries * 8;
    const clusters = Math.ceil(bytes / cs);
    const offset = await this.#alloc.allocate(clusters);
    const l1 = new Uint8Array(clusters * cs);
    l1.set(this.#view.l1.subarray(0, h.l1Size * 8));
    img.overlap?.check(img.file, offset, l1.length);
    await this.#alloc.writeFresh(offset, l1.length, async () => {
      await img.storage.write(offset, l1);
      await this.#sched.barrier();
    });
    const oldOffset = h.l1TableOffset;
    const oldClusters = Math.ceil((h.l1Size * 8) / cs);
    img.setHeader({ l1TableOffset: offset, l1Size: entries });
    this.#view.l1 = l1.subarray(0, bytes);
    this.#view.l1Offset = offset;
    await writeHeaderFields(img.storage, h);
    img.overlap?.add(OVERLAP.ACTIVE_L1, offset, bytes);
    img.overlap?.remove(OVERLAP.ACTIVE_L1, oldOffset, oldClusters * cs);
    await this.#sched.barrier();
    if (oldClusters > 0 && oldOffset > 0) await this.#alloc.release(oldOffset, oldClusters * cs);
  }

  /** Drops the L2 tables of L1 entries at or past `fromIndex` (after shrinking: they map nothing). */
  async dropTablesFrom(fromIndex: number): Promise<void> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    for (let i = fromIndex; i < img.header.l1Size; i++) {
      await this.#sched.tables.run(i, async () => {
        const l2Offset = this.l2OffsetOf(i);
        if (l2Offset === 0) return;
        await this.#writeL1Entry(i, 0, false);
        img.overlap?.remove(OVERLAP.L2, l2Offset, cs);
        await this.#sched.barrier();
        img.cache.delete(l2Offset);
        await this.#alloc.release(l2Offset, cs);
      });
    }
  }
}
