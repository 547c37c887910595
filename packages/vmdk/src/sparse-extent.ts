/**
 * Opening one hosted sparse extent ('KDMV'): the header, or for a
 * streamOptimized extent whose header says GD_AT_END the footer near the
 * end of the file (footer marker, footer, end-of-stream marker, as qemu
 * and the VMDK 5.0 technote lay them out); then every size and offset is
 * bounded by the file before the grain directory is read.
 */
import { corrupt, hex, readU32Le, unsupported, type Storage } from '@img/block';
import { decodeDescriptorBytes, MAX_DESCRIPTOR_BYTES } from './descriptor.js';
import { ENTRY_BYTES, MAX_GTES_PER_GT, parseEntries } from './grain-table.js';
import { GrainMap, type Region } from './grain-map.js';
import { MARKER_EOS, MARKER_FOOTER } from './marker.js';
import { COMPRESSION_DEFLATE, COMPRESSION_NONE, FLAG_COMPRESSED, FLAG_REDUNDANT_GRAIN_TABLE, GD_AT_END, SECTOR, SPARSE_HEADER_SIZE, hasSparseMagic, parseSparseHeader, type SparseHeader } from './sparse-header.js';

const FORMAT = 'vmdk';
/**
 * Largest grain accepted: 0x200000 sectors (1 GiB), qemu's bound. Like
 * qemu, any size from one sector up is read, a power of two or not
 * (VMware and qemu write 64 KiB; COWD deltas use one sector).
 */
export const MAX_GRAIN_SECTORS = 0x200000;
/**
 * Largest compressed grain accepted: 8192 sectors (4 MiB). A compressed
 * grain is inflated whole in memory (and a few are cached), so img bounds
 * it below qemu's 1 GiB; no known writer uses more than 64 KiB.
 */
export const MAX_COMPRESSED_GRAIN_SECTORS = 8192;
/** Largest header version understood (3: streamOptimized and CBT-capable hosted sparse). */
export const MAX_VERSION = 3;

/** An opened sparse extent and the descriptor embedded in it, if any. */
export interface OpenedSparseExtent {
  map: GrainMap;
  /** The header at sector 0 (for GD_AT_END extents the footer's copy is `map.header`). */
  head: SparseHeader;
  /** The embedded descriptor's text, when descriptorOffset is set. */
  descriptorText?: string;
  /** Where the embedded descriptor area lies (bytes), when it has one. */
  descriptorArea?: { offset: number; length: number };
}

/**
 * Refuses a grain size img does not read: 0, above qemu's 1 GiB, or for
 * compressed grains above MAX_COMPRESSED_GRAIN_SECTORS. `offset` is the
 * field's offset in its header.
 */
export function checkGrainSize(grainSize: number, compressed: boolean, file: string, offset = 20): void {
  if (grainSize < 1) throw corrupt(FORMAT, file, 'grain size 0 sectors: a grain holds at least one sector', { field: 'grainSize', offset, actual: grainSize });
  if (grainSize > MAX_GRAIN_SECTORS) {
    throw unsupported(FORMAT, file, `grain size ${grainSize} sectors is larger than ${MAX_GRAIN_SECTORS} sectors (1 GiB), the most qemu reads`, { field: 'grainSize', offset, actual: grainSize });
  }
  if (compressed && grainSize > MAX_COMPRESSED_GRAIN_SECTORS) {
    throw unsupported(FORMAT, file, `compressed grain size ${grainSize} sectors is larger than ${MAX_COMPRESSED_GRAIN_SECTORS} sectors (4 MiB), the most img inflates in memory`, { field: 'grainSize', offset, actual: grainSize });
  }
}

/** Reads the footer of a GD_AT_END extent: footer marker, footer (a header), end-of-stream marker. */
async function readFooter(storage: Storage, fileSize: number): Promise<SparseHeader> {
  const file = storage.name;
  const at = fileSize - 3 * SECTOR;
  if (at < SECTOR) throw corrupt(FORMAT, file, `the header says the grain directory is at the end, but the file (${fileSize} bytes) is too small to hold a footer`, { field: 'gdOffset' });
  const b = await storage.read(at, 3 * SECTOR);
  const markerSize = readU32Le(b, 8);
  const markerType = readU32Le(b, 12);
  const eosSize = readU32Le(b, 2 * SECTOR + 8);
  const eosType = readU32Le(b, 2 * SECTOR + 12);
  const eosValue = readU32Le(b, 2 * SECTOR) + readU32Le(b, 2 * SECTOR + 4);
  if (markerSize !== 0 || markerType !== MARKER_FOOTER || !hasSparseMagic(b, SECTOR) || eosValue !== 0 || eosSize !== 0 || eosType !== MARKER_EOS) {
    throw corrupt(FORMAT, file, `the header says the grain directory is at the end, but no footer marker, footer and end-of-stream marker end the file (looked at ${hex(at)})`, { field: 'footer', offset: at });
  }
  const footer = parseSparseHeader(b, SECTOR, file);
  if (footer.gdOffset === GD_AT_END) throw corrupt(FORMAT, file, `the footer at ${hex(at + SECTOR)} still says the grain directory is at the end`, { field: 'footer gdOffset', offset: at + SECTOR + 56 });
  return footer;
}

