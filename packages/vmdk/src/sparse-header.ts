/**
 * The hosted sparse extent header (VMware "Virtual Disk Format 1.1",
 * "Hosted Sparse Extent Header"; VMDK 5.0 technote): 512 bytes at sector 0
 * of a sparse extent, and again as the footer of a streamOptimized
 * extent. All fields little-endian; sizes and offsets in sectors.
 */
import { readU16Le, readU32Le, writeU16Le, writeU32Le, wrongFormat } from '@img/block';
import { ALL_ONES, readU64Le, readU64LeOrAllOnes, writeU64Le } from './le64.js';

/** Bytes of the header structure (one sector). */
export const SPARSE_HEADER_SIZE = 512;
/** 'KDMV' read as a little-endian u32 (the bytes "KDMV" on disk). */
export const SPARSE_MAGIC = 0x564d444b;
/** The sector size every VMDK offset counts in. */
export const SECTOR = 512;
/** flags bit 0: the newline detection characters are valid. */
export const FLAG_VALID_NEWLINE = 1 << 0;
/** flags bit 1: a redundant grain directory (and tables) is kept at rgdOffset. */
export const FLAG_REDUNDANT_GRAIN_TABLE = 1 << 1;
/** flags bit 2: a GTE of 1 means "zeroed grain" (VMDK 5.0 technote). */
export const FLAG_ZEROED_GRAIN_GTE = 1 << 2;
/** flags bit 16: grains are compressed. */
export const FLAG_COMPRESSED = 1 << 16;
/** flags bit 17: the extent has markers (grain headers, metadata markers). */
export const FLAG_MARKERS = 1 << 17;
/** Every flag bit this package knows. */
export const KNOWN_FLAGS = FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GRAIN_TABLE | FLAG_ZEROED_GRAIN_GTE | FLAG_COMPRESSED | FLAG_MARKERS;
/** compressAlgorithm: none. */
export const COMPRESSION_NONE = 0;
/** compressAlgorithm: deflate (zlib streams, RFC 1950/1951). */
export const COMPRESSION_DEFLATE = 1;
/** gdOffset value of a streamOptimized header whose grain directory is found through the footer. */
export const GD_AT_END = ALL_ONES;

/** The decoded header. Offsets and sizes are in sectors, as on disk. */
export interface SparseHeader {
  version: number;
  flags: number;
  /** Virtual size of this extent, in sectors. */
  capacity: number;
  /** Sectors per grain. */
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  /** Redundant grain directory, 0 when none. */
  rgdOffset: number;
  /** Grain directory, or GD_AT_END (-1). */
  gdOffset: number;
  /** Sectors of metadata before the first grain. */
  overHead: number;
  uncleanShutdown: boolean;
  /** The four newline-detection characters (0x0a 0x20 0x0d 0x0a when valid). */
  newlineChars: [number, number, number, number];
  compressAlgorithm: number;
}

/** Does `bytes` start with the 'KDMV' magic? */
export function hasSparseMagic(bytes: Uint8Array, at = 0): boolean {
  return bytes.length >= at + 4 && readU32Le(bytes, at) === SPARSE_MAGIC;
}

/** Parses the 512-byte header at `at` (magic checked; values are validated by open). */
export function parseSparseHeader(bytes: Uint8Array, at = 0, file?: string): SparseHeader {
  if (!hasSparseMagic(bytes, at)) throw wrongFormat('vmdk', file);
  return {
    version: readU32Le(bytes, at + 4), // 4: version
    flags: readU32Le(bytes, at + 8), // 8: flags
    capacity: readU64Le(bytes, at + 12, 'capacity', file), // 12: capacity (sectors)
    grainSize: readU64Le(bytes, at + 20, 'grainSize', file), // 20: grainSize (sectors)
    descriptorOffset: readU64Le(bytes, at + 28, 'descriptorOffset', file), // 28
    descriptorSize: readU64Le(bytes, at + 36, 'descriptorSize', file), // 36
    numGTEsPerGT: readU32Le(bytes, at + 44), // 44
    rgdOffset: readU64Le(bytes, at + 48, 'rgdOffset', file), // 48
    gdOffset: readU64LeOrAllOnes(bytes, at + 56, 'gdOffset', file), // 56: GD_AT_END allowed
    overHead: readU64Le(bytes, at + 64, 'overHead', file), // 64
    uncleanShutdown: bytes[at + 72] !== 0, // 72
    newlineChars: [bytes[at + 73]!, bytes[at + 74]!, bytes[at + 75]!, bytes[at + 76]!], // 73..76
    compressAlgorithm: readU16Le(bytes, at + 77), // 77
  };
}

/** Serializes a header into 512 bytes (padding zero). */
export function serializeSparseHeader(h: SparseHeader): Uint8Array {
  const b = new Uint8Array(SPARSE_HEADER_SIZE);
  writeU32Le(b, 0, SPARSE_MAGIC);
  writeU32Le(b, 4, h.version);
  writeU32Le(b, 8, h.flags);
  writeU64Le(b, 12, h.capacity);
  writeU64Le(b, 20, h.grainSize);
  writeU64Le(b, 28, h.descriptorOffset);
  writeU64Le(b, 36, h.descriptorSize);
  writeU32Le(b, 44, h.numGTEsPerGT);
  writeU64Le(b, 48, h.rgdOffset);
  writeU64Le(b, 56, h.gdOffset);
  writeU64Le(b, 64, h.overHead);
  b[72] = h.uncleanShutdown ? 1 : 0;
  b.set(h.newlineChars, 73);
  writeU16Le(b, 77, h.compressAlgorithm);
  return b;
}

/** The newline-detection characters a valid header carries: '\n', ' ', '\r', '\n'. */
export const NEWLINE_CHARS: [number, number, number, number] = [0x0a, 0x20, 0x0d, 0x0a];
