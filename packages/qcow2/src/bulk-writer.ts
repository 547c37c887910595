/**
 * The bulk writer: a new qcow2 image written in one pass by a copy (a
 * conversion target). The file starts as the empty image qemu-img create
 * writes (bulk-writer-metadata.ts), flushed, so it is a valid qcow2 image
 * reading as zeros for the whole conversion, as qemu-img convert's target
 * is. Data clusters are handed out one after another after that image as
 * writes come in (a run of guest clusters written together lands
 * host-contiguous and goes out in one write), the L2 map lives in memory,
 * and finish() appends the L2 tables and commits them into the image's
 * refcounts and L1 table in an order that keeps every crash state a valid
 * image holding either nothing or the whole conversion.
 */
import { diskClosedError, extentRange, joinPlacedExtent, PlacedRuns, SlotMap } from '@img/block';
import type { Disk, Extent, ExtentOptions, FreshImageWriter, Storage } from '@img/block';
import { parseCreateOptions, type Qcow2CreateOptions, type Qcow2Layout } from './create.js';
import { openWrittenQcow2 } from './open.js';
import { bulkLayout, commitBulkImage, writeEmptyImage, type BulkLayout } from './bulk-writer-metadata.js';

const FORMAT = 'qcow2';

type State = 'open' | 'finishing' | 'finished' | 'aborted';

/**
 * Opens a bulk writer for a new image in `storage` (emptied first, then
 * holding a valid empty image until finish()), or answers undefined when
 * the create options need the general writer: preallocation, a backing
 * file, an external data file, or a block device as the storage. Options are checked as createQcow2 checks
 * them.
 *
 * @example
 * ```ts
 * const w = await createQcow2Fresh(storage, { size: src.size });
 * if (w) { await sparseCopy(src, w); const disk = await w.finish(); await disk.close(); }
 * ```
 */
export async function createQcow2Fresh(storage: Storage, options: Qcow2CreateOptions): Promise<FreshImageWriter | undefined> {
  const l = parseCreateOptions(options);
  // A block device (fixedSize) reads as its old bytes where nothing was written: the bulk writer's unwritten zeros would not read as zeros there.
  if (l.encrypt || l.preallocation !== 'off' || l.backingFile !== undefined || l.dataFile !== undefined || options.dataFileStorage !== undefined || storage.readOnly || storage.fixedSize) return undefined;
  // Tables past the spec's bounds: createQcow2 says so in its own words.
  const layout = bulkLayout(l);
  if (!layout) return undefined;
  await storage.truncate(0);
  await writeEmptyImage(storage, l, layout);
  return new Qcow2BulkWriter(storage, l, layout);
}

/** See the module comment: a write-once qcow2 image whose data finish() commits. */
class Qcow2BulkWriter implements FreshImageWriter {
  readonly format = FORMAT;
  readonly readOnly = false;
  readonly size: number;
  readonly storage: Storage;
  readonly #l: Qcow2Layout;
  readonly #layout: BulkLayout;
  readonly #cs: number;
  /** Entries per L2 table. */
  readonly #perTable: number;
  /** Guest cluster -> host cluster (tables by L1 index; 0: unallocated), handed out behind the empty image. */
  readonly #slots: SlotMap;
  #state: State = 'open';
  /** Writes, reads and placed runs through #pieces. */
  readonly #io: PlacedRuns;

