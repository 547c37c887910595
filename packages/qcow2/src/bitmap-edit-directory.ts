/**
 * The bitmap directory as the editor sees it (spec: "Bitmap directory"):
 * every entry with all its fields, parsed and serialized byte for byte, and
 * the bitmaps extension's 24 bytes. bitmaps.ts reads the same structures for
 * info() and NBD; this codec keeps what a rewrite must carry over unchanged
 * (extra data, unknown flags).
 */
import { corrupt, hex, readU16Be, readU32Be, utf8Decode, utf8Encode, writeU16Be, writeU32Be, writeU64Be } from '@img/block';
import { MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE } from './constants.js';
import { entryOffset } from './mapping.js';
import type { BitmapsExtension } from './extensions.js';

const FORMAT = 'qcow2';

/** Fixed part of a directory entry, before its extra data and name. */
export const BITMAP_ENTRY_FIXED = 24;
/** Bitmap flag bit 0: the bitmap was being changed and may be inconsistent. */
export const BITMAP_FLAG_IN_USE = 1;
/** Bitmap flag bit 1: the bitmap tracks writes ("enabled"). */
export const BITMAP_FLAG_AUTO = 2;
/** Bitmap flag bit 2: the extra data may be ignored by a reader that does not know it. */
export const BITMAP_FLAG_EXTRA_COMPATIBLE = 4;
/** Type 1: dirty tracking bitmap, the only type the spec defines. */
export const BITMAP_TYPE_DIRTY_TRACKING = 1;
/** Longest bitmap name qemu accepts, in bytes. */
export const MAX_BITMAP_NAME = 1023;

/** One bitmap directory entry, every field kept. */
export interface BitmapDirectoryEntry {
  tableOffset: number;
  /** Entries of the bitmap table. */
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  /** extra_data, carried over as stored. */
  extra: Uint8Array;
}

/** Bytes one entry takes in the directory, padded to 8. */
export function bitmapEntrySize(e: BitmapDirectoryEntry): number {
  return Math.ceil((BITMAP_ENTRY_FIXED + e.extra.length + utf8Encode(e.name).length) / 8) * 8;
}

/** Parses `nbBitmaps` entries of a directory read whole (`dirOffset` for messages). */
export function parseBitmapDirectory(dir: Uint8Array, nbBitmaps: number, dirOffset: number, file?: string): BitmapDirectoryEntry[] {
  const out: BitmapDirectoryEntry[] = [];
  let at = 0;
  for (let i = 0; i < nbBitmaps; i++) {
    if (at + BITMAP_ENTRY_FIXED > dir.length) throw corrupt(FORMAT, file, `bitmap directory entry ${i} at ${hex(dirOffset + at)} runs past the directory`, { field: 'bitmap directory', offset: dirOffset + at });
    const nameSize = readU16Be(dir, at + 18); // 18: name_size
    const extraSize = readU32Be(dir, at + 20); // 20: extra_data_size
    const end = at + BITMAP_ENTRY_FIXED + extraSize + nameSize;
    if (end > dir.length) throw corrupt(FORMAT, file, `bitmap directory entry ${i} at ${hex(dirOffset + at)} runs past the directory`, { field: 'bitmap directory', offset: dirOffset + at });
    out.push({
      tableOffset: entryOffset(readU32Be(dir, at), readU32Be(dir, at + 4)), // 0: bitmap_table_offset
      tableSize: readU32Be(dir, at + 8), // 8: bitmap_table_size
      flags: readU32Be(dir, at + 12), // 12: flags
      type: dir[at + 16]!, // 16: type
      granularityBits: dir[at + 17]!, // 17: granularity_bits
      extra: dir.slice(at + BITMAP_ENTRY_FIXED, at + BITMAP_ENTRY_FIXED + extraSize), // 24: extra_data
      name: utf8Decode(dir.subarray(at + BITMAP_ENTRY_FIXED + extraSize, end)), // after extra_data: name
    });
    at = Math.ceil(end / 8) * 8;
  }
  return out;
}

/** Serializes entries as a directory (each padded to 8 bytes with zeros). */
export function serializeBitmapDirectory(entries: readonly BitmapDirectoryEntry[]): Uint8Array {
  const out = new Uint8Array(entries.reduce((n, e) => n + bitmapEntrySize(e), 0));
  let at = 0;
  for (const e of entries) {
    const name = utf8Encode(e.name);
    writeU64Be(out, at, e.tableOffset);
    writeU32Be(out, at + 8, e.tableSize);
    writeU32Be(out, at + 12, e.flags >>> 0);
    out[at + 16] = e.type;
    out[at + 17] = e.granularityBits;
    writeU16Be(out, at + 18, name.length);
    writeU32Be(out, at + 20, e.extra.length);
    out.set(e.extra, at + BITMAP_ENTRY_FIXED);
    out.set(name, at + BITMAP_ENTRY_FIXED + e.extra.length);
    at += bitmapEntrySize(e);
  }
  return out;
}

/** The bitmaps extension's data (24 bytes: nb_bitmaps, reserved, directory size, directory offset). */
export function serializeBitmapsExtension(ext: BitmapsExtension): Uint8Array {
  const out = new Uint8Array(24);
  writeU32Be(out, 0, ext.nbBitmaps);
  writeU64Be(out, 8, ext.bitmapDirectorySize);
  writeU64Be(out, 16, ext.bitmapDirectoryOffset);
  return out;
}

/** Checks the extension against the file and the spec's bounds before the directory is read. */
export function checkBitmapsExtension(ext: BitmapsExtension, fileSize: number, clusterSize: number, file?: string): void {
  const { nbBitmaps, bitmapDirectorySize: size, bitmapDirectoryOffset: offset } = ext;
  if (nbBitmaps > MAX_BITMAPS || size > MAX_BITMAP_DIRECTORY_SIZE || offset % clusterSize !== 0 || offset + size > fileSize) {
    throw corrupt(FORMAT, file, `bitmap directory at ${hex(offset)} (${size} bytes, ${nbBitmaps} bitmaps) is out of bounds`, { field: 'bitmap_directory_offset', offset });
  }
}
