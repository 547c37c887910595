/**
 * L1 and L2 entries (spec: "Cluster mapping", "Extended L2 Entries"):
 * decoding an entry into what a guest cluster is: unallocated, zero,
 * stored at a host offset, compressed, or split into subclusters.
 */
import { readU32Be, writeU32Be, writeU64BeParts, corrupt, hex } from '@img/block';
import { ENTRY_COMPRESSED_HI, ENTRY_COPIED_HI, L2_RESERVED_HI, L2_RESERVED_LO, OFFSET_MASK_HI, OFFSET_MASK_LO, COMPRESSED_SECTOR } from './constants.js';

const FORMAT = 'qcow2';
/** Host offsets past this cannot be file positions (2^53 minus room for a 2 MiB cluster and its compressed tail). */
export const MAX_HOST_OFFSET = 2 ** 53 - 8 * 1024 * 1024;

/** What one L2 entry says about its guest cluster. */
export type ClusterEntry =
  | { type: 'unallocated' }
  /** Reads as zeros; `host` is set for a preallocated zero cluster. */
  | { type: 'zero'; host: number | undefined; copied: boolean }
  | { type: 'normal'; host: number; copied: boolean }
  /** `size` is the number of bytes from `host` that may hold the compressed data. */
  | { type: 'compressed'; host: number; size: number }
  /** Extended L2: per-subcluster allocation (`alloc`) and zero (`zero`) bitmaps, bit i = subcluster i. */
  | { type: 'subclusters'; host: number | undefined; copied: boolean; alloc: number; zero: number };

/** Offset bits 9-55 of an L1/L2 entry given as two 32-bit halves. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_MASK_HI) * 0x1_0000_0000 + ((lo & OFFSET_MASK_LO) >>> 0);
}

/** Reads L1 entry `index` of a raw L1 table: the L2 table offset, 0 if unallocated. */
export function l1EntryOffset(l1: Uint8Array, index: number, clusterSize: number, file: string | undefined, l1Offset: number): number {
  const at = index * 8;
  if (at + 8 > l1.length) return 0;
  const offset = entryOffset(readU32Be(l1, at), readU32Be(l1, at + 4));
  if (offset > MAX_HOST_OFFSET) {
    throw corrupt(FORMAT, file, `L1 entry ${index} at ${hex(l1Offset + at)} points past any possible file size (${hex(offset)})`, { field: 'L1 entry', offset: l1Offset + at, actual: offset });
  }
  if (offset % clusterSize !== 0) {
    throw corrupt(FORMAT, file, `L1 entry ${index} at ${hex(l1Offset + at)} points to an unaligned L2 table offset ${hex(offset)}`, { field: 'L1 entry', offset: l1Offset + at, actual: offset });
  }
  return offset;
}

/** Whether the L1 or L2 entry at byte `at` of a table has the COPIED flag (refcount exactly 1). */
export function entryCopied(table: Uint8Array, at: number): boolean {
  return (readU32Be(table, at) & ENTRY_COPIED_HI) !== 0;
}

/**
 * Sets or clears the COPIED flag of the L1 or L2 entry at byte `at` of a
 * table, nothing else of it; true if the flag changed.
 */
export function setEntryCopied(table: Uint8Array, at: number, copied: boolean): boolean {
  const hi = readU32Be(table, at);
  const next = (copied ? hi | ENTRY_COPIED_HI : hi & ~ENTRY_COPIED_HI) >>> 0;
  if (next === hi) return false;
  writeU32Be(table, at, next);
  return true;
}

/**
 * Writes the 8 bytes at byte `at` of a table as an L1 entry or a standard
 * (not compressed) L2 entry: host `offset` (0: none) with the COPIED flag
 * (refcount exactly 1). The inverse of {@link l1EntryOffset}.
 */
export function writeEntryOffset(table: Uint8Array, at: number, offset: number, copied: boolean): void {
  writeU64BeParts(table, at, (copied ? ENTRY_COPIED_HI : 0) | Math.floor(offset / 0x1_0000_0000), offset >>> 0);
}

