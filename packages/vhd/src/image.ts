/**
 * VhdDisk: a fixed, dynamic or differencing VHD opened over a Storage.
 * Reads and writes are sector-granular inside blocks; metadata is written
 * after the data it describes (data and bitmap, then the BAT entry).
 */
import {
  ERROR_CODES,
  ImageError,
  CallOrder,
  KeyedLock,
  Mutex,
  checkDiskRange,
  corrupt,
  extentRange,
  mergeExtents,
  readOnlyError,
  unsupported,
  type Disk,
  type Extent,
  type ExtentOptions,
  type ImageInfo,
  type Storage,
  type WriteZeroesOptions,
} from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { allBitsSet, bitRuns, setBits } from './bitmap.js';
import { FOOTER_SIZE, serializeFooter } from './footer.js';
import { overlapMessage, regionsOverlap } from './layout.js';
import { VHD_SECTOR } from './geometry.js';
import { FORMAT, type VhdState } from './state.js';
import type { VhdProblem } from './problems.js';
import { extentRuns } from './extents.js';
import { vhdInfo } from './info.js';
import { resizeVhd } from './resize.js';
import { makeVhdEmpty, setVhdBacking } from './backing.js';
import { writeBatEntry, writeFooters } from './write-metadata.js';

const ZERO_CHUNK = 4 * 1024 * 1024;
const BITMAP_CACHE_BYTES = 8 * 1024 * 1024;

