/**
 * The bitmap directory (spec: "Bitmaps"): read for `info()`, and one
 * bitmap's bits for NBD's qemu:dirty-bitmap contexts. Reading disk content
 * never looks at bitmaps.
 */
import { readU16Be, readU32Be, corrupt, hex, utf8Decode, invalidArg, unsupported } from '@img/block';
import type { Storage } from '@img/block';
import { findExtension, parseBitmapsExtension, parseExtensions, type BitmapsExtension } from './extensions.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE } from './constants.js';
import { readHeaderCluster } from './header-check.js';
import { entryOffset } from './mapping.js';

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

/** A host range a bitmap uses, and where the image names it. */
export interface BitmapRange {
  offset: number;
  bytes: number;
  what: 'bitmap directory' | 'bitmap table' | 'bitmap data';
  /** The field that points at the range: the directory entry of a table, the table entry of a data cluster (the directory itself for the directory). */
  at: number;
}

/**
 * Every host range the bitmaps use: the directory, each bitmap table and
 * the data clusters the tables point to (for check, the writable-open
 * gate, the overlap map and for dropping them).
 */
export async function bitmapRanges(storage: Storage, ext: BitmapsExtension, fileSize: number, clusterSize: number): Promise<BitmapRange[]> {
  const out: BitmapRange[] = [];
  const { bitmapDirectoryOffset: dirOffset, bitmapDirectorySize: dirSize, nbBitmaps } = ext;
  if (dirSize > MAX_BITMAP_DIRECTORY_SIZE || dirOffset + dirSize > fileSize) return out;
  out.push({ offset: dirOffset, bytes: dirSize, what: 'bitmap directory', at: dirOffset });
  const dir = await storage.read(dirOffset, dirSize);
  for (let at = 0, i = 0; i < nbBitmaps && at + ENTRY_FIXED <= dir.length; i++) {
    const tableOffset = readU32Be(dir, at) * 0x1_0000_0000 + readU32Be(dir, at + 4);
    const tableSize = readU32Be(dir, at + 8);
    if (tableSize * 8 <= MAX_BITMAP_DIRECTORY_SIZE && tableOffset + tableSize * 8 <= fileSize) {
      out.push({ offset: tableOffset, bytes: tableSize * 8, what: 'bitmap table', at: dirOffset + at });
      const table = await storage.read(tableOffset, tableSize * 8);
      for (let e = 0; e < tableSize; e++) {
        const off = (readU32Be(table, e * 8) & 0x00ffffff) * 0x1_0000_0000 + ((readU32Be(table, e * 8 + 4) & 0xfffffe00) >>> 0);
        if (off) out.push({ offset: off, bytes: clusterSize, what: 'bitmap data', at: tableOffset + e * 8 });
      }
    }
    at = Math.ceil((at + ENTRY_FIXED + readU32Be(dir, at + 20) + readU16Be(dir, at + 18)) / 8) * 8;
  }
  return out;
}

/** A run of guest bytes a dirty bitmap calls dirty or clean. */
export interface DirtyRun {
  offset: number;
  length: number;
  dirty: boolean;
}

/** The bits of one persistent dirty bitmap, read once (read-only). */
export interface Qcow2DirtyBitmap {
  name: string;
  /** Bytes of guest data one bit covers. */
  granularity: number;
  /** The image's virtual size: the bitmap covers [0, virtualSize). */
  virtualSize: number;
  /** True for an enabled ('auto') bitmap, which qemu keeps current while writing. */
  enabled: boolean;
  /** Dirty and clean runs covering [offset, offset + length) (clipped to the virtual size), adjacent runs differing. */
  runs(offset: number, length: number): DirtyRun[];
}

/** Most bitmap bytes held in memory (one bit per granule: 64 MiB covers 32 TiB at 64 KiB granularity). */
const MAX_BITMAP_BYTES = 64 * 1024 * 1024;

/**
 * The length a persistent bitmap covers on a disk of `size` bytes: whole
 * 512-byte sectors, as qemu counts a qcow2 disk (the tail of a size that is
 * not a multiple of 512 is not covered), so that table sizes agree with
 * qemu's, which refuses a bitmap whose table has any other size.
 */
export function bitmapCoveredLength(size: number): number {
  return Math.floor(size / 512) * 512;
}

/**
 * Reads persistent dirty bitmap `name` of the qcow2 image in `storage`
 * (spec: "Bitmaps"): its table, and the data clusters the table points to.
 * A bitmap qemu marked in use, or bitmaps the image says are inconsistent
 * (autoclear bit 0 clear), are refused: their bits cannot be trusted.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('vm.qcow2', { readOnly: true });
 * // The bits are read whole: the storage may be closed once the call returns.
 * const bitmap = await readQcow2DirtyBitmap(storage, 'b0').finally(() => storage.close());
 * for (const run of bitmap.runs(0, bitmap.virtualSize)) if (run.dirty) console.log(run.offset, run.length);
 * ```
 */
