/**
 * The grain map of one sparse extent: its header (or footer), the grain
 * directory held in memory, grain tables read on demand into a bounded
 * cache, and where each structure lies in the file. Every offset read from
 * the image is checked against the file size and the metadata regions
 * before it is used.
 */
import { corrupt, hex, type Storage } from '@img/block';
import { ENTRY_BYTES, GTE_UNALLOCATED, GTE_ZEROED, parseEntries } from './grain-table.js';
import { parseSeSparseEntries, SE_INVALID, SE_ZERO } from './sesparse-header.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, FLAG_REDUNDANT_GRAIN_TABLE, FLAG_ZEROED_GRAIN_GTE, SECTOR, type SparseHeader } from './sparse-header.js';

const FORMAT = 'vmdk';
/** Bytes of grain tables kept in memory per extent (4096 tables of 512 GTEs, 256 seSparse tables). */
const GT_CACHE_BYTES = 8 << 20;

/** A byte range of the file that holds metadata, for overlap checks and messages. */
export interface Region {
  start: number;
  end: number;
  what: string;
}

/**
 * How the extent's tables are laid out: `hosted` (KDMV: u32 sector GTEs,
 * 1 = zeroed grain with the header flag), `cowd` (ESX vmfsSparse: u32
 * sector GTEs, 4096 per table, no zeroed grains) or `sesparse` (ESXi
 * seSparse: typed u64 GTEs naming a cluster index in the grain area).
 */
export type GrainMapLayout = 'hosted' | 'cowd' | 'sesparse';

/** What one grain of the extent is. */
export type GrainEntry =
  | { kind: 'unallocated' }
  | { kind: 'zeroed' }
  /** Stored plain at `hostOffset`, or compressed with its marker (or bare stream) at `hostOffset`. */
  | { kind: 'data'; hostOffset: number; compressed: boolean };

/**
 * One sparse extent file, opened. Created by openSparseExtent
 * (sparse-extent.ts) or by create.
 */
export class GrainMap {
  readonly storage: Storage;
  readonly header: SparseHeader;
  readonly grainBytes: number;
  /** Guest bytes one grain table covers. */
  readonly tableSpan: number;
  /** Bytes of one grain table on disk (whole sectors). */
  readonly tableBytes: number;
  /** The grain directory (GT sector offsets). */
  readonly gd: Uint32Array;
  /** The redundant grain directory, when the extent keeps one. */
  readonly rgd: Uint32Array | undefined;
  /** Byte offset of the grain directory and of its redundant copy (0: none). */
  readonly gdOffset: number;
  readonly rgdOffset: number;
  /** Metadata regions: header, descriptor, directories (grain tables are checked one by one). */
  readonly regions: Region[];
  /** Size of the file when opened, or as the allocator grew it. */
  fileSize: number;
  /** The table layout (hosted sparse unless a COWD or seSparse extent). */
  readonly layout: GrainMapLayout;
  /** Bytes of one grain table entry: 4, or 8 for seSparse. */
  readonly entryBytes: number;
  /** seSparse: the sector where the grain area starts (cluster index 0). */
  readonly grainsSector: number;
  #tables = new Map<number, Uint32Array | Float64Array>();

  constructor(init: { storage: Storage; header: SparseHeader; gd: Uint32Array; rgd?: Uint32Array; gdOffset: number; rgdOffset: number; regions: Region[]; fileSize: number; layout?: GrainMapLayout; grainsSector?: number }) {
    this.storage = init.storage;
    this.header = init.header;
    this.layout = init.layout ?? 'hosted';
    this.entryBytes = this.layout === 'sesparse' ? 8 : ENTRY_BYTES;
    this.grainsSector = init.grainsSector ?? 0;
    this.grainBytes = init.header.grainSize * SECTOR;
    this.tableSpan = this.grainBytes * init.header.numGTEsPerGT;
    this.tableBytes = Math.ceil((init.header.numGTEsPerGT * this.entryBytes) / SECTOR) * SECTOR;
    this.gd = init.gd;
    this.rgd = init.rgd;
    this.gdOffset = init.gdOffset;
    this.rgdOffset = init.rgdOffset;
    this.regions = init.regions;
    this.fileSize = init.fileSize;
  }

  /** Are grains compressed (streamOptimized)? */
  get compressed(): boolean {
    return (this.header.flags & FLAG_COMPRESSED) !== 0 && this.header.compressAlgorithm !== 0;
  }
  /** Does each compressed grain start with a marker (lba, size)? */
  get markers(): boolean {
    return (this.header.flags & FLAG_MARKERS) !== 0;
  }
  /** Does a GTE of 1 mean "zeroed grain"? */
  get zeroedGrains(): boolean {
    return (this.header.flags & FLAG_ZEROED_GRAIN_GTE) !== 0;
  }
  /** Does the extent keep a redundant grain directory? */
  get redundant(): boolean {
    return (this.header.flags & FLAG_REDUNDANT_GRAIN_TABLE) !== 0 && this.rgd !== undefined;
  }
  /** Virtual bytes of this extent. */
  get capacityBytes(): number {
    return this.header.capacity * SECTOR;
  }

