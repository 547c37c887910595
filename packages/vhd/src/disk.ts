/**
 * VhdDisk: the public Disk of an open VHD, a thin facade over its core
 * (VhdImage, held privately). Every method is one operation over the core.
 */
import { type Disk, type Extent, type ExtentOptions, type ImageInfo, type ResizeOptions, type Storage, type WriteZeroesOptions, DiskOperations, checkDiskData, checkDiskRange, unsupported } from '@img/block';
import { makeVhdEmpty, setVhdBacking } from './backing.js';
import { vhdExtentBatches, vhdExtents, vhdSectorLocation, type VhdSectorLocation } from './extents.js';
import type { VhdImage } from './image.js';
import { vhdInfo } from './info.js';
import type { VhdProblem } from './problems.js';
import { readVhdInto } from './read.js';
import { resizeVhd } from './resize.js';
import { FORMAT, type VhdState } from './state.js';
import { writeVhd, writeVhdZeroes } from './write.js';

export type { VhdSectorLocation } from './extents.js';

/**
 * An open VHD. Created by openVhd / createVhd / openVhdChain.
 *
 * @example
 * ```ts
 * await using disk = await openVhd(await FileStorage.open('a.vhd'));
 * const first = await disk.read(0, 512);
 * ```
 */
export class VhdDisk implements Disk {
  readonly format = FORMAT;
  readonly readOnly: boolean;
  readonly #core: VhdImage;
  /** What close() waits for; refuses operations once it has started. */
  readonly #ops = new DiskOperations(FORMAT, () => this.#core.name);

  /** Use openVhd, createVhd or openVhdChain: `core` is the package's internal image object. */
  constructor(core: VhdImage) {
    this.#core = core;
    this.readOnly = core.readOnly;
  }

  get size(): number {
    return this.#core.size;
  }
  get storage(): Storage {
    return this.#core.state.storage;
  }
  /** "fixed", "dynamic" or "differencing". */
  get type(): VhdState['type'] {
    return this.#core.state.type;
  }
  /** The footer in use (a copy). */
  get footer(): VhdState['footer'] {
    return { ...this.#core.state.footer };
  }
  /** The unique id of this image. */
  get uniqueId(): string {
    return this.#core.uniqueId;
  }
  /** The open parent of a differencing disk (undefined with noBacking). */
  get parent(): Disk | undefined {
    return this.#core.state.parent;
  }
  /** The open parent (the generic Disk name for `parent`, used by img commit and rebase). */
  get backing(): Disk | undefined {
    return this.#core.state.parent;
  }
  /** Problems seen while opening that did not prevent it (footer copy mismatch, checksums, parent timestamp, what a crash left: see checkVhd). */
  get problems(): readonly VhdProblem[] {
    const s = this.#core.state;
    const r = s.repairable;
    return r && r.length ? [...s.problems, ...r] : s.problems;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#ops.run(async () => {
      this.#core.assertOpen();
      checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
      const out = new Uint8Array(length);
      await readVhdInto(this.#core, offset, out);
      return out;
    });
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      checkDiskData(FORMAT, target, 'target', this.storage.name);
      return readVhdInto(this.#core, offset, target);
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#ops.run(() => {
      checkDiskData(FORMAT, data, 'data', this.storage.name);
      return writeVhd(this.#core, offset, data);
    });
  }

  writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    return this.#ops.run(() => writeVhdZeroes(this.#core, offset, length, options));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#ops.run(() => writeVhdZeroes(this.#core, offset, length, { mayUnmap: true }));
  }

  flush(): Promise<void> {
    return this.#ops.run(async () => {
      this.#core.assertOpen();
      if (!this.readOnly) await this.storage.flush();
    });
  }

  /**
   * Waits for the operations called before it to settle, flushes a
   * writable disk, then closes the parent and the file (even when the
   * flush fails; its error is then the one reported). Operations called
   * after it are refused (ERR_IMG_CLOSED).
   */
  close(): Promise<void> {
    return this.#ops.close(async () => {
      try {
        if (!this.readOnly && !this.#core.closed) await this.storage.flush();
      } finally {
        await this.#core.close();
      }
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * The allocation map from the BAT and the sector bitmaps (never data).
   * Dynamic disks: unallocated blocks and clear sectors are `zero`.
   * Differencing disks: they fall through to the parent (depth + 1), or are
   * `hole` with `topOnly` or without a parent.
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#ops.check();
    return vhdExtents(this.#core, options);
  }

  /** The same extents in arrays, a few blocks' worth at a time (see Disk.extentBatches). */
  extentBatches(options?: ExtentOptions): AsyncIterable<Extent[]> {
    this.#ops.check();
    return vhdExtentBatches(this.#core, options);
  }

  /** Which layer and file offset hold the sector containing `offset`. */
  sectorLocation(offset: number): Promise<VhdSectorLocation> {
    return this.#ops.run(() => vhdSectorLocation(this.#core, offset));
  }

  /** What `img info` shows, with VHD details under formatSpecific. */
  info(): Promise<ImageInfo> {
    return this.#ops.run(async () => {
      this.#core.assertOpen();
      return vhdInfo(this.#core.state);
    });
  }

  /** Grows (or with `shrink`, shrinks) the disk. See resize.ts. Preallocation other than `off` is refused (qemu cannot resize a VHD at all). */
  resize(newSize: number, options: ResizeOptions = {}): Promise<void> {
    return this.#ops.run(() => {
      const prealloc = options.preallocation ?? 'off';
      if (prealloc !== 'off') throw unsupported(FORMAT, this.storage.name, `preallocation "${prealloc}" on resize is not supported for VHD (new blocks are allocated as they are written)`, { field: 'preallocation' });
      return resizeVhd(this.#core, newSize, { shrink: options.shrink ?? false });
    });
  }

  /**
   * Deallocates every block so reads fall through to the parent (zeros in a
   * dynamic disk): what `img commit` does to the top after copying it down.
   */
  makeEmpty(): Promise<void> {
    return this.#ops.run(() => makeVhdEmpty(this.#core));
  }

  /**
   * Rewrites the parent reference (rebase -u): locators, unicode name and,
   * when the resolver finds the new parent, its unique id and timestamp;
   * `undefined` makes the disk dynamic. See backing.ts.
   */
  setBacking(name: string | undefined, format?: string): Promise<void> {
    return this.#ops.run(() => setVhdBacking(this.#core, name, format));
  }
}
