/**
 * The bulk writer: a new qcow2 image written in one pass by a copy (a
 * conversion target). Nobody opens the image before it is finished, so
 * none of the general writer's crash ordering is needed while data
 * arrives: data clusters are handed out one after another from host
 * cluster 1 as writes come in (a run of guest clusters written together
 * lands host-contiguous and goes out in one write), the L2 map lives in
 * memory, and finish() appends the L2 tables, the refcount blocks, the
 * refcount table and the L1 table after the data and writes the header
 * into cluster 0 last. Until then cluster 0 reads as zeros, so a crash
 * or an abort leaves a file that no reader takes for an image.
 */
import { checkDiskRange, diskClosedError, extentRange, invalidArg, writeU64Be } from '@img/block';
import type { Disk, Extent, ExtentOptions, FreshImageWriter, Storage } from '@img/block';
import { MAX_L1_TABLE_BYTES, MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { encodeEntry } from './l2-entry.js';
import { writeEntryOffset, type EntryGeometry } from './mapping.js';
import { writeRefcount } from './refcount.js';
import { parseCreateOptions, headerFor, headerCluster, type Qcow2CreateOptions, type Qcow2Layout } from './create.js';
import { openQcow2 } from './open.js';

const FORMAT = 'qcow2';
/** Metadata goes out in writes of at most this many bytes (the tables of a 1 TiB image can be 128 MiB). */
const METADATA_PIECE = 4 * 1024 * 1024;
const ZERO_PIECE = 1024 * 1024;

type State = 'open' | 'finishing' | 'finished' | 'aborted';

/**
 * Opens a bulk writer for a new image in `storage` (emptied first), or
 * answers undefined when the create options need the general writer:
 * preallocation, a backing file, an external data file. Options are
 * checked as createQcow2 checks them.
 *
 * @example
 * ```ts
 * const w = await createQcow2Fresh(storage, { size: src.size });
 * if (w) { await sparseCopy(src, w); const disk = await w.finish(); await disk.close(); }
 * ```
 */
export async function createQcow2Fresh(storage: Storage, options: Qcow2CreateOptions): Promise<FreshImageWriter | undefined> {
  const l = parseCreateOptions(options);
  if (l.preallocation !== 'off' || l.backingFile !== undefined || l.dataFile !== undefined || options.dataFileStorage !== undefined || storage.readOnly) return undefined;
  const cs = 2 ** l.clusterBits;
  const perTable = cs / (l.extendedL2 ? 16 : 8);
  // Too large an L1 table: createQcow2 says so in its own words.
  if (Math.ceil(l.size / (perTable * cs)) * 8 > MAX_L1_TABLE_BYTES) return undefined;
  await storage.truncate(0);
  return new Qcow2BulkWriter(storage, l);
}

/** See the module comment: a write-once qcow2 image whose metadata is written by finish(). */
class Qcow2BulkWriter implements FreshImageWriter {
  readonly format = FORMAT;
  readonly readOnly = false;
  readonly size: number;
  readonly storage: Storage;
  readonly #l: Qcow2Layout;
  readonly #cs: number;
  /** Entries per L2 table. */
  readonly #perTable: number;
  /** L1 index -> host cluster number of each entry of its table (0: unallocated). */
  readonly #tables = new Map<number, Float64Array>();
  /** The next host cluster to hand out at the end of the data (cluster 0 is the header's). */
  #next = 1;
  /** Host clusters given back (placed for a copy that found only zeros there), handed out again first. */
  #free: number[] = [];
  /** Host cluster -> guest cluster + 1 (0: not in use), for giving clusters back and for closing gaps. */
  #guestOf = new Float64Array(1024);
  #state: State = 'open';
  readonly #pending = new Set<Promise<void>>();
  #failure: unknown;

  constructor(storage: Storage, l: Qcow2Layout) {
    this.storage = storage;
    this.size = l.size;
    this.#l = l;
    this.#cs = 2 ** l.clusterBits;
    this.#perTable = this.#cs / (l.extendedL2 ? 16 : 8);
  }

  #checkOpen(): void {
    if (this.#state !== 'open') throw diskClosedError(FORMAT, this.storage.name);
  }

  /** Host cluster of guest cluster `c`, handing out the next one if `allocate` (0: none). */
  #hostOf(c: number, allocate: boolean): number {
    const t = Math.floor(c / this.#perTable);
    let table = this.#tables.get(t);
    if (!table) {
      if (!allocate) return 0;
      table = new Float64Array(this.#perTable);
      this.#tables.set(t, table);
    }
    const i = c - t * this.#perTable;
    if (table[i] === 0 && allocate) {
      const host = this.#free.pop() ?? this.#next++;
      if (host >= this.#guestOf.length) {
        const grown = new Float64Array(Math.max(host + 1, this.#guestOf.length * 2));
        grown.set(this.#guestOf);
        this.#guestOf = grown;
      }
      this.#guestOf[host] = c + 1;
      table[i] = host;
    }
    return table[i]!;
  }

  /** Makes host cluster `host` unallocated again: its guest cluster reads as zeros. */
  #release(host: number): void {
    const owner = this.#guestOf[host]! - 1;
    if (owner < 0) return;
    const t = Math.floor(owner / this.#perTable);
    this.#tables.get(t)![owner - t * this.#perTable] = 0;
    this.#guestOf[host] = 0;
    this.#free.push(host);
  }

  /** sparseCopy may copy file to file into the positions placeRuns gives where settleRuns can see what was written. */
  canPlaceRuns(): boolean {
    return this.#state === 'open' && typeof this.storage.ranges === 'function';
  }

  /** Allocates guest `[offset, offset + length)` and answers its (guest offset, host position, length) pieces. */
  placeRuns(offset: number, length: number): number[] {
    this.#checkOpen();
    checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
    const out: number[] = [];
    this.#pieces(offset, length, true, (guest, host, n) => out.push(guest, host, n));
    return out;
  }

  /**
   * After a copy into placed runs left zeros unwritten: clusters wholly
   * inside one run that hold no data in the file (holes: nothing was
   * written there) are given back, so the image allocates what qemu-img
   * would, the clusters holding data.
   */
  async settleRuns(runs: Float64Array): Promise<void> {
    const cs = this.#cs;
    const storage = this.storage;
    if (!storage.ranges) return;
    for (let k = 0; k + 2 < runs.length; k += 3) {
      const host = runs[k + 1]!;
      const first = Math.ceil(host / cs);
      const end = Math.floor((host + runs[k + 2]!) / cs);
      if (end <= first) continue;
      const found = await storage.ranges(first * cs, (end - first) * cs);
      const data = found.filter((r) => r.data);
      for (let c = first; c < end; c++) {
        if (!data.some((r) => r.offset < (c + 1) * cs && r.offset + r.length > c * cs)) this.#release(c);
      }
    }
  }

  /**
   * Closes the gaps given-back clusters left in the data: the last data
   * clusters move into them, so the file has no unused cluster.
   */
  async #closeGaps(): Promise<void> {
    if (!this.#free.length) return;
    const cs = this.#cs;
    const gaps = this.#free.sort((a, b) => a - b);
    this.#free = [];
    let lo = 0;
    let hi = gaps.length;
    while (lo < hi) {
      const last = this.#next - 1;
      if (gaps[hi - 1] === last) {
        hi--;
        this.#next--;
        continue;
      }
      const gap = gaps[lo++]!;
      const bytes = new Uint8Array(cs);
      await this.storage.readInto(last * cs, bytes);
      await this.storage.write(gap * cs, bytes);
      const owner = this.#guestOf[last]! - 1;
      const t = Math.floor(owner / this.#perTable);
      this.#tables.get(t)![owner - t * this.#perTable] = gap;
      this.#guestOf[gap] = owner + 1;
      this.#guestOf[last] = 0;
      this.#next--;
    }
    await this.storage.truncate(this.#next * cs);
  }

  /** Runs `io` and keeps it in the set finish() waits for; a failure also fails finish(). */
  async #track(io: Promise<void>): Promise<void> {
    this.#pending.add(io);
    try {
      await io;
    } catch (e) {
      this.#failure ??= e;
      throw e;
    } finally {
      this.#pending.delete(io);
    }
  }

  /**
   * Walks `[offset, offset + length)` cluster by cluster and calls `each`
   * once per host-contiguous piece of allocated clusters (all of them
   * allocated first when `allocate`).
   */
  #pieces(offset: number, length: number, allocate: boolean, each: (guest: number, host: number, n: number) => void): void {
    const cs = this.#cs;
    const end = offset + length;
    let runGuest = offset;
    let runHost = -1;
    let runLength = 0;
    for (let pos = offset; pos < end;) {
      const c = Math.floor(pos / cs);
      const n = Math.min(end - pos, (c + 1) * cs - pos);
      const host = this.#hostOf(c, allocate);
      if (host === 0) {
        if (runLength) each(runGuest, runHost, runLength);
        runLength = 0;
      } else {
        const at = host * cs + (pos - c * cs);
        if (runLength && runHost + runLength === at) runLength += n;
        else {
          if (runLength) each(runGuest, runHost, runLength);
          runGuest = pos;
          runHost = at;
          runLength = n;
        }
      }
      pos += n;
    }
    if (runLength) each(runGuest, runHost, runLength);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkOpen();
    checkDiskRange(FORMAT, this.size, offset, data.length, this.storage.name);
    const writes: Promise<void>[] = [];
    this.#pieces(offset, data.length, true, (guest, host, n) => {
      writes.push(this.#track(this.storage.write(host, data.subarray(guest - offset, guest - offset + n))));
    });
    await Promise.all(writes);
  }

  /** Clusters not yet written read as zeros already; written ones get zeros over the range. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkOpen();
    checkDiskRange(FORMAT, this.size, offset, length, this.storage.name);
    const writes: Promise<void>[] = [];
    this.#pieces(offset, length, false, (_guest, host, n) => {
      for (let k = 0; k < n; k += ZERO_PIECE) writes.push(this.#track(this.storage.write(host + k, new Uint8Array(Math.min(ZERO_PIECE, n - k)))));
    });
    await Promise.all(writes);
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.#state === 'aborted' || this.#state === 'finished') throw diskClosedError(FORMAT, this.storage.name);
    checkDiskRange(FORMAT, this.size, offset, target.length, this.storage.name);
    target.fill(0);
    const reads: Promise<number>[] = [];
    this.#pieces(offset, target.length, false, (guest, host, n) => {
      reads.push(this.storage.readInto(host, target.subarray(guest - offset, guest - offset + n)));
    });
    await Promise.all(reads);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
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
      const table = this.#tables.get(Math.floor(pos / span));
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
      const joins = cur !== undefined && cur.kind === next.kind && (next.hostOffset === undefined || cur.hostOffset! + cur.length === next.hostOffset);
      if (joins) cur!.length += next.length;
      else {
        if (cur) yield cur;
        cur = next;
      }
    }
    if (cur) yield cur;
  }

  async flush(): Promise<void> {
    await Promise.allSettled([...this.#pending]);
    await this.storage.flush();
  }

  /**
   * Writes the metadata after the data (L2 tables, refcount blocks,
   * refcount table, L1 table), then the header into cluster 0, and opens
   * the image for writing. The writer is done after this either way.
   */
  async finish(): Promise<Disk> {
    this.#checkOpen();
    this.#state = 'finishing';
    try {
      await Promise.allSettled([...this.#pending]);
      if (this.#failure !== undefined) throw this.#failure;
      await this.#closeGaps();
      await this.#writeMetadata();
      this.#state = 'finished';
    } catch (e) {
      this.#state = 'aborted';
      throw e;
    }
    return openQcow2(this.storage, { readOnly: false });
  }

  async #writeMetadata(): Promise<void> {
    const l = this.#l;
    const cs = this.#cs;
    const storage = this.storage;
    const tables = [...this.#tables.keys()].sort((a, b) => a - b);
    const l1Entries = Math.ceil(l.size / (this.#perTable * cs));
    const l1Clusters = Math.ceil((l1Entries * 8) / cs);
    const bits = 2 ** l.refcountOrder;
    const perBlock = (cs * 8) / bits;
    const dataEnd = this.#next;
    // The refcount blocks count themselves and the table: grow both until they cover every cluster.
    let blocks = 1;
    let rtClusters = 1;
    for (;;) {
      const total = dataEnd + tables.length + blocks + rtClusters + l1Clusters;
      const needBlocks = Math.ceil(total / perBlock);
      const needRt = Math.ceil((needBlocks * 8) / cs);
      if (needBlocks <= blocks && needRt <= rtClusters) break;
      blocks = Math.max(blocks, needBlocks);
      rtClusters = Math.max(rtClusters, needRt);
    }
    if (rtClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
      throw invalidArg(FORMAT, `${storage.name}: the image would need a refcount table over 8 MiB (${dataEnd} clusters of data); use a larger cluster_size`, { field: 'cluster_size' });
    }
    const l2At = dataEnd;
    const blocksAt = l2At + tables.length;
    const rtAt = blocksAt + blocks;
    const l1At = rtAt + rtClusters;
    const total = l1At + l1Clusters;

    // L2 tables, a few MiB per write.
    const g: EntryGeometry = { clusterBits: l.clusterBits, clusterSize: cs, extendedL2: l.extendedL2, zeroFlag: l.version >= 3 && !l.extendedL2, dataFile: false };
    const full = l.extendedL2 ? 0xffffffff : 1;
    const perPiece = Math.max(1, Math.floor(METADATA_PIECE / cs));
    for (let k = 0; k < tables.length; k += perPiece) {
      const group = tables.slice(k, k + perPiece);
      const buf = new Uint8Array(group.length * cs);
      group.forEach((t, j) => {
        const hosts = this.#tables.get(t)!;
        const table = buf.subarray(j * cs, (j + 1) * cs);
        for (let i = 0; i < hosts.length; i++) {
          const h = hosts[i]!;
          if (h !== 0) encodeEntry(table, i, { host: h * cs, copied: true, compressed: undefined, alloc: full, zero: 0 }, g);
        }
      });
      await storage.write((l2At + k) * cs, buf);
    }
    // Refcount blocks: every cluster of the file is used once, and there are no others.
    const counts = new Uint8Array(blocks * cs);
    for (let c = 0; c < total; c++) writeRefcount(counts, c, bits, 1);
    await storage.write(blocksAt * cs, counts);
    const rt = new Uint8Array(rtClusters * cs);
    for (let b = 0; b < blocks; b++) writeU64Be(rt, b * 8, (blocksAt + b) * cs);
    await storage.write(rtAt * cs, rt);
    if (l1Clusters) {
      const l1 = new Uint8Array(l1Clusters * cs);
      tables.forEach((t, k) => writeEntryOffset(l1, t * 8, (l2At + k) * cs, true));
      await storage.write(l1At * cs, l1);
    }
    // Everything the header points to is in place before the header makes the file an image.
    await storage.flush();
    const h = headerFor(l, { l1Entries, l1Offset: l1Entries ? l1At * cs : 0, refcountTableOffset: rtAt * cs, refcountTableClusters: rtClusters });
    await storage.write(0, headerCluster(l, h, cs));
    await storage.flush();
  }

  /** Gives up: the file keeps its data but no header (it is not an image); the caller removes it. */
  async abort(): Promise<void> {
    if (this.#state === 'finished' || this.#state === 'aborted') return;
    this.#state = 'aborted';
    await Promise.allSettled([...this.#pending]);
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
