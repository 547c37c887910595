/**
 * L2 entries as the writer sees them: one shape for both layouts (standard
 * and extended), with allocation and zero state per unit (the subcluster,
 * or the whole cluster without extended L2 entries).
 */
import { writeU64BeParts } from '@img/block';
import { decodeL2Entry, type ClusterEntry, type EntryGeometry } from './mapping.js';
import { ENTRY_COPIED_HI, ENTRY_COMPRESSED_HI, COMPRESSED_SECTOR } from './constants.js';

const TWO32 = 0x1_0000_0000;

/** One L2 entry in a form that covers both entry layouts. */
export interface Entry {
  host: number | undefined;
  copied: boolean;
  /** Compressed data: [host, host + size) in the image file. */
  compressed: { host: number; size: number } | undefined;
  /** Allocated units (subclusters; bit 0 only without extended L2). */
  alloc: number;
  /** Units that read as zeros. */
  zero: number;
}

const put64 = writeU64BeParts;

/** Decodes entry `index` of an L2 table. */
export function decodeEntry(table: Uint8Array, index: number, g: EntryGeometry, file: string, tableOffset: number): Entry {
  return writerEntry(decodeL2Entry(table, index, g, file, tableOffset), g);
}

/** An entry as the codec in mapping.ts decodes it, in the writer's form. */
export function writerEntry(e: ClusterEntry, g: EntryGeometry): Entry {
  const full = g.extendedL2 ? 0xffffffff : 1;
  switch (e.type) {
    case 'unallocated':
      return { host: undefined, copied: false, compressed: undefined, alloc: 0, zero: 0 };
    case 'zero':
      return { host: e.host, copied: e.copied, compressed: undefined, alloc: 0, zero: full };
    case 'normal':
      return { host: e.host, copied: e.copied, compressed: undefined, alloc: full, zero: 0 };
    case 'compressed':
      return { host: undefined, copied: false, compressed: { host: e.host, size: e.size }, alloc: 0, zero: 0 };
    case 'subclusters':
      return { host: e.host, copied: e.copied, compressed: undefined, alloc: e.alloc, zero: e.zero };
  }
}

/**
 * Fills the entries of an empty L2 table that `hosts` names (the host
 * cluster number of each entry, 0: leave it unallocated) as allocated,
 * COPIED data clusters, every unit allocated: what encodeEntry writes for
 * such an entry, written directly (a fresh image's 16384 entries per GiB,
 * in code that runs once and so is not optimised). Where `used` is given,
 * only the entries of its (first, count) pairs are looked at.
 */
export function encodeDataEntries(table: Uint8Array, hosts: Float64Array, g: EntryGeometry, used?: readonly number[]): void {
  const width = g.extendedL2 ? 16 : 8;
  if (hosts.length * width > table.length) throw new RangeError(`${hosts.length} entries do not fit in an L2 table of ${table.length} bytes`);
  // Only the entries `used` names ((first, count) pairs) may be set: a sparse image's tables are mostly empty.
  const pairs = used ?? [0, hosts.length];
  for (let k = 0; k + 1 < pairs.length; k += 2) {
    const end = Math.min(hosts.length, pairs[k]! + pairs[k + 1]!);
    for (let i = pairs[k]!; i < end; i++) {
      const c = hosts[i]!;
      if (c === 0) continue;
      const host = c * g.clusterSize;
      put64(table, i * width, ENTRY_COPIED_HI | Math.floor(host / TWO32), host);
      // Extended entries: no unit reads as zeros, every unit allocated.
      if (width === 16) put64(table, i * width + 8, 0, 0xffffffff);
    }
  }
}

/**
 * Sets entries [first, first + count) of an L2 table to COPIED data
 * clusters at `host`, `host` + one cluster, ...: with extended entries,
 * `alloc` allocated units and `zero` units reading as zeros (a
 * preallocating resize maps its run of new clusters so; an entry at a
 * time would be slow for small clusters).
 */
export function encodeDataRun(table: Uint8Array, first: number, count: number, host: number, g: EntryGeometry, alloc = 0xffffffff, zero = 0): void {
  const width = g.extendedL2 ? 16 : 8;
  if ((first + count) * width > table.length) throw new RangeError(`entries ${first}..${first + count - 1} do not fit in an L2 table of ${table.length} bytes`);
  for (let i = 0; i < count; i++) {
    const h = host + i * g.clusterSize;
    put64(table, (first + i) * width, ENTRY_COPIED_HI | Math.floor(h / TWO32), h);
    if (width === 16) put64(table, (first + i) * width + 8, zero, alloc);
  }
}

/** Encodes `e` as entry `index` of an L2 table. */
export function encodeEntry(table: Uint8Array, index: number, e: Entry, g: EntryGeometry): void {
  const at = index * (g.extendedL2 ? 16 : 8);
  if (e.compressed) {
    const x = 62 - (g.clusterBits - 8);
    const sectors = Math.ceil(((e.compressed.host % COMPRESSED_SECTOR) + e.compressed.size) / COMPRESSED_SECTOR) - 1;
    const hi = ENTRY_COMPRESSED_HI | (sectors * 2 ** (x - 32)) | Math.floor(e.compressed.host / TWO32);
    put64(table, at, hi, e.compressed.host);
    if (g.extendedL2) put64(table, at + 8, 0, 0);
    return;
  }
  const host = e.host ?? 0;
  const allocated = e.host !== undefined;
  const hi = (allocated && e.copied ? ENTRY_COPIED_HI : 0) | Math.floor(host / TWO32);
  if (g.extendedL2) {
    put64(table, at, allocated ? hi : 0, allocated ? host : 0);
    put64(table, at + 8, e.zero, e.alloc);
    return;
  }
  if (e.alloc) put64(table, at, hi, host);
  else if (e.zero) put64(table, at, allocated ? hi : 0, (allocated ? host : 0) | 1);
  else put64(table, at, 0, 0);
}
