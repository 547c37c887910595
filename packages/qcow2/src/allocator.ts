/**
 * The allocator of an image open for writing (spec: "Host cluster
 * management"; qemu: qcow2-refcount.c): clusters are allocated and
 * released through the refcounts under one metadata lock, the file grows
 * over every allocated cluster, compressed data is packed into the tail of
 * the last compressed cluster, and releases wait while guest reads are in
 * flight (a read may still be fetching a cluster that would be reused).
 *
 * It trusts nothing it is asked to free: a data cluster that is also
 * metadata (the overlap map says so) is corruption, and releasing it would
 * free the metadata, so that is refused.
 */
import { Mutex } from '@img/block';
import type { Storage } from '@img/block';
import type { Qcow2Geometry } from './header.js';
import type { Entry } from './l2-entry.js';
import type { L2Cache } from './l2-cache.js';
import type { OverlapMap } from './overlap.js';
import type { DecompressedCache } from './reader.js';
import { RefcountBatch, type PendingWrites } from './pending-writes.js';
import type { Refcounts } from './refcount.js';

/** The parts of the open image the allocator reads and keeps up to date (the image core is one). */
export interface AllocatorImage {
  readonly storage: Storage;
  readonly file: string;
  readonly geom: Qcow2Geometry;
  /** The file's size as far as the image knows it. */
  readonly fileSize: number;
  /** Records that the file reaches at least `end`; the allocator grows it. */
  noteFileEnd(end: number): void;
  readonly overlap?: OverlapMap;
  /** Guest clusters live in an external data file: they are not counted in the refcounts. */
  readonly dataFile: Storage | undefined;
  readonly cache: L2Cache;
  readonly decompressed: DecompressedCache;
}

/**
 * The clusters one operation has allocated and nothing points at yet (a
 * snapshot's or a bitmap directory's new state before its header switch,
 * a new refcount width before its header write). Should the operation
 * fail first (a full device, an I/O error), {@link giveBack} releases them,
 * as qemu gives back a failed allocation, instead of leaving them counted
 * as leaks; a release that fails too leaves its leak, and the operation's
 * error is the one reported.
 */
export class FreshClusters {
  readonly #release: (offset: number, bytes: number) => Promise<void>;
  readonly #runs: Array<{ offset: number; bytes: number }> = [];

  /** `release` drops one reference from each cluster of a range (Allocator.release, or Refcounts.release). */
  constructor(release: (offset: number, bytes: number) => Promise<void>) {
    this.#release = release;
  }

  /** Records a run just allocated. */
  add(offset: number, bytes: number): void {
    this.#runs.push({ offset, bytes });
  }

  /** Forgets the run at `offset`: the operation released it itself. */
  forget(offset: number): void {
    const i = this.#runs.findIndex((r) => r.offset === offset);
    if (i >= 0) this.#runs.splice(i, 1);
  }

  /** Releases every run recorded, the last first; failures are ignored (see the class comment). */
  async giveBack(): Promise<void> {
    for (const r of this.#runs.splice(0).reverse()) await this.#release(r.offset, r.bytes).catch(() => undefined);
  }
}

/** Cluster allocation and release (see the module comment). */
export class Allocator {
  readonly refcounts: Refcounts;
  readonly #img: AllocatorImage;
  /** Refcounts change under it, and the file grows under it. */
  readonly #meta = new Mutex();
  /** Free space left in the last host cluster that compressed data went to. */
  #ctail: { offset: number; end: number } | undefined;
  /** Guest reads in flight (releases wait until there are none). */
  #activeReads = 0;
  /** Releases postponed while reads were in flight. */
  readonly #pendingReleases: Array<{ offset: number; bytes: number }> = [];
  /** Postponed releases that failed after the last read ended. */
  #releaseError: unknown;

  constructor(img: AllocatorImage, refcounts: Refcounts) {
    this.#img = img;
    this.refcounts = refcounts;
  }

  /**
   * Allocates `count` contiguous clusters (refcount 1) and grows the file
   * over them. Where the file cannot grow (a full device) they are given
   * back: past the file's end they would be leaks nobody counts until the
   * file reaches them.
   */
  allocate(count: number): Promise<number> {
    const rc = this.refcounts;
    return this.#meta.run(async () => {
      const at = await rc.allocate(count);
      try {
        await this.#growFile();
      } catch (error) {
        await rc.release(at, count * this.#img.geom.clusterSize).catch(() => undefined);
        throw error;
      }
      return at;
    });
  }

  /**
   * Allocates `count` contiguous data clusters that the caller writes in
   * full before anything points at them: the file is not grown first (the
   * data write grows it; see {@link noteWritten}), and the refcount block
   * writes are left in flight, added to `pending`, so that they overlap the
   * data write. The caller awaits them before its barrier.
   */
  allocateForData(count: number, pending: PendingWrites): Promise<number> {
    const rc = this.refcounts;
    return this.#meta.run(() => rc.allocate(count, pending));
  }

