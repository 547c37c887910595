/**
 * Allocation in a writable hosted sparse extent: new grains (and, where a
 * grain directory entry is 0, new grain tables) go at the end of the file.
 * The order keeps a crash harmless, as in qcow2 and VHD: the data (or the
 * zeroed table) is written and flushed before the entry that points to it,
 * in the primary and then the redundant table, and flushed again. A crash
 * in between leaves an unreferenced grain at the end of the file, never an
 * entry pointing at unwritten data.
 */
import { corrupt, hex, writeU32Le, type Storage } from '@img/block';
import { ENTRY_BYTES } from './grain-table.js';
import type { GrainMap } from './grain-map.js';
import { SECTOR } from './sparse-header.js';

const FORMAT = 'vmdk';

/** Where new data goes: the end of the file, rounded up to a sector. */
function endOfFile(map: GrainMap): number {
  return Math.ceil(map.fileSize / SECTOR) * SECTOR;
}

/** Allocates a zeroed grain table (and its redundant copy) for directory entry `t`. Caller holds the allocation lock. */
export async function allocateTable(map: GrainMap, t: number): Promise<Uint32Array> {
  const s = map.storage;
  const zero = new Uint8Array(map.tableBytes);
  const primary = endOfFile(map);
  const redundant = map.redundant ? primary + map.tableBytes : 0;
  await s.write(primary, zero);
  if (redundant) await s.write(redundant, zero);
  map.fileSize = (redundant || primary) + map.tableBytes;
  await s.flush();
  await writeEntry(s, map.gdOffset + t * ENTRY_BYTES, primary / SECTOR);
  if (redundant) await writeEntry(s, map.rgdOffset + t * ENTRY_BYTES, redundant / SECTOR);
  await s.flush();
  map.gd[t] = primary / SECTOR;
  if (map.rgd && redundant) map.rgd[t] = redundant / SECTOR;
  const table = new Uint32Array(map.header.numGTEsPerGT);
  map.cacheTable(t, table);
  return table;
}

/**
 * Writes a whole grain's bytes at the end of the file, flushes, then
 * points grain `grain`'s entries (primary, redundant) at it and flushes.
 * Caller holds the allocation lock. Returns the grain's byte offset.
 */
export async function allocateGrain(map: GrainMap, grain: number, bytes: Uint8Array): Promise<number> {
  const s = map.storage;
  const n = map.header.numGTEsPerGT;
  const t = Math.floor(grain / n);
  const table = (await map.table(t)) ?? (await allocateTable(map, t));
  const at = endOfFile(map);
  if (at / SECTOR > 0xffffffff) throw corrupt(FORMAT, s.name, `a new grain at ${hex(at)} is beyond what a grain table entry can address`, { field: 'grain', offset: at });
  await s.write(at, bytes);
  map.fileSize = at + bytes.length;
  await s.flush();
  const sector = at / SECTOR;
  await writeEntry(s, map.gd[t]! * SECTOR + (grain % n) * ENTRY_BYTES, sector);
  const rt = map.rgd?.[t];
  if (map.redundant && rt) await writeEntry(s, rt * SECTOR + (grain % n) * ENTRY_BYTES, sector);
  await s.flush();
  table[grain % n] = sector;
  return at;
}

async function writeEntry(s: Storage, at: number, value: number): Promise<void> {
  const b = new Uint8Array(ENTRY_BYTES);
  writeU32Le(b, 0, value);
  await s.write(at, b);
}

/**
 * Allocates `count` consecutive grains of one grain table at once: their
 * data in one write at the end of the file, a flush, then their entries
 * (contiguous in the table) in one write per table copy, and a flush. The
 * same order as allocateGrain, for a run. Caller holds the allocation lock
 * and guarantees the grains are unallocated and lie in one table.
 */
export async function allocateGrains(map: GrainMap, first: number, count: number, bytes: Uint8Array): Promise<number> {
  const s = map.storage;
  const n = map.header.numGTEsPerGT;
  const t = Math.floor(first / n);
  const table = (await map.table(t)) ?? (await allocateTable(map, t));
  const at = endOfFile(map);
  const lastSector = (at + bytes.length) / SECTOR;
  if (lastSector > 0xffffffff) throw corrupt(FORMAT, s.name, `new grains at ${hex(at)} are beyond what a grain table entry can address`, { field: 'grain', offset: at });
  await s.write(at, bytes);
  map.fileSize = at + bytes.length;
  await s.flush();
  const entries = new Uint8Array(count * ENTRY_BYTES);
  const sector = at / SECTOR;
  for (let i = 0; i < count; i++) writeU32Le(entries, i * ENTRY_BYTES, sector + i * map.header.grainSize);
  await s.write(map.gd[t]! * SECTOR + (first % n) * ENTRY_BYTES, entries);
  const rt = map.rgd?.[t];
  if (map.redundant && rt) await s.write(rt * SECTOR + (first % n) * ENTRY_BYTES, entries);
  await s.flush();
  for (let i = 0; i < count; i++) table[(first % n) + i] = sector + i * map.header.grainSize;
  return at;
}