/** Validates header fields and answers the grain directory's entry count. */
function validate(h: SparseHeader, file: string): number {
  if (h.version < 1 || h.version > MAX_VERSION) throw unsupported(FORMAT, file, `sparse extent version ${h.version} is not supported (1 to ${MAX_VERSION})`, { field: 'version', offset: 4, actual: h.version });
  // The newline detection characters (offset 73) are not checked: qemu-img and vmdkinfo ignore them, and a file copied
  // in text mode shows itself anyway (its tables and grains move, and they are bounded like any others).
  checkGrainSize(h.grainSize, (h.flags & FLAG_COMPRESSED) !== 0 && h.compressAlgorithm !== COMPRESSION_NONE, file);
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > MAX_GTES_PER_GT) {
    throw corrupt(FORMAT, file, `numGTEsPerGT ${h.numGTEsPerGT} is outside 1..${MAX_GTES_PER_GT}`, { field: 'numGTEsPerGT', offset: 44, actual: h.numGTEsPerGT });
  }
  if (h.capacity * SECTOR > Number.MAX_SAFE_INTEGER) throw corrupt(FORMAT, file, `capacity ${h.capacity} sectors does not fit`, { field: 'capacity', offset: 12 });
  if (h.compressAlgorithm !== COMPRESSION_NONE && h.compressAlgorithm !== COMPRESSION_DEFLATE) {
    throw unsupported(FORMAT, file, `compression algorithm ${h.compressAlgorithm} is not supported (deflate is 1)`, { field: 'compressAlgorithm', offset: 77 });
  }
  return Math.ceil(h.capacity / (h.grainSize * h.numGTEsPerGT));
}

/** Reads a directory of `entries` entries at byte `at`, after checking it lies in the file. */
async function readDirectory(storage: Storage, at: number, entries: number, fileSize: number, what: string, field: string): Promise<Uint32Array> {
  const bytes = entries * ENTRY_BYTES;
  if (at === 0) {
    throw corrupt(FORMAT, storage.name, `the header's ${field} is 0: it names no ${what} (sector 0 is the header itself)`, { field, actual: 0 });
  }
  if (at < SECTOR || at + bytes > fileSize) {
    throw corrupt(FORMAT, storage.name, `the ${what} (${entries} entries at ${hex(at)}) lies outside the file (${hex(fileSize)} bytes)`, { field, offset: at });
  }
  return parseEntries(await storage.read(at, bytes), entries);
}

/**
 * Opens the sparse extent in `storage`. `head` is its first sector when
 * the caller already read it.
 */
export async function openSparseExtent(storage: Storage, head?: Uint8Array): Promise<OpenedSparseExtent> {
  const file = storage.name;
  const fileSize = await storage.size();
  const first = head && head.length >= SPARSE_HEADER_SIZE ? head : await storage.read(0, SPARSE_HEADER_SIZE);
  if (first.length < SPARSE_HEADER_SIZE) throw corrupt(FORMAT, file, `the file (${fileSize} bytes) is shorter than a sparse extent header`, { field: 'header' });
  const headHeader = parseSparseHeader(first, 0, file);
  const h = headHeader.gdOffset === GD_AT_END ? await readFooter(storage, fileSize) : headHeader;
  const gdEntries = validate(h, file);
  // As qemu (sectors, the file's length rounded up): a file that ends before the first grain is truncated, refused at open.
  if (Math.ceil(fileSize / SECTOR) < h.overHead) {
    throw corrupt(FORMAT, file, `the file is truncated: it is ${fileSize} bytes, and its grains start at sector ${h.overHead} (${h.overHead * SECTOR} bytes)`, {
      field: 'overHead',
      offset: headHeader === h ? 64 : fileSize - 2 * SECTOR + 64,
      expected: h.overHead * SECTOR,
      actual: fileSize,
    });
  }
  const regions: Region[] = [{ start: 0, end: SECTOR, what: 'header' }];
  const out: Partial<OpenedSparseExtent> = {};
  if (headHeader.descriptorOffset > 0 && headHeader.descriptorSize > 0) {
    const offset = headHeader.descriptorOffset * SECTOR;
    const length = Math.min(headHeader.descriptorSize * SECTOR, MAX_DESCRIPTOR_BYTES);
    if (offset + length > fileSize) throw corrupt(FORMAT, file, `the embedded descriptor (${length} bytes at ${hex(offset)}) lies past the end of the file`, { field: 'descriptorOffset', offset: 28 });
    regions.push({ start: offset, end: offset + headHeader.descriptorSize * SECTOR, what: 'embedded descriptor' });
    out.descriptorText = decodeDescriptorBytes(await storage.read(offset, length));
    out.descriptorArea = { offset, length: headHeader.descriptorSize * SECTOR };
  }
  const gdOffset = h.gdOffset * SECTOR;
  const gd = await readDirectory(storage, gdOffset, gdEntries, fileSize, 'grain directory', 'gdOffset');
  regions.push({ start: gdOffset, end: gdOffset + gdEntries * ENTRY_BYTES, what: 'grain directory' });
  let rgd: Uint32Array | undefined;
  const rgdOffset = (h.flags & FLAG_REDUNDANT_GRAIN_TABLE) !== 0 ? h.rgdOffset * SECTOR : 0;
  if (rgdOffset > 0) {
    rgd = await readDirectory(storage, rgdOffset, gdEntries, fileSize, 'redundant grain directory', 'rgdOffset');
    regions.push({ start: rgdOffset, end: rgdOffset + gdEntries * ENTRY_BYTES, what: 'redundant grain directory' });
  }
  const map = new GrainMap({ storage, header: h, gd, ...(rgd ? { rgd } : {}), gdOffset, rgdOffset, regions, fileSize });
  return { map, head: headHeader, ...out };
}
