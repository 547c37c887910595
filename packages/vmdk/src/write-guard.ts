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
import { LayoutSpans } from './layout-spans.js';
import { SECTOR } from './sparse-header.js';

const FORMAT = 'vmdk';

/**
 * Throws ERR_IMG_CORRUPT when writing `map` in place could overwrite
 * metadata or other data. Reads every grain table once (the metadata a
 * check reads); memory is 8 bytes per allocated grain ({@link LayoutSpans}).
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
  const spans = new LayoutSpans(map.grainBytes, map.tableBytes);
  for (let t = 0; t < map.gd.length; t++) {
    const sector = map.gd[t]!;
    if (sector !== GTE_UNALLOCATED) {
      map.checkTableOffset(sector, t, 'grain directory');
      const hit = map.overlap(sector * SECTOR, sector * SECTOR + map.tableBytes);
      if (hit) throw refuse(`grain directory entry ${t} points to a grain table at ${hex(sector * SECTOR)}, inside the ${hit.what}`, `grain directory entry ${t}`, map.gdOffset + 4 * t);
      spans.addTable(sector * SECTOR, false);
    }
    const redundant = map.rgd?.[t] ?? GTE_UNALLOCATED;
    if (redundant !== GTE_UNALLOCATED) {
      map.checkTableOffset(redundant, t, 'redundant grain directory');
      const hit = map.overlap(redundant * SECTOR, redundant * SECTOR + map.tableBytes);
      if (hit) throw refuse(`redundant grain directory entry ${t} points to a grain table at ${hex(redundant * SECTOR)}, inside the ${hit.what}`, `redundant grain directory entry ${t}`, map.rgdOffset + 4 * t);
      spans.addTable(redundant * SECTOR, true);
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
      spans.addGrain(e.hostOffset);
    }
  }
  const hit = spans.overlaps(1)[0];
  if (hit) throw refuse(hit.message, hit.what, hit.offset);
}