  constructor(storage: Storage, l: Qcow2Layout, layout: BulkLayout) {
    this.storage = storage;
    this.size = l.size;
    this.#l = l;
    this.#layout = layout;
    this.#cs = layout.clusterSize;
    this.#perTable = layout.perTable;
    this.#slots = new SlotMap(layout.perTable, layout.end, layout.clusterSize, layout.end * layout.clusterSize);
    this.#io = new PlacedRuns(
      this,
      (offset, length, allocate, each) => this.#pieces(offset, length, allocate, each),
      () => this.#state,
    );
  }

  #checkOpen(): void {
    if (this.#state !== 'open') throw diskClosedError(FORMAT, this.storage.name);
  }

  /**
   * The copy may allocate a batch's host range before writing it and leave
   * skipped zeros allocated but unwritten: SEEK_DATA (settleRuns) sees them
   * as holes, the clusters given back are filled by the last ones or cut
   * off with the file's end, and zeros left inside a data cluster read as
   * zeros (qemu-img writes them).
   */
  readonly copyPreallocation = 'any';

  /** sparseCopy may copy file to file into the positions placeRuns gives where settleRuns can see what was written. */
  canPlaceRuns(): boolean {
    return this.#state === 'open' && typeof this.storage.ranges === 'function';
  }

  /** Allocates guest `[offset, offset + length)` and answers its (guest offset, host position, length) pieces. */
  placeRuns(offset: number, length: number): number[] {
    return this.#io.place(offset, length);
  }

  /**
   * After a copy into placed runs left zeros unwritten: clusters wholly
   * inside one run that hold no data in the file (holes: nothing was
   * written there) are given back, so the image allocates what qemu-img
   * would, the clusters holding data. A cluster a run covers only in part
   * is looked at by finish() (a raw source whose first 4 KiB are written
   * zeros before a hole had its first cluster kept).
   */
  settleRuns(runs: Float64Array): Promise<void> {
    return this.#slots.settle(this.storage, runs);
  }

  /**
   * Closes the gaps given-back clusters left in the data: the last data
   * clusters move into them, so the file has no unused cluster. The moved
   * clusters go into the gaps in guest order (a run placed while an earlier
   * batch's zeros were still held, then moved last-into-first, came out in
   * reverse: qemu-img check called 94% of such an image fragmented).
   */
  async #closeGaps(): Promise<void> {
    if (await this.#slots.moveGaps(this.storage)) await this.storage.truncate(this.#slots.next * this.#cs);
  }

  /**
   * Walks `[offset, offset + length)` cluster by cluster and calls `each`
   * once per host-contiguous piece of allocated clusters (all of them
   * allocated first when `allocate`).
   */
  #pieces(offset: number, length: number, allocate: boolean, each: (guest: number, host: number, n: number) => void): void {
    this.#slots.pieces(offset, length, allocate, each);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#io.write(offset, data);
  }

  /** Clusters not yet written read as zeros already; written ones get zeros over the range. */
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

  /** Data where a cluster was written, holes elsewhere (the image has no backing file). */
  async *extents(options?: ExtentOptions): AsyncGenerator<Extent> {
    const { start, end } = extentRange(options, this.size);
    const cs = this.#cs;
    const span = this.#perTable * cs;
    const withHost = options?.hostOffsets === true;
    let cur: Extent | undefined;
    for (let pos = start; pos < end;) {
      let next: Extent;
      const table = this.#slots.tables.get(Math.floor(pos / span));
      if (!table) {
        const stop = Math.min(end, (Math.floor(pos / span) + 1) * span);
        next = { offset: pos, length: stop - pos, kind: 'hole' };
      } else {
        const c = Math.floor(pos / cs);
        const stop = Math.min(end, (c + 1) * cs);
        const host = table[c % this.#perTable]!;
        next = host === 0 ? { offset: pos, length: stop - pos, kind: 'hole' } : { offset: pos, length: stop - pos, kind: 'data' };
        if (host !== 0 && withHost) {
          next.hostOffset = host * cs + (pos - c * cs);
          next.file = this.storage.name;
        }
      }
      pos += next.length;
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

  /**
   * Closes the gaps in the data, writes the L2 tables after it and
   * commits them into the image (bulk-writer-metadata.ts: refcounts, then
   * the L1 table), and opens the image for writing. The writer is done
   * after this either way.
   */
  async finish(): Promise<Disk> {
    await this.#commit();
    return openWrittenQcow2(this.storage);
  }

  /** finish() without opening the image again: the metadata is committed and flushed. */
  async #commit(): Promise<void> {
    this.#checkOpen();
    this.#state = 'finishing';
    try {
      await this.#io.settle();
      if (this.#io.failure !== undefined) throw this.#io.failure;
      await this.#slots.dropEmptyEdges(this.storage);
      await this.#closeGaps();
      await commitBulkImage(this.storage, this.#l, this.#layout, this.#slots.tables, this.#slots.next, this.#slots.used);
      this.#state = 'finished';
    } catch (e) {
      this.#state = 'aborted';
      throw e;
    }
  }

  /**
   * Gives up: the data written so far is cut off, which leaves the empty
   * image the file started as (a caller that made the file removes it).
   */
  async abort(): Promise<void> {
    if (this.#state === 'finished' || this.#state === 'aborted') return;
    this.#state = 'aborted';
    await this.#io.settle();
    await this.storage.truncate(this.#layout.end * this.#cs);
    await this.storage.flush();
  }

  /** Finishes the image (if not done yet) and closes it, without opening it again as finish() does. */
  async close(): Promise<void> {
    if (this.#state !== 'open') return;
    await this.#commit();
    await this.storage.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
