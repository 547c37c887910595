/**
 * The bulk writer: a new dynamic VHD written in one pass by a copy (a
 * conversion target). The file starts as the empty image createVhd writes
 * (footer copy, header, a BAT of unused entries, the footer), flushed, so
 * it is a valid VHD reading as zeros for the whole conversion. Blocks are
 * handed out behind it in the order the copy first touches them (guest
 * order for sparseCopy, as the general writer and qemu-img lay them out),
 * so the copy can put data straight at its host position (placeRuns: the
 * native file-to-file loop) instead of one write, one BAT sector and one
 * footer per block. finish() writes every sector bitmap and the footer
 * behind the last block, flushes, then writes the BAT in one write and
 * flushes again: a crash before the BAT leaves the empty image with
 * leaked blocks, a BAT sector torn or not points only at finished blocks.
 * The finished file is byte for byte the general writer's.
 */
import { diskClosedError, driverOptions, extentRange, isAllZero, joinPlacedExtent, PlacedRuns, type DriverCreateOptions } from '@img/block';
import type { Disk, Extent, ExtentOptions, FreshImageWriter, Storage } from '@img/block';
import { emptyBatBytes } from './bat.js';
import { createVhdImage, vhdCreateOptionsFrom, VHD_CREATE_OPTIONS, VHD_TYPED_CREATE_KEYS } from './create.js';
import { FOOTER_SIZE, serializeFooter } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import { VhdDisk } from './disk.js';
import type { VhdImage } from './image.js';
import { FORMAT, type VhdState } from './state.js';

/** A block whose file holds at most this much (pages shared with its neighbours) is read to see whether it is all zeros. */
const EDGE_BYTES = 256 * 1024;

type WriterState = 'open' | 'finishing' | 'finished' | 'aborted';

/**
 * Opens a bulk writer for a new dynamic VHD in `storage` (emptied, then
 * holding a valid empty image until finish()), or answers undefined when
 * the options need the general writer (fixed and differencing disks).
 * Options are checked as the driver's create checks them.
 */
export async function createVhdFresh(storage: Storage, given: DriverCreateOptions): Promise<FreshImageWriter | undefined> {
  const options = driverOptions(FORMAT, VHD_CREATE_OPTIONS, given, { extra: VHD_TYPED_CREATE_KEYS }) as DriverCreateOptions;
  if (storage.readOnly || options.backingFile !== undefined) return undefined;
  const typed = vhdCreateOptionsFrom(options);
  if ((typed.type ?? 'dynamic') !== 'dynamic' || typed.parent) return undefined;
  if (options.resolver) typed.resolver = options.resolver;
  return new VhdBulkWriter(await createVhdImage(storage, typed));
}

/** See the module comment: a write-once dynamic VHD whose BAT finish() commits. */
class VhdBulkWriter implements FreshImageWriter {
  readonly format = FORMAT;
  readonly readOnly = false;
  readonly size: number;
  readonly storage: Storage;
  readonly #core: VhdImage;
  readonly #s: VhdState;
  readonly #blockSize: number;
  /** Bitmap plus data: the file space of one block. */
  readonly #span: number;
  /** Where the first block goes (the empty image's footer, which its bitmap replaces). */
  readonly #first: number;
  /** Block -> slot + 1 (0: not allocated); slot k lies at #first + k * #span. */
  readonly #slotOf: Float64Array;
  /** Slot -> block. */
  #blockIn: number[] = [];
  /** Slots of placed runs a copy skipped zeros in: finish() gives back those that hold nothing. */
  readonly #maybeEmpty = new Set<number>();
  #state: WriterState = 'open';
  /** Writes, reads and placed runs through #pieces. */
  readonly #io: PlacedRuns;
  /**
   * The copy loop allocates each data piece it writes just before writing
   * it (on ext4; skipped zeros stay holes). Into unallocated blocks ext4's
   * delayed allocation works page by page: a VHD of 1 GiB of data took
   * twice the time of the same data into qcow2. The bitmaps, written by
   * finish(), are then allocated apart from their blocks: the file comes
   * out in more extents (about 2,000 for 1 GiB against qemu-img's 21),
   * which read back at the same speed (BENCHMARKS.md, session 19).
   */
  readonly copyPreallocation = 'holes';

