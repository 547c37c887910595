/**
 * Grain directory and grain table entries (VMware "Virtual Disk Format
 * 1.1", "Grain Directory and Grain Tables"): little-endian u32 sector
 * offsets. A GTE of 0 is an unallocated grain (reads fall through to the
 * parent); 1 is a zeroed grain where the header's zeroed-grain flag is set.
 * A GDE of 0 is a grain table not yet allocated.
 */
import { writeU32Le } from '@img/block';

/** GTE / GDE value of "not allocated". */
export const GTE_UNALLOCATED = 0;
/** GTE value of a zeroed grain (FLAG_ZEROED_GRAIN_GTE). */
export const GTE_ZEROED = 1;
/** Bytes per directory or table entry. */
export const ENTRY_BYTES = 4;
/** The most GTEs per GT this package accepts (qemu's bound; VMware always writes 512). */
export const MAX_GTES_PER_GT = 512;

/** Decodes `count` little-endian u32 entries from `bytes` (missing bytes read as 0). */
export function parseEntries(bytes: Uint8Array, count: number): Uint32Array {
  const out = new Uint32Array(count);
  const n = Math.min(count, Math.floor(bytes.length / ENTRY_BYTES));
  const dv = new DataView(bytes.buffer, bytes.byteOffset, n * ENTRY_BYTES);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * ENTRY_BYTES, true);
  return out;
}

/** Encodes entries as little-endian u32, padded with zeros to `padTo` bytes. */
export function serializeEntries(entries: ArrayLike<number>, padTo = 0): Uint8Array {
  const out = new Uint8Array(Math.max(padTo, entries.length * ENTRY_BYTES));
  for (let i = 0; i < entries.length; i++) writeU32Le(out, i * ENTRY_BYTES, entries[i]!);
  return out;
}
