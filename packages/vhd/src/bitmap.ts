/**
 * Sector bitmaps (spec, "Block Allocation Table and Data Blocks"): before
 * each block's data, one bit per sector, most significant bit first,
 * padded to a whole sector. A set bit means the sector is in this file; a
 * clear bit means zeros (dynamic) or the parent's sector (differencing).
 */
import { VHD_SECTOR } from './geometry.js';

/** Bytes of the bitmap in front of a block of `blockSize` bytes (padded to a sector). */
export function bitmapSize(blockSize: number): number {
  return Math.ceil(blockSize / VHD_SECTOR / 8 / VHD_SECTOR) * VHD_SECTOR;
}

/** Is sector `i` of the block marked present? */
export function testBit(bitmap: Uint8Array, i: number): boolean {
  return ((bitmap[i >> 3]! >> (7 - (i & 7))) & 1) === 1;
}

/** Marks sectors [first, first + count) present (or absent). */
export function setBits(bitmap: Uint8Array, first: number, count: number, value = true): void {
  let i = first;
  const end = first + count;
  while (i < end) {
    if ((i & 7) === 0 && end - i >= 8) {
      bitmap[i >> 3] = value ? 0xff : 0;
      i += 8;
      continue;
    }
    const mask = 1 << (7 - (i & 7));
    if (value) bitmap[i >> 3]! |= mask;
    else bitmap[i >> 3]! &= ~mask;
    i++;
  }
}

/** Are all sectors [first, first + count) present? */
export function allBitsSet(bitmap: Uint8Array, first: number, count: number): boolean {
  for (const run of bitRuns(bitmap, first, count)) if (!run.set) return false;
  return true;
}

/** A run of equal bits: sectors [start, start + count). */
export interface BitRun {
  start: number;
  count: number;
  set: boolean;
}

/** Runs of set and clear bits over sectors [first, first + count). */
export function* bitRuns(bitmap: Uint8Array, first: number, count: number): Generator<BitRun> {
  const end = first + count;
  let i = first;
  while (i < end) {
    const set = testBit(bitmap, i);
    let j = i + 1;
    while (j < end) {
      if ((j & 7) === 0 && end - j >= 8) {
        const byte = bitmap[j >> 3]!;
        if (byte === (set ? 0xff : 0)) {
          j += 8;
          continue;
        }
      }
      if (testBit(bitmap, j) !== set) break;
      j++;
    }
    yield { start: i, count: j - i, set };
    i = j;
  }
}