  constructor(core: VhdImage) {
    const s = core.state;
    this.#core = core;
    this.#s = s;
    this.storage = s.storage;
    this.size = s.size;
    this.#blockSize = s.blockSize;
    this.#span = s.bitmapBytes + s.blockSize;
    this.#first = s.nextFree;
    this.#slotOf = new Float64Array(s.bat.length);
    this.#io = new PlacedRuns(
      this,
      (offset, length, allocate, each) => this.#pieces(offset, length, allocate, each),
      () => this.#state,
    );
  }

  #checkOpen(): void {
    if (this.#state !== 'open') throw diskClosedError(FORMAT, this.storage.name);
  }

  #dataStart(slot: number): number {
    return this.#first + slot * this.#span + this.#s.bitmapBytes;
  }

  /** Slot of `block`, handing out the next one if `allocate` (-1: none). */
  #slot(block: number, allocate: boolean): number {
    const known = this.#slotOf[block]!;
    if (known > 0 || !allocate) return known - 1;
    const slot = this.#blockIn.length;
    this.#blockIn.push(block);
    this.#slotOf[block] = slot + 1;
    return slot;
  }

  /** Calls `each` with the (guest, host, length) piece of every block of the range (allocated first when `allocate`; others skipped). */
  #pieces(offset: number, length: number, allocate: boolean, each: (guest: number, host: number, n: number) => void): void {
    const bs = this.#blockSize;
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const block = Math.floor(pos / bs);
      const n = Math.min(end - pos, (block + 1) * bs - pos);
      const slot = this.#slot(block, allocate);
      if (slot >= 0) each(pos, this.#dataStart(slot) + pos - block * bs, n);
      pos += n;
    }
  }

  /** sparseCopy may copy file to file into placed runs where finish() can see (Storage.ranges) what a zero-skipping copy left out. */
  canPlaceRuns(): boolean {
    return this.#state === 'open' && typeof this.storage.ranges === 'function';
  }

  /** Allocates the blocks of guest `[offset, offset + length)` and answers its (guest offset, host position, length) pieces. */
  placeRuns(offset: number, length: number): number[] {
    return this.#io.place(offset, length);
  }

  /** A copy into these placed runs left zeros unwritten: their blocks are looked at again by finish(). */
  settleRuns(runs: Float64Array): Promise<void> {
    for (let k = 0; k + 2 < runs.length; k += 3) this.#maybeEmpty.add(Math.floor((runs[k + 1]! - this.#first) / this.#span));
    return Promise.resolve();
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#io.write(offset, data);
  }

  /** Blocks not yet allocated read as zeros already; allocated ones get zeros over the range. */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#io.writeZeroes(offset, length);
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#io.writeZeroes(offset, length);
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#io.readInto(offset, target);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#io.read(offset, length);
  }

  /** Data for allocated blocks (every sector present, as the general writer marks them), zero elsewhere. */
  async *extents(options?: ExtentOptions): AsyncGenerator<Extent> {
    const { start, end } = extentRange(options, this.size);
    const bs = this.#blockSize;
    let cur: Extent | undefined;
    for (let pos = start; pos < end;) {
      const block = Math.floor(pos / bs);
      const stop = Math.min(end, (block + 1) * bs);
      const slot = this.#slot(block, false);
      const next: Extent = slot < 0 ? { offset: pos, length: stop - pos, kind: 'zero', depth: 0 } : { offset: pos, length: stop - pos, kind: 'data', depth: 0 };
      if (slot >= 0 && options?.hostOffsets) {
        next.hostOffset = this.#dataStart(slot) + pos - block * bs;
        next.file = this.storage.name;
      }
      pos = stop;
      if (!joinPlacedExtent(cur, next)) {
        if (cur) yield cur;
        cur = next;
      }
    }
    if (cur) yield cur;
  }

  async flush(): Promise<void> {
    await this.#io.settle();
    await this.storage.flush();
  }

  /** Does slot `slot` hold nothing but zeros? Asks the file system first; reads only the little a neighbour's shared page may hold. */
  async #holdsOnlyZeros(slot: number): Promise<boolean> {
    const from = this.#dataStart(slot);
    const to = from + this.#blockSize;
    const held = (await this.storage.ranges!(from, this.#blockSize)).filter((r) => r.data);
    let bytes = 0;
    for (const r of held) bytes += Math.min(to, r.offset + r.length) - Math.max(from, r.offset);
    if (bytes > EDGE_BYTES) return false;
    for (const r of held) {
      const at = Math.max(from, r.offset);
      const piece = new Uint8Array(Math.min(to, r.offset + r.length) - at);
      const n = await this.storage.readInto(at, piece);
      if (!isAllZero(piece.subarray(0, n))) return false;
    }
    return true;
  }

  /**
   * Gives back the blocks a zero-skipping copy wrote nothing into (so the
   * image allocates what the general writer would), moving the last
   * blocks into the slots they leave, so no gap is left between blocks.
   */
  async #dropEmptyBlocks(): Promise<void> {
    if (!this.#maybeEmpty.size || !this.storage.ranges) return;
    const empty: number[] = [];
    for (const slot of [...this.#maybeEmpty].sort((a, b) => a - b)) {
      if (slot >= 0 && slot < this.#blockIn.length && (await this.#holdsOnlyZeros(slot))) empty.push(slot);
    }
    this.#maybeEmpty.clear();
    for (const slot of empty) this.#slotOf[this.#blockIn[slot]!] = 0;
    let lo = 0;
    let hi = empty.length;
    const moved: Array<{ slot: number; block: number }> = [];
    while (lo < hi) {
      const last = this.#blockIn.length - 1;
      const block = this.#blockIn.pop()!;
      if (empty[hi - 1] === last) {
        hi--;
        continue;
      }
      lo++;
      moved.push({ slot: last, block });
    }
    // Every gap used lies below every slot moved, so any pairing is safe: the moved blocks go into the gaps in
    // guest order (last-into-first put a run of them in reverse).
    moved.sort((a, b) => a.block - b.block);
    let buffer: Uint8Array | undefined;
    for (let k = 0; k < moved.length; k++) {
      const { slot, block } = moved[k]!;
      const gap = empty[k]!;
      buffer ??= new Uint8Array(this.#blockSize);
      const n = await this.storage.readInto(this.#dataStart(slot), buffer);
      buffer.fill(0, n);
      await this.storage.write(this.#dataStart(gap), buffer);
      this.#blockIn[gap] = block;
      this.#slotOf[block] = gap + 1;
    }
  }

  /**
   * Gives back blocks that hold nothing, writes the sector bitmaps and the
   * footer behind the last block, flushes, writes the BAT and flushes
   * again (see the module comment), and opens the image for writing. The
   * writer is done after this either way.
   */
  async finish(): Promise<Disk> {
    this.#checkOpen();
    this.#state = 'finishing';
    const s = this.#s;
    try {
      await this.#io.settle();
      if (this.#io.failure !== undefined) throw this.#io.failure;
      await this.#dropEmptyBlocks();
      const end = this.#first + this.#blockIn.length * this.#span;
      // Whatever lies behind the last block (a block moved away) goes; the footer follows it.
      await this.storage.truncate(end);
      // Dynamic disks mark every sector of a block present, as the general writer (and qemu) do.
      const bitmap = new Uint8Array(s.bitmapBytes).fill(0xff);
      const writes: Promise<void>[] = [];
      for (let slot = 0; slot < this.#blockIn.length; slot++) writes.push(this.storage.write(this.#first + slot * this.#span, bitmap));
      writes.push(this.storage.write(end, serializeFooter(s.footer)));
      const results = await Promise.allSettled(writes);
      for (const r of results) if (r.status === 'rejected') throw r.reason;
      await this.storage.flush();
      // The table's bytes straight from the blocks handed out: a 2040 GiB disk has a million entries, a few of them used.
      const table = emptyBatBytes(s.bat.length);
      const entries = new DataView(table.buffer, table.byteOffset, table.byteLength);
      for (let slot = 0; slot < this.#blockIn.length; slot++) entries.setUint32(this.#blockIn[slot]! * 4, (this.#first + slot * this.#span) / VHD_SECTOR);
      await this.storage.write(s.header!.tableOffset, table);
      await this.storage.flush();
      // The core createVhdImage made, now holding the blocks (what opening the file again would find, without reading it again).
      for (let slot = 0; slot < this.#blockIn.length; slot++) s.bat[this.#blockIn[slot]!] = (this.#first + slot * this.#span) / VHD_SECTOR;
      s.nextFree = end;
      this.#state = 'finished';
    } catch (e) {
      this.#state = 'aborted';
      throw e;
    }
    return new VhdDisk(this.#core);
  }

  /**
   * Gives up: the data written so far is cut off, which leaves the empty
   * image the file started as (a caller that made the file removes it).
   */
  async abort(): Promise<void> {
    if (this.#state === 'finished' || this.#state === 'aborted') return;
    this.#state = 'aborted';
    await this.#io.settle();
    await this.storage.truncate(this.#first + FOOTER_SIZE);
    await this.storage.flush();
  }

  /** Finishes the image (if not done yet) and closes it. */
  async close(): Promise<void> {
    if (this.#state !== 'open') return;
    const disk = await this.finish();
    await disk.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
