/**
 * The bulk writer: a new monolithicSparse VMDK written in one pass by a
 * copy (a conversion target). createVmdk lays out the empty image first
 * (header, embedded descriptor, both grain directories and their zeroed
 * grain tables, the file grown to the first grain), so the file is a valid
 * VMDK reading as zeros for the whole conversion. Grains are handed out
 * behind it in the order the copy first touches them (guest order for
 * sparseCopy, as the general writer and qemu-img lay them out), so the
 * copy can put data straight at its host position (placeRuns: the native
 * file-to-file loop, which also writes around the page cache for
 * `-t none`) instead of one write, one flush and two table writes per
 * batch of grains. finish() gives back grains the copy wrote nothing
 * into, grows the file to whole grains, flushes, then writes the grain
 * tables (the redundant copy first) and flushes again: a crash before
 * that leaves the empty image, a table torn or not points only at
 * finished grains.
 */
import { diskClosedError, extentRange, joinPlacedExtent, PlacedRuns, SlotMap, type DriverCreateOptions } from '@img/block';
import type { Disk, Extent, ExtentOptions, FreshImageWriter, Storage } from '@img/block';
import { createVmdk, vmdkCreateOptionsFrom } from './create.js';
import { ENTRY_BYTES, parseEntries, serializeEntries } from './grain-table.js';
import { FORMAT } from './image.js';
import { openVmdk } from './open.js';
import { parseSparseHeader, SECTOR, SPARSE_HEADER_SIZE } from './sparse-header.js';

type WriterState = 'open' | 'finishing' | 'finished' | 'aborted';

/**
 * Opens a bulk writer for a new monolithicSparse VMDK in `storage` (the
 * empty image createVmdk writes, until finish()), or answers undefined
 * where the general writer is needed: other subformats, zeroed_grain, a
 * parent. Options are checked as the driver's create checks them.
 */
export async function createVmdkFresh(storage: Storage, options: DriverCreateOptions): Promise<FreshImageWriter | undefined> {
  if (storage.readOnly || options.backingFile !== undefined) return undefined;
  // As the driver's create reads them.
  const { backingFile: _b, backingFormat: _bf, formats: _f, noBacking: _nb, ...rest } = options;
  const typed = vmdkCreateOptionsFrom(rest);
  if ((typed.subformat ?? 'monolithicSparse') !== 'monolithicSparse' || typed.zeroedGrain) return undefined;
  // The general writer's empty image, which the writer fills in; the disk it answers is not used again.
  const empty = await createVmdk(storage, typed);
  const header = parseSparseHeader(await storage.read(0, SPARSE_HEADER_SIZE), 0, storage.name);
  const tables = Math.ceil(header.capacity / (header.grainSize * header.numGTEsPerGT));
  const gdBytes = Math.ceil((tables * ENTRY_BYTES) / SECTOR) * SECTOR;
  const gd = parseEntries(await storage.read(header.gdOffset * SECTOR, gdBytes), tables);
  const rgd = parseEntries(await storage.read(header.rgdOffset * SECTOR, gdBytes), tables);
  return new VmdkBulkWriter(storage, empty.size, {
    grainBytes: header.grainSize * SECTOR,
    perTable: header.numGTEsPerGT,
    first: header.overHead * SECTOR,
    gd: [...gd].map((s) => s * SECTOR),
    rgd: [...rgd].map((s) => s * SECTOR),
  });
}

interface Layout {
  grainBytes: number;
  /** Grain table entries per table. */
  perTable: number;
  /** Byte offset of the first grain (the header's overHead). */
  first: number;
  /** Byte offsets of each grain table and of its redundant copy. */
  gd: number[];
  rgd: number[];
}

/** See the module comment: a write-once monolithicSparse VMDK whose grain tables finish() commits. */
class VmdkBulkWriter implements FreshImageWriter {
  readonly format = FORMAT;
  readonly readOnly = false;
  readonly size: number;
  readonly storage: Storage;
  readonly #l: Layout;
  /** Grain -> slot (tables by grain table index; 0: not allocated); slot k lies at first + (k - 1) * grainBytes. */
  readonly #slots: SlotMap;
  #state: WriterState = 'open';
  readonly #io: PlacedRuns;
  /** The copy loop allocates each data piece just before writing it; skipped zeros stay holes (read as zeros). */
  readonly copyPreallocation = 'holes';

