/**
 * Opening one seSparse extent (ESXi 6.5+ deltas), read-only as qemu opens
 * it: the constant header with the exact version, grain size (4 KiB) and
 * grain table size (4096 entries) qemu accepts and nothing set in the
 * flags, reserved fields or padding; the volatile header, refused when its
 * journal still needs replaying; then the grain directory, each entry
 * turned into the sector of its grain table. Every area the header names
 * is a metadata region that no grain may point into.
 */
import { corrupt, hex, unsupported, type Storage } from '@img/block';
import { GrainMap, type Region } from './grain-map.js';
import { decodeSeSparseGde, hasSeSparseMagic, parseSeSparseConstHeader, parseSeSparseVolatileHeader, SESPARSE_GRAIN_SECTORS, SESPARSE_GTES_PER_GT, SESPARSE_HEADER_SIZE, SESPARSE_TABLE_SECTORS, SESPARSE_VERSION_HI, SESPARSE_VERSION_LO } from './sesparse-header.js';
import { NEWLINE_CHARS, SECTOR } from './sparse-header.js';

const FORMAT = 'vmdk';

/** A sector count as bytes, refused when it cannot be a byte offset. */
function bytesOf(sectors: number, field: string, file: string): number {
  const b = sectors * SECTOR;
  if (!Number.isSafeInteger(b)) throw corrupt(FORMAT, file, `seSparse ${field} (${sectors} sectors) does not fit`, { field });
  return b;
}

