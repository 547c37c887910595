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

/** Parses `entries` entries from the BAT bytes. */
export function parseBat(bytes: Uint8Array, entries: number): Uint32Array {
  if (bytes.length < entries * 4) throw new RangeError(`BAT of ${entries} entries needs ${entries * 4} bytes, got ${bytes.length}`);
  const bat = new Uint32Array(entries);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < entries; i++) bat[i] = view.getUint32(i * 4, false);
  return bat;
}

/** Serializes a BAT, padded with unused entries (all ones) to a whole sector. */
export function serializeBat(bat: Uint32Array, padTo = batBytes(bat.length)): Uint8Array {
  const out = new Uint8Array(padTo).fill(0xff);
  const view = new DataView(out.buffer);
  for (let i = 0; i < bat.length; i++) view.setUint32(i * 4, bat[i]!, false);
  return out;
}