/**
 * The fast form of {@link decodeL2Entry} for a standard (8-byte) entry
 * given as its two 32-bit halves, making no object: the host offset of a
 * plain data cluster (not compressed, not zero, aligned, in range), 0 for
 * an entry of all zero bits (unallocated), -1 for anything else (decode
 * that with decodeL2Entry, which also says what is wrong with it). Walks
 * over whole disks meet these two kinds for nearly every entry.
 */
export function plainEntryHost(hi: number, lo: number, g: EntryGeometry): number {
  if (hi === 0 && lo === 0) return 0;
  if (hi & ENTRY_COMPRESSED_HI || (g.zeroFlag && lo & 1)) return -1;
  const host = (hi & OFFSET_MASK_HI) * 0x1_0000_0000 + ((lo & OFFSET_MASK_LO) >>> 0);
  return host !== 0 && host <= MAX_HOST_OFFSET && host % g.clusterSize === 0 ? host : -1;
}

/**
 * The host cluster number a standard (8-byte) entry's offset field names,
 * for walks that count uses of host clusters, making no object and no
 * float division: the cluster (zero entries with a preallocated cluster
 * included, flags ignored), -1 for none (no offset, or an unaligned one,
 * which check reports), -2 for a compressed descriptor (decode it with
 * decodeL2Entry).
 */
export function standardEntryCluster(hi: number, lo: number, clusterBits: number): number {
  if (hi & ENTRY_COMPRESSED_HI) return -2;
  // Shifts, not powers: this runs once per entry of every table (clusterBits is 9..21).
  if ((lo & OFFSET_MASK_LO & ((1 << clusterBits) - 1)) !== 0) return -1;
  const cluster = (hi & OFFSET_MASK_HI) * (1 << (32 - clusterBits)) + (lo >>> clusterBits);
  return cluster === 0 ? -1 : cluster;
}

/** {@link plainEntryCluster}: a standard L2 entry of all zeros (unallocated, no flags). */
export const ENTRY_EMPTY = -1;
/** {@link plainEntryCluster}: any other entry that names no plain cluster; decode it with decodeL2Entry. */
export const ENTRY_DECODE = -2;

/** floor(MAX_HOST_OFFSET / 2^32): an entry whose offset's high word is below it is within MAX_HOST_OFFSET. */
const PLAIN_HI_LIMIT = Math.floor(MAX_HOST_OFFSET / 2 ** 32);

/**
 * Standard (8-byte) L2 entry `j` of a table: its host cluster when it is a plain one (not compressed, no
 * reserved bit, aligned, within bounds: what decodeL2Entry accepts and maps, the COPIED and zero flags aside),
 * ENTRY_EMPTY for an entry of all zeros, else ENTRY_DECODE. For walks over every entry of a large image, which
 * then make no object for most entries and decode the rest.
 */
export function plainEntryCluster(dv: DataView, j: number, clusterBits: number): number {
  const hi = dv.getUint32(j * 8);
  const lo = dv.getUint32(j * 8 + 4);
  if (hi === 0 && lo === 0) return ENTRY_EMPTY;
  // The bound on the high word alone (integer compares, no float multiply per entry): below PLAIN_HI_LIMIT * 2^32
  // every offset is within MAX_HOST_OFFSET; the few entries above it are left to decodeL2Entry's exact bound.
  if ((hi & (L2_RESERVED_HI | ENTRY_COMPRESSED_HI)) !== 0 || (lo & L2_RESERVED_LO) !== 0 || (hi & OFFSET_MASK_HI) >= PLAIN_HI_LIMIT) {
    return ENTRY_DECODE;
  }
  const c = standardEntryCluster(hi, lo, clusterBits);
  return c > 0 ? c : ENTRY_DECODE;
}