/** Opens the seSparse extent in `storage` as a GrainMap (layout 'sesparse'). */
export async function openSeSparseExtent(storage: Storage): Promise<GrainMap> {
  const file = storage.name;
  const fileSize = await storage.size();
  if (fileSize < SESPARSE_HEADER_SIZE) throw corrupt(FORMAT, file, `the file (${fileSize} bytes) is shorter than a seSparse header`, { field: 'header' });
  const head = await storage.read(0, SESPARSE_HEADER_SIZE);
  if (!hasSeSparseMagic(head)) throw corrupt(FORMAT, file, 'the SESPARSE extent does not start with the seSparse magic 0xcafebabe', { field: 'magic', offset: 0 });
  const h = parseSeSparseConstHeader(head, file);
  if (h.versionLo !== SESPARSE_VERSION_LO || h.versionHi !== SESPARSE_VERSION_HI) {
    throw unsupported(FORMAT, file, `seSparse version 0x${h.versionHi.toString(16).padStart(8, '0')}${h.versionLo.toString(16).padStart(8, '0')} is not supported (0x0000000200000001)`, { field: 'version', offset: 8 });
  }
  if (h.grainSize !== SESPARSE_GRAIN_SECTORS) throw unsupported(FORMAT, file, `seSparse grain size ${h.grainSize} sectors is not supported (${SESPARSE_GRAIN_SECTORS})`, { field: 'grainSize', offset: 24, actual: h.grainSize });
  if (h.grainTableSize !== SESPARSE_TABLE_SECTORS) {
    throw unsupported(FORMAT, file, `seSparse grain table size ${h.grainTableSize} sectors is not supported (${SESPARSE_TABLE_SECTORS})`, { field: 'grainTableSize', offset: 32, actual: h.grainTableSize });
  }
  if (h.flagsOrReservedSet) throw unsupported(FORMAT, file, 'seSparse flags or reserved fields (bytes 40..79) are set', { field: 'flags', offset: 40 });
  if (!h.padZero) throw unsupported(FORMAT, file, 'the seSparse constant header has non-zero padding (bytes 208..511)', { field: 'padding', offset: 208 });
  const capacityBytes = bytesOf(h.capacity, 'capacity', file);

  const volatileAt = bytesOf(h.volatileHeaderOffset, 'volatileHeaderOffset', file);
  if (volatileAt < SECTOR || volatileAt + SESPARSE_HEADER_SIZE > fileSize) {
    throw corrupt(FORMAT, file, `the seSparse volatile header at ${hex(volatileAt)} lies outside the file (${hex(fileSize)} bytes)`, { field: 'volatileHeaderOffset', offset: 80 });
  }
  const v = parseSeSparseVolatileHeader(await storage.read(volatileAt, SESPARSE_HEADER_SIZE), file);
  if (!v.magicOk) throw corrupt(FORMAT, file, `the seSparse volatile header at ${hex(volatileAt)} does not start with the magic 0xcafecafe`, { field: 'volatile magic', offset: volatileAt });
  if (v.replayJournal) throw unsupported(FORMAT, file, 'the seSparse extent is dirty: its journal must be replayed, which is not supported', { field: 'replayJournal', offset: volatileAt + 24 });
  if (!v.padZero) throw unsupported(FORMAT, file, 'the seSparse volatile header has non-zero padding', { field: 'volatile padding', offset: volatileAt + 32 });

  const regions: Region[] = [{ start: 0, end: SECTOR, what: 'seSparse constant header' }];
  const area = (offset: number, size: number, what: string, field: string) => {
    if (size === 0) return;
    const start = bytesOf(offset, field, file);
    regions.push({ start, end: start + bytesOf(size, `${field} size`, file), what });
  };
  area(h.volatileHeaderOffset, Math.max(1, h.volatileHeaderSize), 'seSparse volatile header', 'volatileHeaderOffset');
  area(h.journalHeaderOffset, h.journalHeaderSize, 'seSparse journal header', 'journalHeaderOffset');
  area(h.journalOffset, h.journalSize, 'seSparse journal', 'journalOffset');
  area(h.grainDirOffset, h.grainDirSize, 'grain directory', 'grainDirOffset');
  area(h.grainTablesOffset, h.grainTablesSize, 'grain tables', 'grainTablesOffset');
  area(h.freeBitmapOffset, h.freeBitmapSize, 'seSparse free bitmap', 'freeBitmapOffset');
  area(h.backmapOffset, h.backmapSize, 'seSparse backmap', 'backmapOffset');

  const tableSpan = SESPARSE_GRAIN_SECTORS * SESPARSE_GTES_PER_GT * SECTOR;
  const needed = Math.ceil(capacityBytes / tableSpan);
  const dirEntries = (h.grainDirSize * SECTOR) / 8;
  if (dirEntries < needed) {
    throw corrupt(FORMAT, file, `the seSparse grain directory has ${dirEntries} entries, but a capacity of ${h.capacity} sectors needs ${needed}`, { field: 'grainDirSize', offset: 136, expected: needed, actual: dirEntries });
  }
  const gdOffset = bytesOf(h.grainDirOffset, 'grainDirOffset', file);
  if (gdOffset < SECTOR || gdOffset + needed * 8 > fileSize) {
    throw corrupt(FORMAT, file, `the seSparse grain directory (${needed} entries at ${hex(gdOffset)}) lies outside the file (${hex(fileSize)} bytes)`, { field: 'grainDirOffset', offset: 128 });
  }
  const raw = await storage.read(gdOffset, needed * 8);
  const gd = new Uint32Array(needed);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < needed; i++) {
    const index = decodeSeSparseGde(dv.getUint32(i * 8, true), dv.getUint32(i * 8 + 4, true));
    if (index < 0) throw corrupt(FORMAT, file, `seSparse grain directory entry ${i} (at ${hex(gdOffset + i * 8)}) is neither 0 nor an allocated table`, { field: `grain directory entry ${i}`, offset: gdOffset + i * 8 });
    if (index === 0) continue;
    const sector = h.grainTablesOffset + (index - 1) * SESPARSE_TABLE_SECTORS;
    if (sector > 0xffffffff) throw corrupt(FORMAT, file, `seSparse grain directory entry ${i} names table ${index - 1}, beyond any file`, { field: `grain directory entry ${i}`, offset: gdOffset + i * 8 });
    gd[i] = sector;
  }
  return new GrainMap({
    storage,
    layout: 'sesparse',
    grainsSector: h.grainsOffset,
    header: {
      version: 0,
      flags: 0,
      capacity: h.capacity,
      grainSize: SESPARSE_GRAIN_SECTORS,
      descriptorOffset: 0,
      descriptorSize: 0,
      numGTEsPerGT: SESPARSE_GTES_PER_GT,
      rgdOffset: 0,
      gdOffset: h.grainDirOffset,
      overHead: h.grainsOffset,
      uncleanShutdown: false,
      newlineChars: [...NEWLINE_CHARS],
      compressAlgorithm: 0,
    },
    gd,
    gdOffset,
    rgdOffset: 0,
    regions,
    fileSize,
  });
}
