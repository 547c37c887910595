/**
 * The Block Allocation Table (spec, "Block Allocation Table and Data
 * Blocks"): one big-endian 32-bit sector number per block, all ones for a
 * block that is not allocated. Stored padded to a sector.
 */
import { VHD_SECTOR } from './geometry.js';

/** BAT entry of an unallocated block. */
export const BAT_UNUSED = 0xffff_ffff;
/**
 * Most BAT entries we load (a 256 MiB table). A 2040 GiB disk with 2 MiB
 * blocks needs 1044480; only tiny block sizes on huge disks need more.
 */
export const MAX_BAT_ENTRIES = 64 * 1024 * 1024;

/** Bytes the BAT of `entries` entries occupies in the file (padded to a sector). */
export function batBytes(entries: number): number {
  return Math.ceil((entries * 4) / VHD_SECTOR) * VHD_SECTOR;
}

/** Is this machine little-endian (then BAT entries are byte-swapped after a bulk copy)? */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * The entries of `bat` as signed numbers (the same memory): an unused entry
 * is -1. Loops over a whole BAT read this view: 0xFFFFFFFF read from a
 * Uint32Array is not a small integer for V8, so code that has not been
 * optimized yet (a loop that runs once, as at open) boxes every unused
 * entry, and a 2040 GiB disk's million entries kept the garbage collector
 * busy for longer than qemu-img takes to convert the disk.
 */
export function signedEntries(bat: Uint32Array): Int32Array {
  return new Int32Array(bat.buffer, bat.byteOffset, bat.length);
}

/** The first allocated entry at or after `from` and before `end` of a {@link signedEntries} view; `end` if none. */
export function nextAllocated(signed: Int32Array, from: number, end: number): number {
  let i = from;
  while (i < end && signed[i] === -1) i++;
  return i;
}

/** Reverses the bytes of every entry in place; all-ones (unused) entries, most of a sparse BAT, are their own swap. */
function swapEntries(table: Uint32Array): void {
  const t = signedEntries(table);
  for (let i = 0; i < t.length; i++) {
    const x = t[i]!;
    if (x !== -1) t[i] = (x << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24);
  }
}

/**
 * Parses `entries` entries from the BAT bytes: one bulk copy and a byte swap
 * (a 2040 GiB disk has over a million entries; reading them one by one
 * through a DataView took 14 ms).
 */
export function parseBat(bytes: Uint8Array, entries: number): Uint32Array {
  if (bytes.length < entries * 4) throw new RangeError(`BAT of ${entries} entries needs ${entries * 4} bytes, got ${bytes.length}`);
  const bat = new Uint32Array(entries);
  new Uint8Array(bat.buffer).set(bytes.subarray(0, entries * 4));
  if (LITTLE_ENDIAN) swapEntries(bat);
  return bat;
}

/** The bytes of a BAT of `entries` unused entries, padded to a whole sector (all ones). */
export function emptyBatBytes(entries: number): Uint8Array {
  return new Uint8Array(batBytes(entries)).fill(0xff);
}

/**
 * The BAT read into `table`'s own memory (big-endian, as in the file),
 * turned into entries in place: no second 4 MiB buffer and copy for a
 * 2040 GiB disk, as {@link parseBat} needs.
 */
export function batFromFileOrder(table: Uint32Array): Uint32Array {
  if (LITTLE_ENDIAN) swapEntries(table);
  return table;
}

/** Serializes a BAT, padded with unused entries (all ones) to a whole sector. */
export function serializeBat(bat: Uint32Array, padTo = batBytes(bat.length)): Uint8Array {
  const out = new Uint8Array(Math.ceil(padTo / 4) * 4).fill(0xff);
  const table = new Uint32Array(out.buffer, 0, bat.length);
  table.set(bat);
  if (LITTLE_ENDIAN) swapEntries(table);
  return out.subarray(0, padTo);
}
