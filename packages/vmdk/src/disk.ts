/**
 * VmdkDisk: the public face of an open VMDK. A thin facade: the open
 * image (VmdkImage) lives in a private field and every method hands it to
 * an operation (read.ts, write.ts, extents.ts, info.ts).
 */
import { CallOrder, DiskOperations, checkDiskData, checkDiskRange, extentRange, mergeExtents, readOnlyError, type Disk, type Extent, type ExtentOptions, type ImageInfo, type Storage, type WriteZeroesOptions } from '@img/block';
import { descriptorField, serializeDescriptor } from './descriptor.js';
import { extentRuns } from './extents.js';
import { FORMAT, type VmdkImage } from './image.js';
import { imageCid, imageParentCid, vmdkInfo } from './info.js';
import { readInto } from './read.js';
import { writeRange } from './write.js';

/** One extent of an open image as the descriptor lists it. */
export interface VmdkExtentInfo {
  /** SPARSE, FLAT, VMFS, ZERO, ... */
  type: string;
  /** Guest byte range. */
  start: number;
  length: number;
  /** The file it lives in (the storage's name); absent for ZERO extents. */
  file?: string;
  /** Sparse extents: grain size in bytes and whether grains are compressed. */
  grainSize?: number;
  compressed?: boolean;
}

/**
 * An open VMDK. Made by openVmdk and createVmdk.
 *
 * @example
 * ```ts
 * await using disk = await openVmdk(await FileStorage.open('a.vmdk'), { resolver: fileResolver });
 * for await (const e of disk.extents()) console.log(e.kind, e.offset, e.length);
 * ```
 */
export class VmdkDisk implements Disk {
  readonly format = FORMAT;
  #core: VmdkImage;
  /** Overlapping writes take effect in call order. */
  #order = new CallOrder();
  /** What close() waits for; refuses operations once it has started. */
  readonly #ops = new DiskOperations(FORMAT, () => this.#core.storage.name);

  /** @internal Use openVmdk or createVmdk. */
  constructor(core: VmdkImage) {
    this.#core = core;
  }

  get size(): number {
    return this.#core.size;
  }
  get readOnly(): boolean {
    return this.#core.readOnly;
  }
  get storage(): Storage {
    return this.#core.storage;
  }
  /** The descriptor's createType (monolithicSparse, streamOptimized, monolithicFlat, ...). */
  get createType(): string {
    return this.#core.createType;
  }
  /** The content id (CID) of this image. */
  get cid(): number {
    return imageCid(this.#core);
  }
  /** The parent's content id this image was made against (0xffffffff: no parent). */
  get parentCid(): number {
    return imageParentCid(this.#core);
  }
  /**
   * Whether the open parent's CID differs from {@link parentCid}: the
   * parent was written after this image was made (`img commit` and
   * `qemu-img commit` do that and leave the child as it is) or is another
   * disk. As in qemu-img, the image opens and its own grains read and
   * write, but a read that falls through to the parent and a write that
   * needs a new grain are ERR_IMG_MISMATCH unless opened with
   * `allowCidMismatch`.
   */
  get parentCidMismatch(): boolean {
    return this.#core.staleParent !== undefined;
  }
  /** The parent's name as the descriptor stores it (parentFileNameHint). */
  get parentFileNameHint(): string | undefined {
    return descriptorField(this.#core.descriptor, 'parentFileNameHint');
  }
  /** The open parent, if any. */
  get backing(): Disk | undefined {
    return this.#core.parent;
  }
  /** The descriptor as text (as it would be written now). */
  get descriptorText(): string {
    return serializeDescriptor(this.#core.descriptor);
  }
  /** The disk database (`ddb.*`) entries. */
  get ddb(): Readonly<Record<string, string>> {
    return Object.fromEntries(this.#core.descriptor.ddb);
  }
  /** The extents, in guest order. */
  get extentList(): VmdkExtentInfo[] {
    return this.#core.extents.map((e) => ({
      type: e.type,
      start: e.start,
      length: e.length,
      ...(e.kind !== 'zero' ? { file: e.storage.name } : {}),
      ...(e.kind === 'sparse' ? { grainSize: e.map.grainBytes, compressed: e.map.compressed } : {}),
    }));
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#ops.run(async () => {
      this.#core.checkOpen();
      checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
      const out = new Uint8Array(length);
      await readInto(this.#core, offset, out);
      return out;
    });
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      this.#core.checkOpen();
      checkDiskData(FORMAT, target, 'target', this.storage.name);
      checkDiskRange(FORMAT, this.size, offset, target.length, this.storage.name);
      return readInto(this.#core, offset, target);
    });
  }

  #checkWrite(offset: number, length: number): void {
    this.#core.checkOpen();
    if (this.readOnly) throw readOnlyError(FORMAT, this.storage.name);
    checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      checkDiskData(FORMAT, data, 'data', this.storage.name);
      this.#checkWrite(offset, data.length);
      return this.#order.run(offset, data.length, () => writeRange(this.#core, offset, data.length, data), { register: true });
    });
  }

  writeZeroes(offset: number, length: number, _options: WriteZeroesOptions = {}): Promise<void> {
    return this.#ops.run(() => this.#writeZeroes(offset, length));
  }

  #writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWrite(offset, length);
    return this.#order.run(offset, length, () => writeRange(this.#core, offset, length, undefined), { register: true });
  }

  /** Reads as zeros afterwards (or the parent's bytes where this layer has none): grains are not given back. */
  discard(offset: number, length: number): Promise<void> {
    return this.#ops.run(() => this.#writeZeroes(offset, length));
  }

  flush(): Promise<void> {
    return this.#ops.run(async () => {
      this.#core.checkOpen();
      if (this.readOnly) return;
      for (const s of new Set(this.#storages())) await s.flush();
    });
  }

  #storages(): Storage[] {
    return [this.#core.storage, ...this.#core.owned];
  }

  /**
   * Waits for the operations called before it to settle, then closes the
   * image, its extent files and its parent (a streamOptimized image being
   * created is finished first; a writable image is flushed). Operations
   * called after it are refused (ERR_IMG_CLOSED).
   */
  close(): Promise<void> {
    return this.#ops.close(() => this.#core.close());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The allocation map from grain tables and extent types alone (never data). */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#ops.check();
    this.#core.checkOpen();
    const { start, end } = extentRange(options, this.size);
    return mergeExtents(extentRuns(this.#core, start, end, options ?? {}));
  }

  /** What `img info` shows, with qemu-img's vmdk fields under formatSpecific. */
  info(): Promise<ImageInfo> {
    return this.#ops.run(async () => {
      this.#core.checkOpen();
      return vmdkInfo(this.#core);
    });
  }
}