  /**
   * Lays out qemu's refcount area for a preallocating resize under the
   * metadata lock: from the cluster after the last one in use, new
   * refcount structures that cover themselves and `additional` clusters
   * after them (Refcounts.reserveArea). Answers the first cluster after
   * them, or undefined where the image's refcounts do not allow it.
   */
  reserveArea(additional: number): Promise<number | undefined> {
    const rc = this.refcounts;
    return this.#meta.run(async () => {
      const end = await rc.reserveArea((await rc.lastInUse()) + 1, additional);
      if (end !== undefined) this.#img.noteFileEnd(end * this.#img.geom.clusterSize);
      return end;
    });
  }

  /**
   * Allocates exactly clusters [first, first + count) if all are free,
   * without growing the file (the caller gives them their space); answers
   * whether it did.
   */
  allocateAt(first: number, count: number): Promise<boolean> {
    const rc = this.refcounts;
    return this.#meta.run(() => rc.allocateAt(first, count));
  }

  /**
   * Allocates `count` single clusters, each the first free one in turn (as
   * L2 tables allocated one after another land), with one refcount write
   * per block and without growing the file: the caller writes each of them
   * in full, then records the end ({@link noteWritten}).
   */
  allocateEach(count: number): Promise<number[]> {
    const rc = this.refcounts;
    return this.#meta.run(async () => {
      const out: number[] = [];
      const batch = new RefcountBatch();
      try {
        for (let i = 0; i < count; i++) out.push(await rc.allocate(1, batch));
      } finally {
        // Also after a failure: what memory counts, the disk counts (a leak at worst).
        await rc.writeBatch(batch);
      }
      return out;
    });
  }

  /**
   * Runs `write`, which fills clusters [offset, offset + bytes) this
   * allocator just handed out and nothing points at yet; should it fail,
   * they are given back ({@link giveBack}) before the error goes on.
   */
  async writeFresh(offset: number, bytes: number, write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (error) {
      await this.giveBack(offset, bytes);
      throw error;
    }
  }

  /**
   * Releases [offset, offset + bytes), allocated for a write that failed
   * before anything pointed at it, as qemu gives back a failed allocation
   * (instead of leaving leaks). A release that fails too is ignored: it
   * leaves its leak, and the caller reports the write's error.
   */
  async giveBack(offset: number, bytes: number): Promise<void> {
    await this.release(offset, bytes).catch(() => undefined);
  }

  /** Records that the file now reaches at least `end` (a data write past its old end). */
  noteWritten(end: number): void {
    this.#img.noteFileEnd(end);
  }

  /**
   * Grows the file over every allocated cluster (new refcount blocks
   * included), so that no mapped cluster lies past its end. Never shrinks.
   * Caller holds the metadata lock.
   */
  async #growFile(): Promise<void> {
    const img = this.#img;
    const end = this.refcounts.endCluster * img.geom.clusterSize;
    if (end > img.fileSize) {
      await img.storage.truncate(end);
      img.noteFileEnd(end);
    }
  }

  /** A guest read starts: releases wait until it ends. */
  readStarted(): void {
    this.#activeReads++;
  }

  /**
   * A guest read ended; the last one starts the postponed releases. Their
   * failure is kept for the next flush ({@link takeReleaseError}).
   */
  readEnded(): void {
    if (--this.#activeReads === 0 && this.#pendingReleases.length > 0) this.drainReleases().catch((e: unknown) => void (this.#releaseError ??= e));
  }

  /** The failure of postponed releases started by {@link readEnded}, taken (a flush reports it once). */
  takeReleaseError(): unknown {
    const e = this.#releaseError;
    this.#releaseError = undefined;
    return e;
  }

  /**
   * Drops one reference from each host cluster of [offset, offset + bytes).
   * While guest reads are in flight the drop waits for them.
   */
  async release(offset: number, bytes: number): Promise<void> {
    if (this.#activeReads > 0) {
      this.#pendingReleases.push({ offset, bytes });
      return;
    }
    await this.#releaseNow(offset, bytes);
  }

  /** Performs the releases that waited for reads; called when the last read finishes, and on flush. */
  async drainReleases(): Promise<void> {
    const pending = this.#pendingReleases;
    while (pending.length && this.#activeReads === 0) {
      const r = pending.shift()!;
      await this.#releaseNow(r.offset, r.bytes);
    }
  }

  async #releaseNow(offset: number, bytes: number): Promise<void> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    if (this.#ctail) {
      const tail = Math.floor(this.#ctail.offset / cs);
      if (tail >= Math.floor(offset / cs) && tail <= Math.floor((offset + bytes - 1) / cs)) this.#ctail = undefined;
    }
    // The bytes may be reused: forget what was decompressed or cached from them.
    img.decompressed.clear();
    img.cache.delete(offset);
    await this.#meta.run(() => this.refcounts.release(offset, bytes));
  }

  /**
   * Forgets the free tail of the last compressed cluster: refcounts changed
   * without this allocator (a snapshot commit writes them in bulk), so that
   * cluster may have been freed and handed out again (as an L2 table, or
   * a data cluster that packing would overwrite).
   */
  forgetCompressedTail(): void {
    this.#ctail = undefined;
  }

  /** Releases what an L2 entry pointed to (data cluster or compressed bytes), after checking it is no metadata. */
  async releaseEntry(e: Entry): Promise<void> {
    const img = this.#img;
    // A data cluster that is also metadata is corruption: dropping its reference would free the metadata.
    const map = img.overlap;
    if (e.compressed) map?.check(img.file, e.compressed.host, e.compressed.size);
    else if (e.host !== undefined && !img.dataFile) map?.check(img.file, e.host, img.geom.clusterSize);
    if (e.compressed) await this.release(e.compressed.host, e.compressed.size);
    else if (e.host !== undefined && !img.dataFile) await this.release(e.host, img.geom.clusterSize);
  }

  /**
   * Releases what each entry pointed to, as {@link releaseEntry} does, with
   * the data clusters that follow each other in the file released as one
   * run: a refcount write per run, not per cluster (emptying a 512 MiB
   * overlay wrote 8192 two-byte refcount entries one at a time).
   */
  async releaseEntries(entries: readonly Entry[]): Promise<void> {
    const img = this.#img;
    const cs = img.geom.clusterSize;
    let runStart = -1;
    let runEnd = -1;
    const flush = async () => {
      if (runStart < 0) return;
      // Data clusters that are also metadata are corruption: dropping their references would free the metadata.
      img.overlap?.check(img.file, runStart, runEnd - runStart);
      const [from, to] = [runStart, runEnd];
      runStart = runEnd = -1;
      await this.release(from, to - from);
    };
    for (const e of entries) {
      if (e.compressed || e.host === undefined || img.dataFile) {
        await flush();
        await this.releaseEntry(e);
      } else if (e.host === runEnd) runEnd += cs;
      else {
        await flush();
        runStart = e.host;
        runEnd = e.host + cs;
      }
    }
    await flush();
  }

  /**
   * Finds room for compressed bytes of each length, in order (see
   * {@link #placeCompressed}). The refcount blocks are written once per
   * call, and the file grown once, before it answers.
   */
  placeCompressed(lengths: readonly number[]): Promise<number[]> {
    return this.#meta.run(async () => {
      const out: number[] = [];
      const batch = new RefcountBatch();
      try {
        for (const length of lengths) out.push(await this.#placeCompressed(length, batch));
      } finally {
        // Also after a failure: what memory counts, the disk counts (a leak at worst, never a cluster in use counted free).
        await this.refcounts.writeBatch(batch);
      }
      await this.#growFile();
      return out;
    });
  }

  /** Finds room for compressed bytes: the tail of the last compressed cluster, or new clusters. Holds the metadata lock. */
  async #placeCompressed(length: number, batch: RefcountBatch): Promise<number> {
    const cs = this.#img.geom.clusterSize;
    const rc = this.refcounts;
    const tail = this.#ctail;
    const shared = tail ? await rc.get(Math.floor(tail.offset / cs)) : 0;
    // Share the tail cluster only while its refcount can still grow (refcount_bits 1 cannot share).
    if (tail && shared > 0 && shared < rc.maxRefcount) {
      const host = tail.offset;
      if (length <= tail.end - tail.offset) {
        await rc.add(Math.floor(host / cs), 1, 1, batch);
        this.#advanceTail(host + length, tail.end);
        return host;
      }
      // As qemu: the bytes run on into new clusters right after the tail, when those are free, so that
      // compressed clusters pack without a gap (data compressing to more than half a cluster would
      // otherwise take a whole cluster each).
      const more = Math.ceil((length - (tail.end - tail.offset)) / cs);
      if (await rc.allocateAt(tail.end / cs, more, batch)) {
        await rc.add(Math.floor(host / cs), 1, 1, batch);
        this.#advanceTail(host + length, tail.end + more * cs);
        return host;
      }
    }
    const count = Math.ceil(length / cs);
    const host = await rc.allocate(count, batch);
    this.#advanceTail(host + length, host + count * cs);
    return host;
  }

  /**
   * The next compressed cluster starts at the byte after this one, as qemu
   * packs them: descriptors address bytes, and a reader stops at the end of
   * the compressed stream, so the bytes that share its last sector are never
   * taken for its own.
   */
  #advanceTail(used: number, end: number): void {
    this.#ctail = used < end ? { offset: used, end } : undefined;
  }
}