/** Where one sector of the disk comes from. */
export interface VhdSectorLocation {
  /** 0 = this image, 1 = its parent, ... */
  depth: number;
  /** `data`: stored at hostOffset in file; `zero`: reads as zeros; `hole`: in no layer. */
  kind: 'data' | 'zero' | 'hole';
  file?: string;
  hostOffset?: number;
  /** Block index in the layer that holds it (dynamic and differencing). */
  block?: number;
}

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
  /** @internal The layout; modules of this package share it. */
  readonly _state: VhdState;
  #closed = false;
  #locks = new KeyedLock();
  #alloc = new Mutex();
  #bitmaps = new Map<number, Uint8Array>();
  /** The file's size after this disk's last block allocation, while `nextFree` is where it left it (saves a stat per block). */
  #sizeAfterAlloc: { nextFree: number; size: number } | undefined;
  #bitmapGeneration = 0;
  #inflight = 0;
  #drained: (() => void) | undefined;
  #gate: Promise<void> | undefined;
  /**
   * Call order of overlapping writes, zero writes and discards: a zero
   * write decides per block whether to write (the BAT, the parent) and
   * takes the block locks one after another, and a fixed disk's writes go
   * straight to the storage, so each operation registers its range and
   * waits for the earlier ones it overlaps to finish (counted in flight
   * meanwhile, so that resize waits for it too).
   */
  #order = new CallOrder();

  /** @internal Use openVhd or createVhd. */
  constructor(state: VhdState, readOnly: boolean) {
    this._state = state;
    this.readOnly = readOnly;
  }

  get size(): number {
    return this._state.size;
  }
  get storage(): Storage {
    return this._state.storage;
  }
  /** "fixed", "dynamic" or "differencing". */
  get type(): VhdState['type'] {
    return this._state.type;
  }
  /** The footer in use (a copy). */
  get footer(): VhdState['footer'] {
    return { ...this._state.footer };
  }
  /** The unique id of this image. */
  get uniqueId(): string {
    return this._state.footer.uniqueId;
  }
  /** The open parent of a differencing disk (undefined with noBacking). */
  get parent(): Disk | undefined {
    return this._state.parent;
  }
  /** The open parent (the generic Disk name for `parent`, used by img commit and rebase). */
  get backing(): Disk | undefined {
    return this._state.parent;
  }
  /** Problems seen while opening that did not prevent it (footer copy mismatch, checksums, parent timestamp, what a crash left: see checkVhd). */
  get problems(): readonly VhdProblem[] {
    const r = this._state.repairable;
    return r && r.length ? [...this._state.problems, ...r] : this._state.problems;
  }

  #check(): void {
    if (this.#closed) throw new ImageError(ERROR_CODES.CLOSED, `vhd: ${this.storage.name}: disk is closed`);
  }

  #checkWrite(offset: number, length: number): void {
    this.#check();
    if (this.readOnly) throw readOnlyError(FORMAT, this.storage.name);
    checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
  }

  /** @internal The sector bitmap of an allocated block (cached). */
  async _bitmap(block: number): Promise<Uint8Array> {
    const cached = this.#bitmaps.get(block);
    if (cached) return cached;
    const s = this._state;
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

  #setBitmap(block: number, bitmap: Uint8Array): void {
    this.#bitmapGeneration++;
    this.#bitmaps.set(block, bitmap);
  }

  /** @internal Forget cached bitmaps (after metadata was changed behind our back). */
  _dropCaches(): void {
    this.#sizeAfterAlloc = undefined;
    this.#bitmapGeneration++;
    this.#bitmaps.clear();
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#check();
    checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#shared(() => this.#readInto(offset, target));
  }

  async #readInto(offset: number, target: Uint8Array): Promise<void> {
    this.#check();
    checkDiskRange(FORMAT, this.size, offset, target.length, this.storage.name);
    const s = this._state;
    if (s.type === 'fixed') {
      const n = await s.storage.readInto(offset, target);
      if (n < target.length) target.fill(0, n);
      return;
    }
    // The blocks of a request are read side by side.
    const reads: Promise<void>[] = [];
    let done = 0;
    while (done < target.length) {
      const pos = offset + done;
      const block = Math.floor(pos / s.blockSize);
      const inBlock = pos - block * s.blockSize;
      const n = Math.min(s.blockSize - inBlock, target.length - done);
      reads.push(this.#readBlock(block, inBlock, target.subarray(done, done + n)));
      done += n;
    }
    const results = await Promise.allSettled(reads);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  async #readBlock(block: number, inBlock: number, out: Uint8Array): Promise<void> {
    const s = this._state;
    const base = block * s.blockSize;
    const entry = block < s.bat.length ? s.bat[block]! : BAT_UNUSED;
    if (entry === BAT_UNUSED) return this.#readBelow(base + inBlock, out);
    const dataStart = entry * VHD_SECTOR + s.bitmapBytes;
    if (s.type === 'dynamic' && !this.#bitmaps.has(block)) {
      // Dynamic disk, bitmap not cached: read it and the data together (blocks are mostly whole),
      // then zero the sectors the bitmap says are not stored. One wait instead of two.
      const [bitmap, n] = await Promise.all([this._bitmap(block), s.storage.readInto(dataStart + inBlock, out)]);
      if (n < out.length) out.fill(0, n);
      const first = Math.floor(inBlock / VHD_SECTOR);
      const last = Math.ceil((inBlock + out.length) / VHD_SECTOR);
      for (const run of bitRuns(bitmap, first, last - first)) {
        if (run.set) continue;
        const from = Math.max(run.start * VHD_SECTOR, inBlock);
        const to = Math.min((run.start + run.count) * VHD_SECTOR, inBlock + out.length);
        out.fill(0, from - inBlock, to - inBlock);
      }
      return;
    }
    const bitmap = await this._bitmap(block);
    const first = Math.floor(inBlock / VHD_SECTOR);
    const last = Math.ceil((inBlock + out.length) / VHD_SECTOR);
    for (const run of bitRuns(bitmap, first, last - first)) {
      const from = Math.max(run.start * VHD_SECTOR, inBlock);
      const to = Math.min((run.start + run.count) * VHD_SECTOR, inBlock + out.length);
      const piece = out.subarray(from - inBlock, to - inBlock);
      if (run.set) {
        const n = await s.storage.readInto(dataStart + from, piece);
        if (n < piece.length) piece.fill(0, n);
      } else {
        await this.#readBelow(base + from, piece);
      }
    }
  }

  /** What a sector not stored in this layer reads as: zeros, or the parent's bytes. */
  async #readBelow(offset: number, out: Uint8Array): Promise<void> {
    const parent = this._state.type === 'differencing' ? this._state.parent : undefined;
    if (!parent || offset >= parent.size) {
      out.fill(0);
      return;
    }
    const n = Math.min(out.length, parent.size - offset);
    await parent.readInto(offset, out.subarray(0, n));
    if (n < out.length) out.fill(0, n);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkWrite(offset, data.length);
    return this.#shared(() =>
      this.#order.run(
        offset,
        data.length,
        async () => {
          // Again once in order: a resize called earlier may have shrunk the disk.
          this.#checkWrite(offset, data.length);
          await this.#writeRange(offset, data.length, data);
        },
        { register: true },
      ),
    );
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    this.#checkWrite(offset, length);
    return this.#shared(() => this.#order.run(offset, length, () => this.#writeZeroes(offset, length, options), { register: true }));
  }

  async #writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    this.#checkWrite(offset, length);
    const s = this._state;
    if (s.type === 'fixed') {
      // The data area is a raw disk: punch a hole where the storage can.
      if (options.mayUnmap !== false && s.storage.punchHole && (await s.storage.punchHole(offset, length))) return;
      await this.#writeRange(offset, length, undefined);
      return;
    }
    // Dynamic: unallocated blocks already read as zeros. Differencing: only
    // where the parent has nothing but zeros may a block stay unallocated.
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const block = Math.floor(pos / s.blockSize);
      const next = Math.min(end, (block + 1) * s.blockSize);
      if (s.bat[block] === BAT_UNUSED && (await this.#belowIsZero(pos, next - pos))) {
        pos = next;
        continue;
      }
      await this.#writeRange(pos, next - pos, undefined);
      pos = next;
    }
  }

  async #belowIsZero(offset: number, length: number): Promise<boolean> {
    const s = this._state;
    if (s.type !== 'differencing') return true;
    // Without its parent (noBacking) a differencing disk cannot know: write the zeros.
    if (!s.parent) return false;
    if (offset >= s.parent.size) return true;
    const n = Math.min(length, s.parent.size - offset);
    for await (const e of s.parent.extents({ offset, length: n })) if (e.kind === 'data') return false;
    return true;
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length, { mayUnmap: true });
  }

  /** Writes `data` (or zeros when undefined) over [offset, offset + length). */
  async #writeRange(offset: number, length: number, data: Uint8Array | undefined): Promise<void> {
    const s = this._state;
    if (s.type === 'fixed') {
      if (data) return s.storage.write(offset, data);
      const zeros = new Uint8Array(Math.min(ZERO_CHUNK, length));
      for (let pos = 0; pos < length; pos += zeros.length) {
        const n = Math.min(zeros.length, length - pos);
        await s.storage.write(offset + pos, zeros.subarray(0, n));
      }
      return;
    }
    // Blocks are written side by side (each under its own lock; allocations still take turns), so a
    // chunk that spans blocks costs the slowest block, not their sum. Zeros are written a piece at a time.
    const pieces: Promise<void>[] = [];
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const block = Math.floor(pos / s.blockSize);
      const inBlock = pos - block * s.blockSize;
      const n = Math.min(s.blockSize - inBlock, length - done, ZERO_CHUNK);
      const piece = data ? data.subarray(done, done + n) : new Uint8Array(n);
      const p = this.#locks.run(block, () => this.#writeBlock(block, inBlock, piece));
      if (data) pieces.push(p);
      else await p;
      done += n;
    }
    const results = await Promise.allSettled(pieces);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /** Do the first and last sectors of [first, last) of `block` live in this layer? */
  async #sectorsPresent(block: number, first: number, last: number): Promise<boolean> {
    if (this._state.bat[block] === BAT_UNUSED) return false;
    const bitmap = await this._bitmap(block);
    return allBitsSet(bitmap, first, 1) && allBitsSet(bitmap, last - 1, 1);
  }

  /** Writes `piece` at `inBlock` of `block`; runs under the block's lock. */
  async #writeBlock(block: number, inBlock: number, piece: Uint8Array): Promise<void> {
    const s = this._state;
    const first = Math.floor(inBlock / VHD_SECTOR);
    const last = Math.ceil((inBlock + piece.length) / VHD_SECTOR);
    let sectors = piece;
    if (inBlock % VHD_SECTOR !== 0 || piece.length % VHD_SECTOR !== 0) {
      // Partial sectors: start from what the sectors read as now (in a
      // differencing disk that is the parent's data: copy-on-write).
      if (s.type === 'differencing' && !s.parent && !(await this.#sectorsPresent(block, first, last))) {
        throw unsupported(FORMAT, s.storage.name, 'a partial-sector write into a differencing disk opened without its parent (noBacking) would lose the parent\'s bytes');
      }
      sectors = new Uint8Array((last - first) * VHD_SECTOR);
      await this.#readBlock(block, first * VHD_SECTOR, sectors);
      sectors.set(piece, inBlock - first * VHD_SECTOR);
    }
    if (s.bat[block] === BAT_UNUSED) {
      await this.#alloc.run(() => this.#allocate(block, first, last, sectors));
      return;
    }
    const dataStart = s.bat[block]! * VHD_SECTOR + s.bitmapBytes;
    await s.storage.write(dataStart + first * VHD_SECTOR, sectors);
    const bitmap = await this._bitmap(block);
    if (!allBitsSet(bitmap, first, last - first)) {
      // The data must be stable before a bit says it is there.
      await s.storage.flush();
      const updated = bitmap.slice();
      setBits(updated, first, last - first);
      await s.storage.write(s.bat[block]! * VHD_SECTOR, updated);
      this.#setBitmap(block, updated);
    }
  }

  /**
   * Allocates `block` at the end of the data: bitmap and data, the footer
   * moved behind them, a flush, then the BAT entry and another flush. A
   * crash before the BAT write leaves an unreferenced block (a leak), never
   * a BAT entry pointing at unwritten data.
   */
  async #allocate(block: number, first: number, last: number, sectors: Uint8Array): Promise<void> {
    const s = this._state;
    const at = s.nextFree;
    const span = s.bitmapBytes + s.blockSize;
    const known = this.#sizeAfterAlloc;
    this.#sizeAfterAlloc = undefined;
    const fileSize = known && known.nextFree === at ? known.size : await s.storage.size();
    // The block and the footer behind it land in space no structure owns (open validated the layout; this keeps it so).
    const target = { start: at, end: at + span + FOOTER_SIZE, what: `block ${block} and the footer behind it` };
    const taken = [...s.metadata, ...(s.reserved ?? [])].find((m) => regionsOverlap(target, m));
    if (taken) throw corrupt(FORMAT, s.storage.name, `a new block would be written where it overlaps: ${overlapMessage(target, taken)}`, { field: `BAT entry ${block}`, offset: at });
    const bitmap = new Uint8Array(s.bitmapBytes);
    // Dynamic disks: every sector present, as qemu does (it ignores bitmaps
    // on read); the block's unwritten sectors are zeros. Differencing disks:
    // only the sectors written.
    if (s.type === 'dynamic') bitmap.fill(0xff);
    else setBits(bitmap, first, last - first);
    const dataStart = at + s.bitmapBytes;
    // Bitmap, data, zeros and the moved footer lie apart from each other and all land before the
    // flush that precedes the BAT entry: they are started together (in this order) and awaited once.
    const writes: Promise<void>[] = [s.storage.write(at, bitmap), s.storage.write(dataStart + first * VHD_SECTOR, sectors)];
    // Space past the old end of the file reads as zeros; anything before it (an
    // old footer, junk) is zeroed where the block's data will be read.
    for (const [from, to] of [
      [dataStart, dataStart + first * VHD_SECTOR],
      [dataStart + last * VHD_SECTOR, at + span],
    ] as const) {
      const stop = Math.min(to, fileSize);
      for (let pos = from; pos < stop; pos += ZERO_CHUNK) {
        writes.push(s.storage.write(pos, new Uint8Array(Math.min(ZERO_CHUNK, stop - pos))));
      }
    }
    const nextFree = at + span;
    s.nextFree = nextFree;
    writes.push(writeFooters(s, { head: false }));
    const results = await Promise.allSettled(writes);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    if (fileSize > nextFree + VHD_SECTOR) await s.storage.truncate(nextFree + VHD_SECTOR);
    await s.storage.flush();
    await writeBatEntry(s, block, at / VHD_SECTOR);
    await s.storage.flush();
    s.bat[block] = at / VHD_SECTOR;
    this.#setBitmap(block, bitmap);
    this.#sizeAfterAlloc = { nextFree, size: nextFree + VHD_SECTOR };
  }

  async flush(): Promise<void> {
    this.#check();
    if (!this.readOnly) await this.storage.flush();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this._state.parent?.close();
    } finally {
      await this.storage.close();
    }
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
    this.#check();
    const { start, end } = extentRange(options, this.size);
    return mergeExtents(extentRuns(this, start, end, options ?? {}));
  }

  /** Which layer and file offset hold the sector containing `offset`. */
  async sectorLocation(offset: number): Promise<VhdSectorLocation> {
    this.#check();
    checkDiskRange(FORMAT, this.size, offset, 1);
    const sector = Math.floor(offset / VHD_SECTOR) * VHD_SECTOR;
    for await (const e of this.extents({ offset: sector, length: Math.min(VHD_SECTOR, this.size - sector), hostOffsets: true })) {
      const loc: VhdSectorLocation = { depth: e.depth ?? 0, kind: e.kind };
      if (e.file !== undefined) loc.file = e.file;
      if (e.hostOffset !== undefined) loc.hostOffset = e.hostOffset + (offset - sector);
      if (this._state.type !== 'fixed' && e.kind === 'data') loc.block = Math.floor(offset / this._state.blockSize);
      return loc;
    }
    throw new RangeError(`vhd: no extent covers ${offset}`);
  }

  /** What `img info` shows, with VHD details under formatSpecific. */
  async info(): Promise<ImageInfo> {
    this.#check();
    return vhdInfo(this._state);
  }

  /** Grows (or with `shrink`, shrinks) the disk. See resize.ts. */
  async resize(newSize: number, options: { shrink?: boolean } = {}): Promise<void> {
    this.#check();
    if (this.readOnly) throw readOnlyError(FORMAT, this.storage.name);
    // Blocks may move: no read or write may be in flight meanwhile.
    await this.#exclusive(() =>
      this.#alloc.run(async () => {
        await resizeVhd(this, newSize, options);
        this._dropCaches();
      }),
    );
  }

  /**
   * Deallocates every block so reads fall through to the parent (zeros in a
   * dynamic disk): what `img commit` does to the top after copying it down.
   */
  async makeEmpty(): Promise<void> {
    this.#check();
    if (this.readOnly) throw readOnlyError(FORMAT, this.storage.name);
    await this.#exclusive(() =>
      this.#alloc.run(async () => {
        await makeVhdEmpty(this);
        this._dropCaches();
      }),
    );
  }

  /**
   * Rewrites the parent reference (rebase -u): locators, unicode name and,
   * when the resolver finds the new parent, its unique id and timestamp;
   * `undefined` makes the disk dynamic. See backing.ts.
   */
  async setBacking(name: string | undefined, format?: string): Promise<void> {
    this.#check();
    if (this.readOnly) throw readOnlyError(FORMAT, this.storage.name);
    await this.#exclusive(() =>
      this.#alloc.run(async () => {
        await setVhdBacking(this, name, format);
        this._dropCaches();
      }),
    );
  }

  /** Runs an I/O operation; waits while an exclusive one (resize) runs. */
  async #shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate) await this.#gate;
    this.#inflight++;
    try {
      return await fn();
    } finally {
      if (--this.#inflight === 0) this.#drained?.();
    }
  }

  /** Runs `fn` alone: new I/O waits, in-flight I/O is drained first. */
  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
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

  /** @internal Runs `fn` with the allocator held (no block allocation meanwhile). */
  _withAllocator<T>(fn: () => Promise<T>): Promise<T> {
    return this.#alloc.run(fn);
  }

  /** @internal The footer bytes as they are written now. */
  _footerBytes(): Uint8Array {
    return serializeFooter(this._state.footer);
  }
}
