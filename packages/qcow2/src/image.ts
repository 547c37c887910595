/**
 * Qcow2Disk: the public Disk of an open qcow2 image (or of one of its
 * internal snapshots, read-only), a thin facade over the image's core
 * (Qcow2Image, core.ts, held privately). Every method is one operation
 * over the core.
 */
import { DiskOperations, checkDiskData, checkDiskRange, readOnlyError } from '@img/block';
import type { Disk, Extent, ExtentOptions, ImageInfo, ResizeOptions, SnapshotInfo, Storage, WriteZeroesOptions } from '@img/block';
import type { Qcow2Header } from './header.js';
import type { HeaderExtension } from './extensions.js';
import { snapshotInfo } from './snapshot.js';
import type { MappingView } from './mapping-view.js';
import type { Qcow2Image } from './core.js';
import { closeQcow2, flushQcow2, readQcow2Into, writeQcow2, writeQcow2Compressed, writeQcow2Zeroes, zeroOrDiscardQcow2 } from './io.js';
import { qcow2ExtentBatches, qcow2Extents } from './extents.js';
import { createQcow2Snapshot, applyQcow2Snapshot, deleteQcow2Snapshot, snapshotView, type SnapshotCreateOptions } from './snapshot-ops.js';
import { setQcow2Backing, makeQcow2Empty } from './rebase.js';
import { qcow2Info } from './info.js';
import { resizeQcow2 } from './resize.js';

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
  readonly #core: Qcow2Image;
  /** The L1 table this disk reads through: the core's active one, or a snapshot's. */
  readonly #view: MappingView;
  /** Closing this disk closes the image (else it is a view that shares it). */
  readonly #owner: boolean;
  /** What close() waits for; refuses operations once it has started. */
  readonly #ops = new DiskOperations(FORMAT, () => this.#core.file);

  /** @internal Use {@link openQcow2}: `core` is the package's internal image object. */
  constructor(core: Qcow2Image, options: { owner: boolean; snapshot?: { view: MappingView; info: SnapshotInfo } }) {
    this.#core = core;
    this.#view = options.snapshot?.view ?? core.active;
    this.readOnly = core.readOnly || options.snapshot !== undefined;
    this.#owner = options.owner;
    this.snapshot = options.snapshot?.info;
  }

  get storage(): Storage {
    return this.#core.storage;
  }

  get size(): number {
    return this.#view.size;
  }

  /** The decoded header (a copy). */
  get header(): Qcow2Header {
    return { ...this.#core.header };
  }

  /** Header extensions in file order, unknown ones included. */
  get extensions(): readonly HeaderExtension[] {
    return this.#core.extensions;
  }

  get clusterSize(): number {
    return this.#core.geom.clusterSize;
  }

  /** The backing image, if one is open. */
  get backing(): Disk | undefined {
    return this.#core.backing;
  }

  /** L2 cache counters (for tests and tuning). */
  get l2CacheStats(): { hits: number; misses: number; tables: number; capacity: number } {
    const c = this.#core.cache;
    return { ...c.stats, tables: c.size, capacity: c.capacity };
  }

  /** The image under a view may have been closed by its owner. */
  #check(): void {
    this.#core.assertOpen();
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#ops.run(async () => {
      this.#check();
      checkDiskRange(FORMAT, this.#view.size, offset, length, this.#core.file);
      const out = new Uint8Array(length);
      await readQcow2Into(this.#core, this.#view, offset, out);
      return out;
    });
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      this.#check();
      checkDiskData(FORMAT, target, 'target', this.#core.file);
      checkDiskRange(FORMAT, this.#view.size, offset, target.length, this.#core.file);
      return readQcow2Into(this.#core, this.#view, offset, target);
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      this.#mutable();
      checkDiskData(FORMAT, data, 'data', this.#core.file);
      return writeQcow2(this.#core, offset, data);
    });
  }

  writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    return this.#mutating(() => writeQcow2Zeroes(this.#core, offset, length, options));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#mutating(() => zeroOrDiscardQcow2(this.#core, offset, length, 'discard', true));
  }

  /**
   * Writes whole clusters compressed (`offset` cluster-aligned, `data` a
   * multiple of the cluster size, or ending at the end of the disk). A
   * cluster that does not get smaller is stored uncompressed.
   */
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      this.#mutable();
      checkDiskData(FORMAT, data, 'data', this.#core.file);
      return writeQcow2Compressed(this.#core, offset, data);
    });
  }

  /**
   * Changes the virtual size: growing always works; shrinking needs `{ shrink: true }` and drops the data past the
   * new end; `preallocation` allocates the space a grow adds (qemu-img resize --preallocation). Refused for a
   * version 2 image with internal snapshots, as qemu refuses it.
   */
  resize(newSize: number, options: ResizeOptions = {}): Promise<void> {
    return this.#mutating(() => resizeQcow2(this.#core, newSize, options));
  }

  /**
   * Takes an internal snapshot of the active layer (qemu-img snapshot -c).
   * Writes started before it finish first; writes started after wait.
   */
  createSnapshot(name: string, options: SnapshotCreateOptions = {}): Promise<SnapshotInfo> {
    return this.#mutating(() => createQcow2Snapshot(this.#core, name, options));
  }

  /** Reverts the active layer to internal snapshot `idOrName` (qemu-img snapshot -a); the disk takes its size. */
  applySnapshot(idOrName: string): Promise<void> {
    return this.#mutating(() => applyQcow2Snapshot(this.#core, idOrName));
  }

  /** Deletes internal snapshot `idOrName` (qemu-img snapshot -d). */
  deleteSnapshot(idOrName: string): Promise<void> {
    return this.#mutating(() => deleteQcow2Snapshot(this.#core, idOrName));
  }

  /**
   * Rewrites the backing file reference only (qemu-img rebase -u): the
   * name and format stored in the image, or none. Content is not touched;
   * the backing image open now stays in use until the image is reopened.
   */
  setBacking(name: string | undefined, format?: string): Promise<void> {
    return this.#mutating(() => setQcow2Backing(this.#core, name, format));
  }

  /** Deallocates every cluster of the active layer (and its L2 tables) so that reads fall through to the backing image (commit). */
  makeEmpty(): Promise<void> {
    return this.#mutating(() => makeQcow2Empty(this.#core));
  }

  flush(): Promise<void> {
    return this.#ops.run(async () => {
      this.#check();
      if (!this.readOnly) await flushQcow2(this.#core);
    });
  }

  /**
   * Waits for the operations called before it to settle, then flushes and
   * closes the image (a snapshot view closes only itself). Operations
   * called after it are refused (ERR_IMG_CLOSED).
   */
  close(): Promise<void> {
    return this.#ops.close(async () => {
      if (this.#owner) await closeQcow2(this.#core);
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Extents from L1/L2 metadata only. Unallocated ranges are resolved
   * through the backing chain (depth = layer), unless `topOnly`.
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#ops.check();
    this.#check();
    return qcow2Extents(this.#core, this.#view, options);
  }

  /** The same extents in arrays, an L2 table's worth or so at a time (see Disk.extentBatches). */
  extentBatches(options?: ExtentOptions): AsyncIterable<Extent[]> {
    this.#ops.check();
    this.#check();
    return qcow2ExtentBatches(this.#core, this.#view, options);
  }

  /** Internal snapshots (qemu-img snapshot -l). */
  get snapshots(): SnapshotInfo[] {
    return this.#core.snapshots.map((s) => snapshotInfo(s, this.#core.header.size));
  }

  /**
   * Opens internal snapshot `idOrName` (id first, then name, as qemu) as a
   * read-only Disk of the snapshot's own size. It shares this image's
   * storage: close it before closing the image.
   */
  openSnapshot(idOrName: string): Promise<Qcow2Disk> {
    return this.#ops.run(async () => {
      this.#check();
      return new Qcow2Disk(this.#core, { owner: false, snapshot: await snapshotView(this.#core, idOrName) });
    });
  }

  /** What qemu-img info shows. */
  info(): Promise<ImageInfo> {
    return this.#ops.run(() => {
      this.#check();
      return qcow2Info(this.#core, this.#view.size, this.snapshots);
    });
  }

  /** A snapshot view refuses changes as a read-only disk does. */
  #mutable(): void {
    this.#check();
    if (this.snapshot) throw readOnlyError(FORMAT, this.#core.file);
  }

  /** Runs a change of the image as an operation close() waits for. */
  #mutating<T>(op: () => Promise<T>): Promise<T> {
    return this.#ops.run(() => {
      this.#mutable();
      return op();
    });
  }
}