export async function readQcow2DirtyBitmap(storage: Storage, name: string, file: string = storage.name): Promise<Qcow2DirtyBitmap> {
  const fileSize = await storage.size();
  const head = await storage.read(0, Math.min(fileSize, 2 * 1024 * 1024));
  const { header } = readHeaderCluster(head, file);
  const clusterSize = 2 ** header.clusterBits;
  const ext = parseBitmapsExtension(findExtension(parseExtensions(head.subarray(0, clusterSize), header.headerLength, clusterSize, file), EXT_BITMAPS), file);
  const list = ext ? await readBitmapDirectory(storage, ext, fileSize, clusterSize, file) : [];
  const index = list.findIndex((b) => b.name === name);
  if (!ext || index < 0) throw invalidArg(FORMAT, `${file ?? 'the image'} has no persistent bitmap named "${name}"${list.length ? ` (it has ${list.map((b) => `"${b.name}"`).join(', ')})` : ''}`, { field: 'bitmap' });
  if ((header.autoclearFeatures & (1n << BigInt(AUTOCLEAR_BITMAPS))) === 0n) throw corrupt(FORMAT, file, `the bitmaps are inconsistent (autoclear bit 0 is clear): bitmap "${name}" cannot be trusted`, { field: 'autoclear_features' });
  // Walk to the entry (entries are 8-byte aligned) for its table and type.
  const dir = await storage.read(ext.bitmapDirectoryOffset, ext.bitmapDirectorySize);
  let at = 0;
  for (let i = 0; i < index; i++) at = Math.ceil((at + ENTRY_FIXED + readU32Be(dir, at + 20) + readU16Be(dir, at + 18)) / 8) * 8;
  const entryAt = ext.bitmapDirectoryOffset + at;
  if (list[index]!.flags.includes('in-use')) throw corrupt(FORMAT, file, `bitmap "${name}" is in use (an unclean shutdown left it inconsistent)`, { field: 'bitmap flags', offset: entryAt + 12 });
  const tableOffset = entryOffset(readU32Be(dir, at), readU32Be(dir, at + 4)); // 0: bitmap_table_offset
  const tableSize = readU32Be(dir, at + 8); // 8: bitmap_table_size
  const type = dir[at + 16]!; // 16: type
  const granularityBits = dir[at + 17]!; // 17: granularity_bits
  if (type !== 1) throw unsupported(FORMAT, file, `bitmap "${name}" has type ${type} (only dirty tracking bitmaps, type 1, are known)`, { field: 'type', offset: entryAt + 16 });
  if (granularityBits < 9 || granularityBits > 31) throw corrupt(FORMAT, file, `bitmap "${name}" has granularity_bits ${granularityBits} (9 to 31 allowed)`, { field: 'granularity_bits', offset: entryAt + 17 });
  const granularity = 2 ** granularityBits;
  const bitCount = Math.ceil(bitmapCoveredLength(header.size) / granularity);
  const byteCount = Math.ceil(bitCount / 8);
  const needed = Math.ceil(byteCount / clusterSize);
  if (byteCount > MAX_BITMAP_BYTES) throw unsupported(FORMAT, file, `bitmap "${name}" needs ${byteCount} bytes in memory (over ${MAX_BITMAP_BYTES})`, { field: 'granularity_bits', offset: entryAt + 17 });
  if (tableSize !== needed || tableOffset % clusterSize !== 0 || tableOffset + tableSize * 8 > fileSize) {
    throw corrupt(FORMAT, file, `bitmap "${name}" has a table of ${tableSize} entries at ${hex(tableOffset)} (expected ${needed} inside the file)`, { field: 'bitmap_table_size', offset: entryAt + 8 });
  }
  const table = await storage.read(tableOffset, tableSize * 8);
  const bits = new Uint8Array(byteCount);
  for (let e = 0; e < tableSize; e++) {
    const hi = readU32Be(table, e * 8);
    const lo = readU32Be(table, e * 8 + 4);
    const host = entryOffset(hi, lo);
    const start = e * clusterSize;
    const length = Math.min(clusterSize, byteCount - start);
    if (host === 0) {
      if (lo & 1) bits.fill(0xff, start, start + length); // bit 0 without an offset: every bit of the cluster set
      continue;
    }
    if (host % clusterSize !== 0 || host + clusterSize > fileSize) throw corrupt(FORMAT, file, `bitmap "${name}" table entry ${e} points to ${hex(host)}, outside the file or unaligned`, { field: 'bitmap table', offset: tableOffset + e * 8 });
    bits.set(await storage.read(host, length), start);
  }
  const bit = (n: number) => (bits[n >> 3]! >> (n & 7)) & 1;
  return {
    name,
    granularity,
    virtualSize: header.size,
    enabled: list[index]!.flags.includes('auto'),
    runs(offset, length) {
      const end = Math.min(header.size, offset + length);
      const out: DirtyRun[] = [];
      for (let n = Math.floor(offset / granularity); n * granularity < end;) {
        const dirty = bit(n) === 1;
        let m = n + 1;
        // Whole bytes of the same state at once.
        while (m * granularity < end) {
          if ((m & 7) === 0 && bits[m >> 3] === (dirty ? 0xff : 0) && (m + 8) * granularity <= end) m += 8;
          else if (bit(m) === (dirty ? 1 : 0)) m++;
          else break;
        }
        const from = Math.max(offset, n * granularity);
        out.push({ offset: from, length: Math.min(end, m * granularity) - from, dirty });
        n = m;
      }
      return out;
    },
  };
}