  /** The metadata region that [start, end) overlaps, if any. */
  overlap(start: number, end: number): Region | undefined {
    return this.regions.find((r) => start < r.end && r.start < end);
  }

  /** Checks that a grain table at `sector` (from GD entry `index`) lies in the file and clear of the header and descriptor. */
  checkTableOffset(sector: number, index: number, which: 'grain directory' | 'redundant grain directory'): void {
    const at = sector * SECTOR;
    const field = `${which} entry ${index}`;
    if (at + this.tableBytes > this.fileSize) {
      throw corrupt(FORMAT, this.storage.name, `${field} points to a grain table at ${hex(at)}, past the end of the file (${hex(this.fileSize)})`, { field, offset: at });
    }
    const hit = this.overlap(at, at + this.tableBytes);
    if (hit && !hit.what.startsWith('grain directory') && !hit.what.startsWith('redundant grain directory') && hit.what !== 'grain tables') {
      throw corrupt(FORMAT, this.storage.name, `${field} points to a grain table at ${hex(at)}, inside the ${hit.what} (${hex(hit.start)}..${hex(hit.end)})`, { field, offset: at });
    }
  }

  /**
   * The grain table of directory entry `index` (cached), or undefined when
   * the entry is 0. The cache is keyed by the table's sector, so that a
   * directory whose entries all name one table (a hostile image) costs one
   * read, not one per entry.
   */
  async table(index: number): Promise<Uint32Array | Float64Array | undefined> {
    const sector = this.gd[index] ?? GTE_UNALLOCATED;
    if (sector === GTE_UNALLOCATED) return undefined;
    const cached = this.#tables.get(sector);
    if (cached) return cached;
    this.checkTableOffset(sector, index, 'grain directory');
    const bytes = await this.storage.read(sector * SECTOR, this.header.numGTEsPerGT * this.entryBytes);
    const newer = this.#tables.get(sector);
    if (newer) return newer;
    const t = this.layout === 'sesparse' ? parseSeSparseEntries(bytes, this.header.numGTEsPerGT) : parseEntries(bytes, this.header.numGTEsPerGT);
    this.cacheTable(index, t);
    return t;
  }

  /** Replaces the cached copy of table `index` (after the allocator wrote it). */
  cacheTable(index: number, table: Uint32Array | Float64Array): void {
    if (this.#tables.size >= Math.max(16, Math.floor(GT_CACHE_BYTES / this.tableBytes))) this.#tables.clear();
    this.#tables.set(this.gd[index]!, table);
  }

  /** The raw GTE of grain `grain` (0 when its table is not allocated). */
  async rawEntry(grain: number): Promise<number> {
    const n = this.header.numGTEsPerGT;
    const t = await this.table(Math.floor(grain / n));
    return t ? t[grain % n]! : GTE_UNALLOCATED;
  }

  /** What grain `grain` is, with its GTE checked against the file and the metadata. */
  async entry(grain: number): Promise<GrainEntry> {
    const gte = await this.rawEntry(grain);
    return this.decode(gte, grain);
  }

  /** Decodes a GTE of grain `grain`. */
  decode(gte: number, grain: number): GrainEntry {
    if (gte === GTE_UNALLOCATED) return { kind: 'unallocated' };
    const field = `grain table entry for grain ${grain}`;
    let at: number;
    if (this.layout === 'sesparse') {
      if (gte === SE_ZERO) return { kind: 'zeroed' };
      if (gte === SE_INVALID) throw corrupt(FORMAT, this.storage.name, `${field} has an unknown type (seSparse entries are 0, 1, 2 or 3 in the top nibble)`, { field });
      // gte is the cluster index + 1: the grain lies that many grains (less one) into the grain area.
      at = (this.grainsSector + (gte - 1) * this.header.grainSize) * SECTOR;
    } else {
      if (gte === GTE_ZEROED && this.zeroedGrains) return { kind: 'zeroed' };
      at = gte * SECTOR;
    }
    if (!Number.isSafeInteger(at) || at >= this.fileSize) {
      throw corrupt(FORMAT, this.storage.name, `${field} points to ${hex(at)}, past the end of the file (${hex(this.fileSize)})`, { field, offset: at });
    }
    const span = this.compressed ? SECTOR : this.grainBytes;
    const hit = this.overlap(at, at + span);
    if (hit) throw corrupt(FORMAT, this.storage.name, `${field} points to ${hex(at)}, inside the ${hit.what} (${hex(hit.start)}..${hex(hit.end)})`, { field, offset: at });
    return { kind: 'data', hostOffset: at, compressed: this.compressed };
  }
}
