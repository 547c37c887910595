/**
 * The bitmap directory (spec: "Bitmaps"): read for `info()` only. Reading
 * disk content never looks at bitmaps.
 */
import { readU16Be, readU32Be, corrupt, hex, utf8Decode } from '@img/block';
import type { Storage } from '@img/block';
import type { BitmapsExtension } from './extensions.js';
import { MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE } from './constants.js';

const FORMAT = 'qcow2';
const ENTRY_FIXED = 24;

/** A bitmap as qemu-img info lists it. */
export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  /** "in-use", "auto" as qemu-img prints them. */
  flags: string[];
}

/** Reads the bitmap directory the extension points to. */
export async function readBitmapDirectory(storage: Storage, ext: BitmapsExtension, fileSize: number, clusterSize: number, file?: string): Promise<Qcow2BitmapInfo[]> {
  const { nbBitmaps, bitmapDirectorySize: size, bitmapDirectoryOffset: offset } = ext;
  if (nbBitmaps > MAX_BITMAPS || size > MAX_BITMAP_DIRECTORY_SIZE || offset % clusterSize !== 0 || offset + size > fileSize) {
    throw corrupt(FORMAT, file, `bitmap directory at ${hex(offset)} (${size} bytes, ${nbBitmaps} bitmaps) is out of bounds`, { field: 'bitmap_directory_offset', offset });
  }
  const dir = await storage.read(offset, size);
  const out: Qcow2BitmapInfo[] = [];
  let at = 0;
  for (let i = 0; i < nbBitmaps; i++) {
    if (at + ENTRY_FIXED > dir.length) throw corrupt(FORMAT, file, `bitmap directory entry ${i} runs past the directory`, { field: 'bitmap directory', offset: offset + at });
    const flags = readU32Be(dir, at + 12); // 12: flags
    const granularityBits = dir[at + 17]!; // 17: granularity_bits
    const nameSize = readU16Be(dir, at + 18); // 18: name_size
    const extraSize = readU32Be(dir, at + 20); // 20: extra_data_size
    const end = at + ENTRY_FIXED + extraSize + nameSize;
    if (end > dir.length) throw corrupt(FORMAT, file, `bitmap directory entry ${i} runs past the directory`, { field: 'bitmap directory', offset: offset + at });
    const names: string[] = [];
    if (flags & 1) names.push('in-use');
    if (flags & 2) names.push('auto');
    out.push({ name: utf8Decode(dir.subarray(at + ENTRY_FIXED + extraSize, end)), granularity: 2 ** granularityBits, flags: names });
    at = Math.ceil(end / 8) * 8;
  }
  return out;
}

/**
 * Every host range the bitmaps use: the directory, each bitmap table and
 * the data clusters the tables point to (for check and for dropping them).
 */
export async function bitmapRanges(storage: Storage, ext: BitmapsExtension, fileSize: number, clusterSize: number): Promise<Array<{ offset: number; bytes: number; what: string }>> {
  const out: Array<{ offset: number; bytes: number; what: string }> = [];
  const { bitmapDirectoryOffset: dirOffset, bitmapDirectorySize: dirSize, nbBitmaps } = ext;
  if (dirSize > MAX_BITMAP_DIRECTORY_SIZE || dirOffset + dirSize > fileSize) return out;
  out.push({ offset: dirOffset, bytes: dirSize, what: 'bitmap directory' });
  const dir = await storage.read(dirOffset, dirSize);
  for (let at = 0, i = 0; i < nbBitmaps && at + ENTRY_FIXED <= dir.length; i++) {
    const tableOffset = readU32Be(dir, at) * 0x1_0000_0000 + readU32Be(dir, at + 4);
    const tableSize = readU32Be(dir, at + 8);
    if (tableSize * 8 <= MAX_BITMAP_DIRECTORY_SIZE && tableOffset + tableSize * 8 <= fileSize) {
      out.push({ offset: tableOffset, bytes: tableSize * 8, what: 'bitmap table' });
      const table = await storage.read(tableOffset, tableSize * 8);
      for (let e = 0; e < tableSize; e++) {
        const off = (readU32Be(table, e * 8) & 0x00ffffff) * 0x1_0000_0000 + ((readU32Be(table, e * 8 + 4) & 0xfffffe00) >>> 0);
        if (off) out.push({ offset: off, bytes: clusterSize, what: 'bitmap data' });
      }
    }
    at = Math.ceil((at + ENTRY_FIXED + readU32Be(dir, at + 20) + readU16Be(dir, at + 18)) / 8) * 8;
  }
  return out;
}