  constructor(storage: Storage, size: number, layout: Layout) {
    this.storage = storage;
    this.size = size;
    this.#l = layout;
    this.#slots = new SlotMap(layout.perTable, 1, layout.grainBytes, layout.first);
    this.#io = new PlacedRuns(
      this,
      (offset, length, allocate, each) => this.#pieces(offset, length, allocate, each),
      () => this.#state,
    );
  }

  #checkOpen(): void {
    if (this.#state !== 'open') throw diskClosedError(FORMAT, this.storage.name);
  }

  #slotAt(slot: number): number {
    return this.#slots.position(slot);
  }

  /** Calls `each` with the (guest, host, length) pieces of the grains of the range (allocated first when `allocate`; others skipped). */
  #pieces(offset: number, length: number, allocate: boolean, each: (guest: number, host: number, n: number) => void): void {
    this.#slots.pieces(offset, length, allocate, each);
  }

  /** sparseCopy may copy file to file into placed runs where settleRuns can see (Storage.ranges) what a zero-skipping copy left out. */
  canPlaceRuns(): boolean {
    return this.#state === 'open' && typeof this.storage.ranges === 'function';
  }

  /** Allocates the grains of guest `[offset, offset + length)` and answers its (guest offset, host position, length) pieces. */
  placeRuns(offset: number, length: number): number[] {
    return this.#io.place(offset, length);
  }

  /**
   * After a copy into placed runs left zeros unwritten: grains wholly inside
   * one run that hold no data in the file are given back (the image
   * allocates what qemu-img would); grains a run covers in part wait for
   * finish().
   */
  settleRuns(runs: Float64Array): Promise<void> {
    return this.#slots.settle(this.storage, runs);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#io.write(offset, data);
  }

  /** Grains not yet allocated read as zeros already; allocated ones get zeros over the range. */
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

  /** Data for allocated grains, zero elsewhere. */
  async *extents(options?: ExtentOptions): AsyncGenerator<Extent> {
    const { start, end } = extentRange(options, this.size);
    const gb = this.#l.grainBytes;
    let cur: Extent | undefined;
    for (let pos = start; pos < end;) {
      const g = Math.floor(pos / gb);
      const stop = Math.min(end, (g + 1) * gb);
      const slot = this.#slots.slot(g, false);
      const next: Extent = slot === 0 ? { offset: pos, length: stop - pos, kind: 'zero', depth: 0 } : { offset: pos, length: stop - pos, kind: 'data', depth: 0 };
      if (slot !== 0 && options?.hostOffsets) {
        next.hostOffset = this.#slotAt(slot) + pos - g * gb;
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

  /** The grain tables' bytes: each table that maps a grain, as (byte offset of the primary, of the redundant, entries). */
  #tableWrites(): Array<{ primary: number; redundant: number; bytes: Uint8Array }> {
    const out: Array<{ primary: number; redundant: number; bytes: Uint8Array }> = [];
    for (const [t, table] of [...this.#slots.tables].sort((a, b) => a[0] - b[0])) {
      const entries = new Uint32Array(this.#l.perTable);
      let any = false;
      for (let i = 0; i < table.length; i++) {
        if (!table[i]) continue;
        entries[i] = this.#slotAt(table[i]!) / SECTOR;
        any = true;
      }
      if (any) out.push({ primary: this.#l.gd[t]!, redundant: this.#l.rgd[t]!, bytes: serializeEntries(entries) });
    }
    return out;
  }

  /**
   * Gives back grains that hold nothing, grows the file to whole grains,
   * flushes, writes the redundant then the primary grain tables, flushes
   * again (see the module comment), and opens the image for writing.
   */
  async finish(): Promise<Disk> {
    this.#checkOpen();
    this.#state = 'finishing';
    try {
      await this.#io.settle();
      if (this.#io.failure !== undefined) throw this.#io.failure;
      await this.#slots.dropEmptyEdges(this.storage);
      await this.#slots.moveGaps(this.storage);
      // Whole grains, as the general writer and qemu-img leave the file (a copy may not have written a grain's end).
      await this.storage.truncate(this.#slotAt(this.#slots.next));
      await this.storage.flush();
      const writes = this.#tableWrites();
      for (const w of writes) if (w.redundant) await this.storage.write(w.redundant, w.bytes);
      for (const w of writes) await this.storage.write(w.primary, w.bytes);
      await this.storage.flush();
      this.#state = 'finished';
    } catch (e) {
      this.#state = 'aborted';
      throw e;
    }
    return openVmdk(this.storage, { readOnly: false });
  }

  /** Gives up: the grains written so far are cut off, which leaves the empty image the file started as. */
  async abort(): Promise<void> {
    if (this.#state === 'finished' || this.#state === 'aborted') return;
    this.#state = 'aborted';
    await this.#io.settle();
    await this.storage.truncate(this.#l.first);
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
