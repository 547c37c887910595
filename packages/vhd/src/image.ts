/**
 * VhdImage: the core of one open VHD. It owns the layout (VhdState: footer,
 * dynamic header, BAT, metadata regions), the sector bitmap cache, the
 * locks (a lock per block, the allocator's mutex, the call order of
 * overlapping writes, the gate that lets resize and rebase run alone) and
 * the allocator's memo of the file size. Operations (read.ts, write.ts,
 * allocator.ts, extents.ts, resize.ts, backing.ts) are functions over it;
 * VhdDisk (disk.ts) is the public facade; check and coalesce load it
 * directly. Internal: not exported from index.
 */
import { CallOrder, KeyedLock, diskClosedError, Mutex, checkDiskRange, readOnlyError } from '@img/block';
import type { VhdFooter } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import { FORMAT, type VhdState } from './state.js';

/** Sector bitmaps kept in memory at most (then the cache starts over). */
const BITMAP_CACHE_BYTES = 8 * 1024 * 1024;

/** The core of one open VHD (see the module comment); VhdDisk holds one privately. */
export class VhdImage {
  readonly state: VhdState;
  readonly readOnly: boolean;
  /** One lock per block: a block's data and bitmap change under it. */
  readonly locks = new KeyedLock();
  /** Block allocation (and anything that moves blocks or the footer) takes turns under it. */
  readonly allocator = new Mutex();
  /**
   * Call order of overlapping writes, zero writes and discards: a zero
   * write decides per block whether to write (the BAT, the parent) and
   * takes the block locks one after another, and a fixed disk's writes go
   * straight to the storage, so each operation registers its range and
   * waits for the earlier ones it overlaps to finish.
   */
  readonly order = new CallOrder();
  /** The file's size after the last block allocation, while `nextFree` is where it left it (saves a stat per block). */
  sizeAfterAlloc: { nextFree: number; size: number } | undefined;
  #closed = false;
  #bitmaps = new Map<number, Uint8Array>();
  #bitmapGeneration = 0;
  #inflight = 0;
  #drained: (() => void) | undefined;
  #gate: Promise<void> | undefined;

  constructor(state: VhdState, readOnly: boolean) {
    this.state = state;
    this.readOnly = readOnly || state.storage.readOnly;
  }

  get size(): number {
    return this.state.size;
  }
  get name(): string {
    return this.state.storage.name;
  }
  get uniqueId(): string {
    return this.state.footer.uniqueId;
  }
  get footer(): VhdFooter {
    return this.state.footer;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /** Throws ERR_IMG_CLOSED once closed. */
  assertOpen(): void {
    if (this.#closed) throw diskClosedError('vhd', this.name);
  }

  /** Open, writable, and [offset, offset + length) inside the disk. */
  assertWritable(offset: number, length: number): void {
    this.assertOpen();
    this.assertMutable();
    checkDiskRange(FORMAT, this.size, offset, length, this.name);
  }

  /** Open and writable. */
  assertMutable(): void {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError(FORMAT, this.name);
  }

  /** Is the bitmap of `block` in the cache? */
  hasBitmap(block: number): boolean {
    return this.#bitmaps.has(block);
  }

  /** The sector bitmap of an allocated block (cached). */
  async bitmap(block: number): Promise<Uint8Array> {
    const cached = this.#bitmaps.get(block);
    if (cached) return cached;
    const s = this.state;
    const at = s.bat[block]! * VHD_SECTOR;
    const bytes = new Uint8Array(s.bitmapBytes);
    // A reader does not hold the block lock: if a writer changed any bitmap
    // while this read was in flight, what was read may be stale; use it once
    // but do not cache it.
    const generation = this.#bitmapGeneration;
    await s.storage.readInto(at, bytes);
    const newer = this.#bitmaps.get(block);
    if (newer) return newer;
    if (generation !== this.#bitmapGeneration) return bytes;
    if (this.#bitmaps.size * s.bitmapBytes >= BITMAP_CACHE_BYTES) this.#bitmaps.clear();
    this.#bitmaps.set(block, bytes);
    return bytes;
  }

  /** Records the bitmap a writer has just written for `block`. */
  setBitmap(block: number, bitmap: Uint8Array): void {
    this.#bitmapGeneration++;
    this.#bitmaps.set(block, bitmap);
  }

  /** Forgets cached bitmaps and the allocator's memo (after blocks or the footer moved). */
  dropCaches(): void {
    this.sizeAfterAlloc = undefined;
    this.#bitmapGeneration++;
    this.#bitmaps.clear();
  }

  /** Runs an I/O operation; waits while an exclusive one (resize, rebase) runs. */
  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate) await this.#gate;
    this.#inflight++;
    try {
      return await fn();
    } finally {
      if (--this.#inflight === 0) this.#drained?.();
    }
  }

  /** Runs `fn` alone: new I/O waits, in-flight I/O is drained first. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate) await this.#gate;
    let open!: () => void;
    this.#gate = new Promise<void>((r) => (open = r));
    try {
      if (this.#inflight > 0) await new Promise<void>((r) => (this.#drained = r));
      this.#drained = undefined;
      return await fn();
    } finally {
      this.#gate = undefined;
      open();
    }
  }

  /** Closes the parent (if any), then the storage. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.state.parent?.close();
    } finally {
      await this.state.storage.close();
    }
  }
}
