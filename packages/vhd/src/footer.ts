/**
 * The hard disk footer (spec, "Hard Disk Footer Format"): 512 bytes at the
 * end of every VHD, mirrored at offset 0 in dynamic and differencing disks.
 */
import { readU32Be, readU64BeParts, readU16Be, writeU16Be, writeU32Be, writeU64BeParts, writeU64Be, readU64Be } from '@img/block';
import { vhdChecksum } from './checksum.js';
import type { VhdGeometry } from './geometry.js';
import { formatUuid, parseUuid } from './uuid.js';

/** Size of the footer. Some old Virtual PC fixed disks end with a 511-byte one. */
export const FOOTER_SIZE = 512;
/** 0x00: the footer's cookie. */
export const FOOTER_COOKIE = 'conectix';
/**
 * Cookie of a parent whose coalesce is in progress (our own marker, see
 * coalesce.ts): no VHD reader recognises it, so a half-merged parent can
 * not be mistaken for either its old or its new content.
 */
export const COALESCE_COOKIE = 'coalesce';
/** Features bit that every footer must have set ("reserved", spec). */
export const FEATURE_RESERVED = 0x2;
/** Features bit: the disk is a temporary one (may be deleted on shutdown). */
export const FEATURE_TEMPORARY = 0x1;
/** 0x0c: the only file format version (1.0). */
export const FILE_FORMAT_VERSION = 0x00010000;
/** Data offset of a fixed disk: no dynamic header. */
export const NO_DATA_OFFSET = 0xffff_ffff_ffff_ffffn;

/** Disk types (spec, Disk Type). */
export const DISK_TYPE = { fixed: 2, dynamic: 3, differencing: 4 } as const;
export type VhdType = keyof typeof DISK_TYPE;

/** Seconds between 1970-01-01 and 2000-01-01, the VHD epoch. */
export const VHD_EPOCH = 946_684_800;

/** Offset of the footer's checksum field. */
export const CHECKSUM_OFFSET = 64;

export interface VhdFooter {
  /** 0x00: "conectix" (or our coalesce marker). */
  cookie: string;
  /** 0x08 */
  features: number;
  /** 0x0c: 0x00010000 */
  fileFormatVersion: number;
  /** 0x10: offset of the dynamic disk header; all ones for fixed disks. */
  dataOffset: bigint;
  /** 0x18: seconds since 2000-01-01 00:00 UTC. */
  timestamp: number;
  /** 0x1c: four characters, NULs kept ("vpc ", "win ", "qemu", "tap\0"). */
  creatorApp: string;
  /** 0x20: major << 16 | minor. */
  creatorVersion: number;
  /** 0x24: "Wi2k", "Mac ". */
  creatorHostOs: string;
  /** 0x28 */
  originalSize: number;
  /** 0x30 */
  currentSize: number;
  /** 0x38: cylinders (16 bit), heads (8), sectors per track (8). */
  geometry: VhdGeometry;
  /** 0x3c */
  diskType: number;
  /** 0x40: as stored. */
  checksum: number;
  /** 0x44: 16 bytes. */
  uniqueId: string;
  /** 0x54 */
  savedState: number;
  /** 0x55..0x1ff, kept so that serialize(parse(b)) is b. */
  reserved: Uint8Array;
}

function read4(buf: Uint8Array, offset: number): string {
  let s = '';
  for (let i = 0; i < 4; i++) s += String.fromCharCode(buf[offset + i]!);
  return s;
}

function write4(buf: Uint8Array, offset: number, s: string): void {
  for (let i = 0; i < 4; i++) buf[offset + i] = i < s.length ? s.charCodeAt(i) & 0xff : 0x20;
}

/** Reads the 8-byte cookie of a footer-sized buffer. */
export function readCookie(buf: Uint8Array, offset = 0): string {
  let s = '';
  for (let i = 0; i < 8 && offset + i < buf.length; i++) s += String.fromCharCode(buf[offset + i]!);
  return s;
}

/**
 * Parses a footer. Accepts 511 bytes (old Virtual PC), the missing last
 * reserved byte reading as zero. Does not judge: see footerProblems().
 */
