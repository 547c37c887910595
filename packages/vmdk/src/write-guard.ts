/**
 * May a hosted sparse extent be written in place? Reads tolerate a damaged
 * layout (each read looks at its own bytes, as qemu does), but a write
 * through a damaged one lands in someone else's bytes: a grain that shares
 * its sectors with a grain table or another grain, a redundant table inside
 * the descriptor, a descriptor area longer than the file (rewritten whole
 * when the CID changes), a grain running past the end of the file (where
 * the next grain is appended). A writable open checks the whole layout
 * first and refuses such an image with ERR_IMG_CORRUPT, so a write never
 * makes a damaged image worse; it can still be read, checked and converted.
 */
import { corrupt, hex } from '@img/block';
import { GTE_UNALLOCATED } from './grain-table.js';
import type { GrainMap } from './grain-map.js';
import { SECTOR } from './sparse-header.js';

const FORMAT = 'vmdk';
/** Span kinds, kept in the low bits of a sector-aligned start so one numeric sort orders them all. */
const GRAIN = 0;
const TABLE = 1;
const REDUNDANT_TABLE = 2;

/**
 * Throws ERR_IMG_CORRUPT when writing `map` in place could overwrite
 * metadata or other data. Reads every grain table once (the metadata a
 * check reads); memory is about 16 bytes per allocated grain (a list, then a sorted copy).
 */
export async function assertWritableLayout(map: GrainMap): Promise<void> {
  const file = map.storage.name;
  const refuse = (why: string, field: string, offset: number) => corrupt(FORMAT, file, `${why}; a write could overwrite it, so the image opens read-only only (check or convert it)`, { field, offset });
  for (const r of map.regions) {
    if (r.end > map.fileSize) throw refuse(`the ${r.what} (${hex(r.start)}..${hex(r.end)}) runs past the end of the file (${hex(map.fileSize)})`, r.what, r.start);
  }
  const sorted = [...map.regions].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.end) throw refuse(`the ${b.what} at ${hex(b.start)} overlaps the ${a.what} (${hex(a.start)}..${hex(a.end)})`, b.what, b.start);
  }
  const spans: number[] = [];
  const push = (at: number, kind: number) => spans.push(at + kind);
  for (let t = 0; t < map.gd.length; t++) {
    const sector = map.gd[t]!;
    if (sector !== GTE_UNALLOCATED) {
      map.checkTableOffset(sector, t, 'grain directory');
      const hit = map.overlap(sector * SECTOR, sector * SECTOR + map.tableBytes);
      if (hit) throw refuse(`grain directory entry ${t} points to a grain table at ${hex(sector * SECTOR)}, inside the ${hit.what}`, `grain directory entry ${t}`, map.gdOffset + 4 * t);
      push(sector * SECTOR, TABLE);
    }
    const redundant = map.rgd?.[t] ?? GTE_UNALLOCATED;
    if (redundant !== GTE_UNALLOCATED) {
      map.checkTableOffset(redundant, t, 'redundant grain directory');
      const hit = map.overlap(redundant * SECTOR, redundant * SECTOR + map.tableBytes);
      if (hit) throw refuse(`redundant grain directory entry ${t} points to a grain table at ${hex(redundant * SECTOR)}, inside the ${hit.what}`, `redundant grain directory entry ${t}`, map.rgdOffset + 4 * t);
      push(redundant * SECTOR, REDUNDANT_TABLE);
    }
    if (sector === GTE_UNALLOCATED) continue;
    const table = await map.table(t);
    const n = map.header.numGTEsPerGT;
    for (let i = 0; table && i < n; i++) {
      const e = map.decode(table[i]!, t * n + i);
      if (e.kind !== 'data') continue;
      if (e.hostOffset + map.grainBytes > map.fileSize) {
        throw refuse(`grain table entry for grain ${t * n + i} points to a grain at ${hex(e.hostOffset)} that runs past the end of the file (${hex(map.fileSize)})`, `grain table entry for grain ${t * n + i}`, sector * SECTOR + 4 * i);
      }
      push(e.hostOffset, GRAIN);
    }
  }
  const hit = spanOverlaps(spans, map, 1)[0];
  if (hit) throw refuse(hit.message, hit.what, hit.offset);
}

/** One overlap found by {@link spanOverlaps}. */
export interface SpanOverlap {
  /** The later span's start, and what it is ('grain', 'grain table', 'redundant grain table'). */
  offset: number;
  what: string;
  message: string;
}

/**
 * Overlaps among grains and grain tables, `spans` holding each one's byte
 * start plus its kind (0 grain, 1 table, 2 redundant table) in the low bits;
 * at most `limit` of them. Shared with check, which reports what a writable
 * open refuses.
 */
export function spanOverlaps(spans: readonly number[], map: Pick<GrainMap, 'grainBytes' | 'tableBytes'>, limit: number): SpanOverlap[] {
  const out: SpanOverlap[] = [];
  const starts = Float64Array.from(spans).sort();
  let end = 0;
  let previous = -1;
  for (const v of starts) {
    const kind = v % SECTOR;
    const at = v - kind;
    if (previous >= 0 && at < end) {
      out.push({ offset: at, what: what(kind), message: `the ${what(kind)} at ${hex(at)} overlaps the ${what(previous % SECTOR)} at ${hex(previous - (previous % SECTOR))}` });
      if (out.length >= limit) break;
    }
    if (at + (kind === GRAIN ? map.grainBytes : map.tableBytes) > end) {
      end = at + (kind === GRAIN ? map.grainBytes : map.tableBytes);
      previous = v;
    }
  }
  return out;
}

/** The kind bits {@link spanOverlaps} reads: a grain. */
export const SPAN_GRAIN = GRAIN;
/** The kind bits {@link spanOverlaps} reads: a grain table. */
export const SPAN_TABLE = TABLE;
/** The kind bits {@link spanOverlaps} reads: a redundant grain table. */
export const SPAN_REDUNDANT_TABLE = REDUNDANT_TABLE;

function what(kind: number): string {
  return kind === GRAIN ? 'grain' : kind === TABLE ? 'grain table' : 'redundant grain table';
}
