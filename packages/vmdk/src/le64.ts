/**
 * Little-endian 64-bit fields (VMDK is little-endian throughout; @img/block
 * has the 64-bit readers only in big-endian). Values above 2^53 are refused
 * as the design's one checked path for 64-bit fields; the all-ones value is
 * reported separately because the spec gives it a meaning (GD_AT_END).
 */
import { corrupt, readU32Le, writeU32Le } from '@img/block';

/** The all-ones 64-bit value, returned as this sentinel by {@link readU64LeOrAllOnes}. */
export const ALL_ONES = -1;

/**
 * Reads an unsigned 64-bit little-endian value; the all-ones value answers
 * ALL_ONES, anything else above 2^53 is ERR_IMG_CORRUPT naming `field`.
 */
export function readU64LeOrAllOnes(buf: Uint8Array, offset: number, field: string, file?: string): number {
  const lo = readU32Le(buf, offset);
  const hi = readU32Le(buf, offset + 4);
  if (lo === 0xffffffff && hi === 0xffffffff) return ALL_ONES;
  if (hi > 0x1fffff) throw corrupt('vmdk', file, `${field} at byte ${offset} does not fit in 53 bits`, { field, offset });
  return hi * 0x100000000 + lo;
}

/** Reads an unsigned 64-bit little-endian value (ERR_IMG_CORRUPT above 2^53, the all-ones value included). */
export function readU64Le(buf: Uint8Array, offset: number, field: string, file?: string): number {
  const v = readU64LeOrAllOnes(buf, offset, field, file);
  if (v === ALL_ONES) throw corrupt('vmdk', file, `${field} at byte ${offset} is all ones`, { field, offset });
  return v;
}

/** Writes `value` (a safe integer >= 0, or ALL_ONES) as 64-bit little-endian. */
export function writeU64Le(buf: Uint8Array, offset: number, value: number): void {
  if (value === ALL_ONES) {
    writeU32Le(buf, offset, 0xffffffff);
    writeU32Le(buf, offset + 4, 0xffffffff);
    return;
  }
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`writeU64Le: ${value} is not a safe unsigned integer`);
  writeU32Le(buf, offset, value % 0x100000000);
  writeU32Le(buf, offset + 4, Math.floor(value / 0x100000000));
}
