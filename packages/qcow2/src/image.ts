/**
 * Qcow2Disk: an open qcow2 image (or one of its internal snapshots) as a
 * Disk: reads, extents, info, and the write paths of the writer.
 */
import { CallOrder, ERROR_CODES, ImageError, checkDiskRange, diskClosedError, extentRange, mergeExtents, unsupported, readOnlyError, invalidArg } from '@img/block';
import type { Disk, Extent, ExtentOptions, ImageInfo, SnapshotInfo, Storage, WriteZeroesOptions } from '@img/block';
import { INCOMPAT_DIRTY, AUTOCLEAR_DATA_FILE_RAW, EXT_BACKING_FORMAT } from './constants.js';
import { hasFeature, type Qcow2Header } from './header.js';
import { stringExtension, type HeaderExtension } from './extensions.js';
import { snapshotInfo } from './snapshot.js';
import { segmentExtent, readRange, type MappingView } from './reader.js';
import { qcow2HostSegments } from './host-runs.js';
import { Qcow2Writer } from './writer.js';
import { createSnapshot, applySnapshot, deleteSnapshot, type SnapshotCreateOptions } from './snapshot-ops.js';
import { beforeFirstWrite, markCorrupt, refreshOverlapMap, readL1, writeHeader, rewriteHeaderCluster, type Qcow2State } from './state.js';
import { qcow2Info } from './info.js';
import { checkResize, resizeLayer } from './resize.js';
import { writeCompressedData } from './compressed-write.js';

const FORMAT = 'qcow2';

/**
 * A qcow2 image (or one of its internal snapshots) as a Disk.
 *
 * @example
 * ```ts
 * await using disk = await openQcow2(await FileStorage.open('a.qcow2'), { resolver: fileResolver });
 * const bytes = await disk.read(0, 4096);
 * ```
 */
export class Qcow2Disk implements Disk {
  readonly format = 'qcow2';
  readonly readOnly: boolean;
  /** The snapshot this view shows, if it is not the active layer. */
  readonly snapshot: SnapshotInfo | undefined;
  #state: Qcow2State;
  #view: MappingView;
  #owner: boolean;
  #closed = false;

  /** @internal Use {@link openQcow2}. */
  constructor(state: Qcow2State, view: MappingView, options: { readOnly: boolean; owner: boolean; snapshot?: SnapshotInfo }) {
    this.#state = state;
    this.#view = view;
    this.readOnly = options.readOnly;
    this.#owner = options.owner;
    this.snapshot = options.snapshot;
    states.set(this, { state, view });
  }

  get storage(): Storage {
    return this.#state.storage;
  }

  get size(): number {
    return this.#view.size;
  }