/** The geometry fields decodeL2Entry needs. */
export interface EntryGeometry {
  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  /** v3 zero flag (bit 0) allowed: version 3 without extended L2. */
  zeroFlag: boolean;
  /** External data file: host offset 0 with the COPIED bit is a valid allocation. */
  dataFile: boolean;
}

/**
 * Decodes L2 entry `index` of `table`. `tableOffset` is the table's host
 * offset (for messages). Throws ERR_IMG_CORRUPT for entries that cannot be.
 */
export function decodeL2Entry(table: Uint8Array, index: number, g: EntryGeometry, file: string | undefined, tableOffset: number): ClusterEntry {
  const entrySize = g.extendedL2 ? 16 : 8;
  const at = index * entrySize;
  const hi = readU32Be(table, at);
  const lo = readU32Be(table, at + 4);
  const where = () => hex(tableOffset + at);
  if (hi & ENTRY_COMPRESSED_HI) {
    if (g.dataFile) throw corrupt(FORMAT, file, `L2 entry at ${where()} is compressed, which an external data file does not allow`, { field: 'L2 entry', offset: tableOffset + at });
    // Compressed descriptor: offset in bits 0..x-1, additional sectors in bits x..61, x = 62 - (cluster_bits - 8).
    const x = 62 - (g.clusterBits - 8);
    const desc = hi & 0x3fffffff;
    const offHiBits = x - 32;
    const host = (desc & (2 ** offHiBits - 1)) * 0x1_0000_0000 + lo;
    const sectors = Math.floor(desc / 2 ** offHiBits) & (2 ** (g.clusterBits - 8) - 1);
    const size = (sectors + 1) * COMPRESSED_SECTOR - (host % COMPRESSED_SECTOR);
    if (host > MAX_HOST_OFFSET) {
      throw corrupt(FORMAT, file, `L2 entry at ${where()} points past any possible file size (${hex(host)})`, { field: 'L2 entry', offset: tableOffset + at, actual: host });
    }
    return { type: 'compressed', host, size };
  }
  const copied = (hi & ENTRY_COPIED_HI) !== 0;
  const host = entryOffset(hi, lo);
  const allocated = host !== 0 || (copied && g.dataFile);
  if (host > MAX_HOST_OFFSET) {
    throw corrupt(FORMAT, file, `L2 entry at ${where()} points past any possible file size (${hex(host)})`, { field: 'L2 entry', offset: tableOffset + at, actual: host });
  }
  if (allocated && host % g.clusterSize !== 0) {
    throw corrupt(FORMAT, file, `L2 entry at ${where()} points to an unaligned cluster offset ${hex(host)}`, { field: 'L2 entry', offset: tableOffset + at, actual: host });
  }
  if (g.extendedL2) {
    const zero = readU32Be(table, at + 8);
    const alloc = readU32Be(table, at + 12);
    if ((alloc & zero) !== 0) {
      throw corrupt(FORMAT, file, `extended L2 entry at ${where()} marks subclusters both allocated and zero (bitmap ${hex(alloc & zero)})`, { field: 'L2 bitmap', offset: tableOffset + at + 8 });
    }
    if (!allocated && alloc !== 0) {
      throw corrupt(FORMAT, file, `extended L2 entry at ${where()} has allocated subclusters but no cluster offset`, { field: 'L2 bitmap', offset: tableOffset + at + 8 });
    }
    // A cluster offset with no subcluster allocated or zero still owns its host cluster (qemu: unallocated-alloc,
    // what preallocation=metadata leaves and discard keeps): reads fall through, but check and writes must see it.
    if (alloc === 0 && zero === 0 && !allocated) return { type: 'unallocated' };
    return { type: 'subclusters', host: allocated ? host : undefined, copied, alloc, zero };
  }
  if (g.zeroFlag && lo & 1) return { type: 'zero', host: allocated ? host : undefined, copied };
  if (!allocated) return { type: 'unallocated' };
  return { type: 'normal', host, copied };
}
