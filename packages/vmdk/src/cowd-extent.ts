/**
 * Opening one COWD extent (ESX vmfsSparse deltas): the header, then the
 * grain directory after checking that it lies in the file, past the
 * header, and covers the whole capacity. Grain tables are read on demand
 * by the GrainMap (u32 sector entries, 4096 per table, 0 = not in this
 * layer). Read-only: nothing here allocates.
 */
import { corrupt, hex, type Storage } from '@img/block';
import { COWD_GTES_PER_GT, COWD_HEADER_SIZE, parseCowdHeader } from './cowd-header.js';
import { ENTRY_BYTES, parseEntries } from './grain-table.js';
import { GrainMap } from './grain-map.js';
import { NEWLINE_CHARS, SECTOR } from './sparse-header.js';
import { checkGrainSize } from './sparse-extent.js';

const FORMAT = 'vmdk';

/** Opens the COWD extent in `storage` as a GrainMap (layout 'cowd'). */
export async function openCowdExtent(storage: Storage): Promise<GrainMap> {
  const file = storage.name;
  const fileSize = await storage.size();
  if (fileSize < COWD_HEADER_SIZE) throw corrupt(FORMAT, file, `the file (${fileSize} bytes) is shorter than a COWD header (${COWD_HEADER_SIZE} bytes)`, { field: 'header' });
  const h = parseCowdHeader(await storage.read(0, COWD_HEADER_SIZE));
  checkGrainSize(h.grainSize, false, file, 16);
  const needed = Math.ceil(h.capacity / (h.grainSize * COWD_GTES_PER_GT));
  if (h.numGDEntries < needed) {
    throw corrupt(FORMAT, file, `the COWD grain directory has ${h.numGDEntries} entries, but a capacity of ${h.capacity} sectors needs ${needed}`, { field: 'numGDEntries', offset: 24, expected: needed, actual: h.numGDEntries });
  }
  const gdOffset = h.gdOffset * SECTOR;
  const gdBytes = needed * ENTRY_BYTES;
  if (gdOffset < COWD_HEADER_SIZE || gdOffset + gdBytes > fileSize) {
    throw corrupt(FORMAT, file, `the COWD grain directory (${needed} entries at ${hex(gdOffset)}) lies outside the file past the header (${hex(fileSize)} bytes)`, { field: 'gdOffset', offset: 20 });
  }
  const gd = parseEntries(await storage.read(gdOffset, gdBytes), needed);
  return new GrainMap({
    storage,
    layout: 'cowd',
    header: {
      version: h.version,
      flags: 0,
      capacity: h.capacity,
      grainSize: h.grainSize,
      descriptorOffset: 0,
      descriptorSize: 0,
      numGTEsPerGT: COWD_GTES_PER_GT,
      rgdOffset: 0,
      gdOffset: h.gdOffset,
      overHead: 0,
      uncleanShutdown: h.dirty,
      newlineChars: [...NEWLINE_CHARS],
      compressAlgorithm: 0,
    },
    gd,
    gdOffset,
    rgdOffset: 0,
    regions: [
      { start: 0, end: COWD_HEADER_SIZE, what: 'COWD header' },
      { start: gdOffset, end: gdOffset + Math.max(h.numGDEntries * ENTRY_BYTES, gdBytes), what: 'grain directory' },
    ],
    fileSize,
  });
}
