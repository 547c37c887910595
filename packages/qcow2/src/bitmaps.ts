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