export function parseFooter(bytes: Uint8Array): VhdFooter {
  if (bytes.length !== FOOTER_SIZE && bytes.length !== FOOTER_SIZE - 1) {
    throw new RangeError(`a VHD footer has 512 bytes, not ${bytes.length}`);
  }
  const b = new Uint8Array(FOOTER_SIZE);
  b.set(bytes);
  const { hi, lo } = readU64BeParts(b, 0x10);
  return {
    cookie: readCookie(b, 0),
    features: readU32Be(b, 0x08),
    fileFormatVersion: readU32Be(b, 0x0c),
    dataOffset: (BigInt(hi) << 32n) | BigInt(lo),
    timestamp: readU32Be(b, 0x18),
    creatorApp: read4(b, 0x1c),
    creatorVersion: readU32Be(b, 0x20),
    creatorHostOs: read4(b, 0x24),
    originalSize: readU64Be(b, 0x28, { field: 'footer original size', format: 'vhd' }),
    currentSize: readU64Be(b, 0x30, { field: 'footer current size', format: 'vhd' }),
    geometry: { cylinders: readU16Be(b, 0x38), heads: b[0x3a]!, sectorsPerTrack: b[0x3b]! },
    diskType: readU32Be(b, 0x3c),
    checksum: readU32Be(b, CHECKSUM_OFFSET),
    uniqueId: formatUuid(b.subarray(0x44, 0x54)),
    savedState: b[0x54]!,
    reserved: b.slice(0x55, FOOTER_SIZE),
  };
}

/** Serializes a footer; the checksum is computed, not copied. */
export function serializeFooter(f: VhdFooter): Uint8Array {
  const b = new Uint8Array(FOOTER_SIZE);
  for (let i = 0; i < 8; i++) b[i] = f.cookie.charCodeAt(i) & 0xff;
  writeU32Be(b, 0x08, f.features);
  writeU32Be(b, 0x0c, f.fileFormatVersion);
  writeU64BeParts(b, 0x10, Number(f.dataOffset >> 32n), Number(f.dataOffset & 0xffff_ffffn));
  writeU32Be(b, 0x18, f.timestamp);
  write4(b, 0x1c, f.creatorApp);
  writeU32Be(b, 0x20, f.creatorVersion);
  write4(b, 0x24, f.creatorHostOs);
  writeU64Be(b, 0x28, f.originalSize);
  writeU64Be(b, 0x30, f.currentSize);
  writeU16Be(b, 0x38, f.geometry.cylinders);
  b[0x3a] = f.geometry.heads;
  b[0x3b] = f.geometry.sectorsPerTrack;
  writeU32Be(b, 0x3c, f.diskType);
  b.set(parseUuid(f.uniqueId), 0x44);
  b[0x54] = f.savedState;
  b.set(f.reserved.subarray(0, FOOTER_SIZE - 0x55), 0x55);
  writeU32Be(b, CHECKSUM_OFFSET, vhdChecksum(b, CHECKSUM_OFFSET));
  return b;
}

/** The checksum the footer bytes should carry. */
export function footerChecksum(bytes: Uint8Array): number {
  const b = new Uint8Array(FOOTER_SIZE);
  b.set(bytes.subarray(0, FOOTER_SIZE));
  return vhdChecksum(b, CHECKSUM_OFFSET);
}

/** True if the bytes carry the VHD cookie (or our coalesce marker) and a correct checksum. */
export function isValidFooter(bytes: Uint8Array): boolean {
  if (bytes.length < FOOTER_SIZE - 1) return false;
  const cookie = readCookie(bytes);
  if (cookie !== FOOTER_COOKIE && cookie !== COALESCE_COOKIE) return false;
  return footerChecksum(bytes) === readU32Be(bytes, CHECKSUM_OFFSET);
}

/** The name of a disk type number ("fixed", ...), or undefined. */
export function diskTypeName(type: number): VhdType | undefined {
  for (const [name, value] of Object.entries(DISK_TYPE)) if (value === type) return name as VhdType;
  return undefined;
}

/** VHD timestamp (seconds since 2000) of a Date. */
export function toVhdTimestamp(date: Date): number {
  return Math.max(0, Math.min(0xffff_ffff, Math.floor(date.getTime() / 1000) - VHD_EPOCH));
}

/** Date of a VHD timestamp. */
export function fromVhdTimestamp(timestamp: number): Date {
  return new Date((timestamp + VHD_EPOCH) * 1000);
}

/** Trims the NUL padding of a 4-character field for display ("tap\0" -> "tap"). */
export function displayField(value: string): string {
  return value.replace(/\0+$/, '');
}