  /** The decoded header (a copy). */
  get header(): Qcow2Header {
    return { ...this.#state.header };
  }

  /** Header extensions in file order, unknown ones included. */
  get extensions(): readonly HeaderExtension[] {
    return this.#state.extensions;
  }

  get clusterSize(): number {
    return this.#state.geom.clusterSize;
  }

  /** The backing image, if one is open. */
  get backing(): Disk | undefined {
    return this.#state.backing;
  }

  /** L2 cache counters (for tests and tuning). */
  get l2CacheStats(): { hits: number; misses: number; tables: number; capacity: number } {
    const c = this.#state.cache;
    return { ...c.stats, tables: c.size, capacity: c.capacity };
  }

  #check(): void {
    if (this.#closed) throw diskClosedError(FORMAT, this.#state.file);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#check();
    checkDiskRange(FORMAT, this.#view.size, offset, length, this.#state.file);
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.#check();
    checkDiskRange(FORMAT, this.#view.size, offset, target.length, this.#state.file);
    if (target.length === 0) return;
    const s = this.#state;
    s.activeReads++;
    try {
      await readRange(s, s, this.#view, offset, target);
    } finally {
      if (--s.activeReads === 0 && s.pendingReleases.length && s.writer) {
        s.writer.drainReleases().catch((e: unknown) => void (s.deferredError ??= e));
      }
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const w = this.#writable(offset, data.length);
    if (!data.length) return;
    return this.#ordered(w, offset, data.length, () => {
      // A write over allocated clusters starts at once (no metadata changes, no bitmaps to update).
      const direct = this.#state.bitmaps ? undefined : w.writeInPlace(offset, data);
      return direct ?? this.#inOrder(w, offset, data.length, () => w.write(offset, data));
    });
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    const w = this.#writable(offset, length);
    if (length) await this.#ordered(w, offset, length, () => this.#inOrder(w, offset, length, () => w.zeroOrDiscard(offset, length, 'zero', options.mayUnmap ?? true)));
  }

  async discard(offset: number, length: number): Promise<void> {
    const w = this.#writable(offset, length);
    if (length) await this.#ordered(w, offset, length, () => this.#inOrder(w, offset, length, () => w.zeroOrDiscard(offset, length, 'discard', true)));
  }

  /**
   * Operations that pause before they take their places in the table
   * locks' queues (a compressed write compresses first; before the first
   * write, with dirty bitmaps or while a compressed write runs, every
   * operation awaits the header update or the bitmaps) register in
   * {@link #order}, and later operations that overlap them wait for them
   * to finish: overlapping operations take effect in call order, whatever
   * their kind. The others take their places before their first pause,
   * which keeps that order by itself.
   */
  #order = new CallOrder();

  #ordered(w: Qcow2Writer, offset: number, length: number, op: () => Promise<void>): Promise<void> {
    return this.#order.run(offset, length, op, { register: !w.inOrder || this.#state.bitmaps !== undefined });
  }

  /** Runs an operation on the whole disk (resize, snapshots) after every registered operation called before it. */
  #wholeDisk<T>(op: () => Promise<T>): Promise<T> {
    return this.#order.run(0, Infinity, op);
  }

  /**
   * Runs a guest operation after {@link #changing}, keeping call order:
   * until `op` has taken its places in the table locks' queues (which it
   * does before it returns), later operations cannot overtake it (see
   * TableWriter.hold).
   */
  async #inOrder(w: Qcow2Writer, offset: number, length: number, op: () => Promise<void>): Promise<void> {
    await this.#guard(async () => {
      let running: Promise<void>;
      const ready = w.inOrder && !this.#state.bitmaps;
      w.hold();
      try {
        if (!ready) await this.#changing(offset, length);
        running = op();
      } finally {
        w.unhold();
      }
      await running;
    });
  }

  /**
   * Writes whole clusters compressed (`offset` cluster-aligned, `data` a
   * multiple of the cluster size, or ending at the end of the disk). A
   * cluster that does not get smaller is stored uncompressed.
   */
  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const w = this.#writable(offset, data.length);
    const s = this.#state;
    const cs = s.geom.clusterSize;
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== this.size)) {
      throw invalidArg(FORMAT, `writeCompressed needs whole clusters (${cs} bytes) at a cluster boundary, got ${offset}+${data.length}`, { field: 'offset' });
    }
    if (s.dataFile) throw unsupported(FORMAT, s.file, 'compressed clusters cannot be written to an image with an external data file');
    // Compression comes before the writer sees the clusters: later overlapping operations wait for it
    // (registered in the call order), and the others take the locked path meanwhile.
    await this.#order.run(
      offset,
      data.length,
      async () => {
        w.hold();
        try {
          await this.#guard(async () => {
            await this.#changing(offset, data.length);
            await writeCompressedData(s, w, offset, data);
          });
        } finally {
          w.unhold();
        }
      },
      { register: true },
    );
  }

  /** Changes the virtual size: growing always works; shrinking needs `{ shrink: true }` and drops the data past the new end. */
  async resize(newSize: number, options: { shrink?: boolean } = {}): Promise<void> {
    const w = this.#writable(0, 0);
    checkResize(this.#state, this.#view.size, newSize, options);
    // Writes in flight finish first and new ones wait: the L1 table may move.
    await this.#wholeDisk(() =>
      this.#guard(() =>
        w.exclusive(async () => {
          try {
            await resizeLayer(this.#state, this.#view, w, newSize);
          } finally {
            await refreshOverlapMap(this.#state, this.#view);
          }
        }),
      ),
    );
  }

  /**
   * Takes an internal snapshot of the active layer (qemu-img snapshot -c).
   * Writes started before it finish first; writes started after wait.
   */
  async createSnapshot(name: string, options: SnapshotCreateOptions = {}): Promise<SnapshotInfo> {
    const w = this.#writable(0, 0);
    let made: SnapshotInfo | undefined;
    await this.#wholeDisk(() =>
      this.#guard(() =>
        w.exclusive(async () => {
          try {
            made = snapshotInfo(await createSnapshot(this.#state, this.#view, name, options), this.#state.header.size);
          } finally {
            await refreshOverlapMap(this.#state, this.#view);
          }
        }),
      ),
    );
    return made!;
  }

  /** Reverts the active layer to internal snapshot `idOrName` (qemu-img snapshot -a); the disk takes its size. */
  async applySnapshot(idOrName: string): Promise<void> {
    const w = this.#writable(0, 0);
    await this.#wholeDisk(() =>
      this.#guard(async () => {
        // Switching snapshots changes every byte as far as dirty bitmaps know.
        await this.#changing(0, this.#view.size);
        await w.exclusive(async () => {
          try {
            await applySnapshot(this.#state, this.#view, idOrName);
          } finally {
            await refreshOverlapMap(this.#state, this.#view);
          }
        });
        await this.#changing(0, this.#view.size);
      }),
    );
  }

  /** Deletes internal snapshot `idOrName` (qemu-img snapshot -d). */
  async deleteSnapshot(idOrName: string): Promise<void> {
    const w = this.#writable(0, 0);
    await this.#wholeDisk(() =>
      this.#guard(() =>
        w.exclusive(async () => {
          try {
            await deleteSnapshot(this.#state, this.#view, idOrName);
          } finally {
            await refreshOverlapMap(this.#state, this.#view);
          }
        }),
      ),
    );
  }

  /**
   * Rewrites the backing file reference only (qemu-img rebase -u): the
   * name and format stored in the image, or none. Content is not touched;
   * the backing image open now stays in use until the image is reopened.
   */
  async setBacking(name: string | undefined, format?: string): Promise<void> {
    const w = this.#writable(0, 0);
    const s = this.#state;
    if (name !== undefined && (name.length === 0 || hasFeature(s.header.autoclearFeatures, AUTOCLEAR_DATA_FILE_RAW))) {
      throw invalidArg(FORMAT, name.length === 0 ? 'empty backing file name' : 'an image with a raw external data file cannot have a backing file', { field: 'backing_file' });
    }
    await this.#wholeDisk(() =>
      this.#guard(() =>
        w.exclusive(async () => {
          const others = s.extensions.filter((e) => e.type !== EXT_BACKING_FORMAT);
          s.extensions = name !== undefined && format !== undefined ? [stringExtension(EXT_BACKING_FORMAT, format), ...others] : others;
          s.backingName = name;
          s.backingInfo = undefined;
          await rewriteHeaderCluster(s);
          await s.storage.flush();
        }),
      ),
    );
  }

  /** Deallocates every cluster of the active layer (and its L2 tables) so that reads fall through to the backing image (commit). */
  async makeEmpty(): Promise<void> {
    const w = this.#writable(0, 0);
    await this.#wholeDisk(() =>
      this.#guard(() =>
        w.exclusive(async () => {
          await this.#changing(0, this.#view.size);
          if (this.#view.size) await w.zeroOrDiscardExclusive(0, this.#view.size, 'discard', true);
          await w.dropTablesFrom(0);
          await this.#state.storage.flush();
        }),
      ),
    );
  }

  /** Before a change: the once-per-session header update, then the dirty bitmaps learn the range. */
  async #changing(offset: number, length: number): Promise<void> {
    await beforeFirstWrite(this.#state);
    await this.#state.bitmaps?.change(offset, length);
  }

  #writable(offset: number, length: number): Qcow2Writer {
    this.#check();
    const s = this.#state;
    if (this.readOnly || !s.writer) throw readOnlyError(FORMAT, s.file);
    if (s.corruptFound) throw Qcow2Writer.corruptError(s.file);
    checkDiskRange(FORMAT, this.#view.size, offset, length, s.file);
    return s.writer;
  }

  /** Runs a write; corrupt metadata found on the way sets the corrupt bit (spec: incompatible bit 1). */
  async #guard(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (ImageError.isInstance(e) && e.code === ERROR_CODES.CORRUPT) await markCorrupt(this.#state);
      throw e;
    }
  }

  async flush(): Promise<void> {
    this.#check();
    const s = this.#state;
    if (this.readOnly || !s.writer) return;
    await s.writer.settle();
    await s.writer.drainReleases();
    await s.bitmaps?.commit();
    if (s.deferredError !== undefined) {
      const e = s.deferredError;
      s.deferredError = undefined;
      throw e;
    }
    await s.dataFile?.flush();
    await s.storage.flush();
    // Lazy refcounts: refcounts are exact once everything is flushed, so the image is clean again.
    if (s.dirtySet) {
      s.header.incompatibleFeatures &= ~(1n << BigInt(INCOMPAT_DIRTY));
      await writeHeader(s);
      await s.storage.flush();
      s.dirtySet = false;
      s.firstWrite = undefined;
      s.firstWriteDone = false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    const errors: unknown[] = [];
    // A failed flush still closes the files; its error is the one reported.
    if (this.#owner && !this.readOnly && this.#state.writer && !this.#state.corruptFound) await this.flush().catch((e: unknown) => errors.push(e));
    this.#closed = true;
    if (!this.#owner) {
      if (errors.length) throw errors[0];
      return;
    }
    const s = this.#state;
    // Without a flush (corrupt, or an error above), deferred L2 writes still finish before the file closes.
    await s.writer?.settle().catch((e: unknown) => errors.push(e));
    s.cache.clear();
    s.decompressed.clear();
    for (const close of [() => s.backing?.close(), () => s.dataFile?.close(), () => s.storage.close()]) {
      try {
        await close();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Extents from L1/L2 metadata only. Unallocated ranges are resolved
   * through the backing chain (depth = layer), unless `topOnly`.
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#check();
    const { start, end } = extentRange(options, this.#view.size);
    return mergeExtents(this.#extentRuns(start, end, options?.topOnly ?? false, options?.hostOffsets ?? false));
  }

  async *#extentRuns(start: number, end: number, topOnly: boolean, hostOffsets: boolean): AsyncGenerator<Extent> {
    const s = this.#state;
    const fileName = s.dataFile?.name ?? s.storage.name;
    for await (const seg of qcow2HostSegments(s, this.#view, start, end)) {
      const backing = s.backing;
      if (seg.kind !== 'hole' || topOnly || !backing) {
        yield segmentExtent(seg, hostOffsets, fileName);
        continue;
      }
      const inBacking = Math.max(0, Math.min(seg.length, backing.size - seg.offset));
      if (inBacking > 0) {
        for await (const e of backing.extents({ offset: seg.offset, length: inBacking, hostOffsets })) {
          yield { ...e, depth: (e.depth ?? 0) + 1 };
        }
      }
      if (inBacking < seg.length) yield { offset: seg.offset + inBacking, length: seg.length - inBacking, kind: 'hole', depth: 0 };
    }
  }

  /** Internal snapshots (qemu-img snapshot -l). */
  get snapshots(): SnapshotInfo[] {
    return this.#state.snapshots.map((s) => snapshotInfo(s, this.#state.header.size));
  }

  /**
   * Opens internal snapshot `idOrName` (id first, then name, as qemu) as a
   * read-only Disk of the snapshot's own size. It shares this image's
   * storage: close it before closing the image.
   */
  async openSnapshot(idOrName: string): Promise<Qcow2Disk> {
    this.#check();
    return openSnapshotView(this.#state, idOrName);
  }

  /** What qemu-img info shows. */
  async info(): Promise<ImageInfo> {
    this.#check();
    return qcow2Info(this.#state, this.#view.size, this.snapshots);
  }
}

export async function openSnapshotView(state: Qcow2State, idOrName: string, owner = false): Promise<Qcow2Disk> {
  const snap = state.snapshots.find((s) => s.id === idOrName) ?? state.snapshots.find((s) => s.name === idOrName);
  if (!snap) {
    throw new ImageError(ERROR_CODES.NOT_FOUND, `${FORMAT}: ${state.file}: no snapshot with id or name "${idOrName}"`, { data: { format: FORMAT, file: state.file, field: 'snapshot' } });
  }
  const size = snap.diskSize ?? state.header.size;
  const l1 = await readL1(state.storage, snap.l1TableOffset, snap.l1Size);
  return new Qcow2Disk(state, { l1, l1Offset: snap.l1TableOffset, size }, { readOnly: true, owner, snapshot: snapshotInfo(snap, state.header.size) });
}

const states = new WeakMap<object, { state: Qcow2State; view: MappingView }>();

/** @internal The state behind a Qcow2Disk (for check). */
export function stateOf(disk: Qcow2Disk): { state: Qcow2State; view: MappingView } {
  const s = states.get(disk);
  if (!s) throw new TypeError('not a Qcow2Disk');
  return s;
}
