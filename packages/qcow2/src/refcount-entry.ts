/**
 * Refcount table entries and refcount block entries (spec: "Refcount
 * table", "Refcount block"): how they are read and written in place, and
 * how many refcount blocks and table clusters it takes to count a number
 * of clusters and themselves. Pure arithmetic over bytes: the open
 * image's refcount structures are in refcount-table.ts.
 */
import { readU32Be, writeU32Be, writeU64Be } from '@img/block';

/**
 * The refcount block offset of a refcount table entry (spec: "Refcount
 * table": bits 9-63, 0 for none). Unlike L1 and L2 entries the top byte
 * is part of the offset: an entry with any of bits 56-63 set names a block
 * far past any file (inexact above 2^53, which only compares as past the end).
 */
export function refcountTableEntryOffset(hi: number, lo: number): number {
  return hi * 0x1_0000_0000 + ((lo & ~0x1ff) >>> 0);
}

/** Reads entry `index` of a refcount block with `bits`-wide entries. */
export function readRefcount(block: Uint8Array, index: number, bits: number): number {
  if (bits === 16) return (block[index * 2]! << 8) | block[index * 2 + 1]!;
  if (bits < 8) {
    const bit = index * bits;
    return (block[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
  }
  if (bits === 8) return block[index]!;
  if (bits === 32) return readU32Be(block, index * 4);
  // 64-bit: values past 2^53 cannot be real counts; report them as the largest safe value.
  const hi = readU32Be(block, index * 8);
  const lo = readU32Be(block, index * 8 + 4);
  return hi > 0x1fffff ? Number.MAX_SAFE_INTEGER : hi * 0x1_0000_0000 + lo;
}

/** Writes entry `index` of a refcount block. */
export function writeRefcount(block: Uint8Array, index: number, bits: number, value: number): void {
  if (bits === 16) {
    block[index * 2] = value >>> 8;
    block[index * 2 + 1] = value & 0xff;
  } else if (bits < 8) {
    const bit = index * bits;
    const mask = ((1 << bits) - 1) << (bit & 7);
    block[bit >> 3] = (block[bit >> 3]! & ~mask) | ((value << (bit & 7)) & mask);
  } else if (bits === 8) {
    block[index] = value;
  } else if (bits === 32) {
    writeU32Be(block, index * 4, value);
  } else {
    writeU64Be(block, index * 8, value);
  }
}

/**
 * Refcount blocks and refcount table clusters that count `clusters`
 * clusters plus themselves: qemu's fixed-point loop (its refcount-area
 * sizing without the generous margin), shared by create, measure and
 * the refcount area of a preallocating resize.
 */
export function refcountFixedPoint(clusters: number, clusterSize: number, perBlock: number): { blocks: number; table: number } {
  const perTableCluster = clusterSize / 8;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return { blocks, table };
}
