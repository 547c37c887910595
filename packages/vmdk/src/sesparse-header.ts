/**
 * The seSparse extent (ESXi 6.5+ "space-efficient sparse" deltas, extent
 * type SESPARSE): a constant header in sector 0, a volatile header, a
 * journal, a grain directory of u64 entries naming grain tables by index,
 * grain tables of typed u64 entries naming grains by cluster index, and
 * the grain area. VMware documents none of it; the field layout and the
 * values accepted are those qemu's block/vmdk.c reads (read-only there
 * too). All fields little-endian u64; offsets and sizes in sectors.
 */
import { readU32Le } from '@img/block';
import { readU64Le } from './le64.js';
import { GTE_UNALLOCATED } from './grain-table.js';

/** Bytes of the constant header and of the volatile header (one sector each). */
export const SESPARSE_HEADER_SIZE = 512;
/** Constant header magic (low u32 of the u64 at 0; the high u32 is 0). */
export const SESPARSE_CONST_MAGIC = 0xcafebabe;
/** Volatile header magic. */
export const SESPARSE_VOLATILE_MAGIC = 0xcafecafe;
/** Low u32 of the one version accepted, 0x0000000200000001. */
export const SESPARSE_VERSION_LO = 1;
/** High u32 of the one version accepted. */
export const SESPARSE_VERSION_HI = 2;
/** The one grain size accepted: 8 sectors (4 KiB). */
export const SESPARSE_GRAIN_SECTORS = 8;
/** The one grain table size accepted: 64 sectors, i.e. 4096 u64 entries covering 16 MiB. */
export const SESPARSE_TABLE_SECTORS = 64;
/** Grain table entries per table. */
export const SESPARSE_GTES_PER_GT = (SESPARSE_TABLE_SECTORS * 512) / 8;
/** High u32 of an allocated grain directory entry: type 1 in the top nibble, nothing else. */
export const SESPARSE_GDE_ALLOCATED_HI = 0x10000000;
/** Decoded grain table entry of a grain that reads as zeros (types 1, unmapped, and 2, zero). */
export const SE_ZERO = -1;
/** Decoded grain table entry of an unknown type, or of type 0 with other bits set. */
export const SE_INVALID = -2;

/** The constant header. Offsets and sizes in sectors. */
export interface SeSparseConstHeader {
  /** The u64 at 8, as its low and high halves. */
  versionLo: number;
  versionHi: number;
  capacity: number;
  grainSize: number;
  grainTableSize: number;
  /** The flags u64 and the four reserved u64s are all required to be 0: true when one is not. */
  flagsOrReservedSet: boolean;
  volatileHeaderOffset: number;
  volatileHeaderSize: number;
  journalHeaderOffset: number;
  journalHeaderSize: number;
  journalOffset: number;
  journalSize: number;
  grainDirOffset: number;
  grainDirSize: number;
  grainTablesOffset: number;
  grainTablesSize: number;
  freeBitmapOffset: number;
  freeBitmapSize: number;
  backmapOffset: number;
  backmapSize: number;
  grainsOffset: number;
  grainsSize: number;
  /** Bytes 208..511 are padding that must be zero. */
  padZero: boolean;
}

/** The volatile header. */
export interface SeSparseVolatileHeader {
  magicOk: boolean;
  freeGtNumber: number;
  nextTxnSeqNumber: number;
  /** Non-zero: the journal must be replayed before the extent is read (a dirty extent). */
  replayJournal: boolean;
  padZero: boolean;
}

function allZero(bytes: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Does `bytes` start with the constant header's magic (0x00000000cafebabe)? */
export function hasSeSparseMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && readU32Le(bytes, 0) === SESPARSE_CONST_MAGIC && readU32Le(bytes, 4) === 0;
}

/** Parses the constant header (magic checked by the caller with hasSeSparseMagic). */
export function parseSeSparseConstHeader(b: Uint8Array, file?: string): SeSparseConstHeader {
  const u64 = (at: number, field: string) => readU64Le(b, at, field, file);
  let flagsOrReservedSet = false;
  for (let at = 40; at < 80; at += 4) if (readU32Le(b, at) !== 0) flagsOrReservedSet = true; // 40: flags, 48..79: reserved1..4
  return {
    versionLo: readU32Le(b, 8), // 8: version
    versionHi: readU32Le(b, 12),
    capacity: u64(16, 'capacity'), // 16
    grainSize: u64(24, 'grainSize'), // 24
    grainTableSize: u64(32, 'grainTableSize'), // 32
    flagsOrReservedSet,
    volatileHeaderOffset: u64(80, 'volatileHeaderOffset'), // 80
    volatileHeaderSize: u64(88, 'volatileHeaderSize'), // 88
    journalHeaderOffset: u64(96, 'journalHeaderOffset'), // 96
    journalHeaderSize: u64(104, 'journalHeaderSize'), // 104
    journalOffset: u64(112, 'journalOffset'), // 112
    journalSize: u64(120, 'journalSize'), // 120
    grainDirOffset: u64(128, 'grainDirOffset'), // 128
    grainDirSize: u64(136, 'grainDirSize'), // 136
    grainTablesOffset: u64(144, 'grainTablesOffset'), // 144
    grainTablesSize: u64(152, 'grainTablesSize'), // 152
    freeBitmapOffset: u64(160, 'freeBitmapOffset'), // 160
    freeBitmapSize: u64(168, 'freeBitmapSize'), // 168
    backmapOffset: u64(176, 'backmapOffset'), // 176
    backmapSize: u64(184, 'backmapSize'), // 184
    grainsOffset: u64(192, 'grainsOffset'), // 192
    grainsSize: u64(200, 'grainsSize'), // 200
    padZero: allZero(b, 208, SESPARSE_HEADER_SIZE), // 208..511: padding
  };
}

/** Parses the volatile header (one sector). */
export function parseSeSparseVolatileHeader(b: Uint8Array, file?: string): SeSparseVolatileHeader {
  return {
    magicOk: readU32Le(b, 0) === SESPARSE_VOLATILE_MAGIC && readU32Le(b, 4) === 0, // 0: magic
    freeGtNumber: readU64Le(b, 8, 'freeGtNumber', file), // 8
    nextTxnSeqNumber: readU64Le(b, 16, 'nextTxnSeqNumber', file), // 16
    replayJournal: readU32Le(b, 24) !== 0 || readU32Le(b, 28) !== 0, // 24
    padZero: allZero(b, 32, SESPARSE_HEADER_SIZE), // 32..511: padding
  };
}

/**
 * Decodes one grain directory entry: 0 (no table), the table's index in
 * the grain table area, or -1 when the entry is neither (its high u32 must
 * be exactly 0x10000000).
 */
export function decodeSeSparseGde(lo: number, hi: number): number {
  if (lo === 0 && hi === 0) return 0;
  return hi === SESPARSE_GDE_ALLOCATED_HI ? lo + 1 : -1;
}

/**
 * Decodes `count` grain table entries (little-endian u64) into numbers: 0
 * unallocated, SE_ZERO for an unmapped or zero grain, SE_INVALID for an
 * entry no reader accepts, else the grain's cluster index plus one. The
 * cluster index is split across an allocated entry: its low 12 bits sit in
 * bits 48..59, the rest in bits 0..47.
 */
export function parseSeSparseEntries(bytes: Uint8Array, count: number): Float64Array {
  const out = new Float64Array(count);
  const n = Math.min(count, Math.floor(bytes.length / 8));
  const dv = new DataView(bytes.buffer, bytes.byteOffset, n * 8);
  for (let i = 0; i < n; i++) {
    const lo = dv.getUint32(i * 8, true);
    const hi = dv.getUint32(i * 8 + 4, true);
    const type = hi >>> 28;
    if (type === 0) out[i] = lo === 0 && hi === 0 ? GTE_UNALLOCATED : SE_INVALID;
    else if (type === 1 || type === 2) out[i] = SE_ZERO;
    else if (type === 3) out[i] = ((hi >>> 16) & 0xfff) + ((hi & 0xffff) * 0x100000000 + lo) * 4096 + 1;
    else out[i] = SE_INVALID;
  }
  return out;
}
