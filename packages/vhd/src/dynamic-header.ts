/**
 * The dynamic disk header (spec, "Dynamic Disk Header Format"): 1024 bytes
 * at the footer's data offset, present in dynamic and differencing disks.
 */
import { readU32Be, readU64BeParts, writeU32Be, writeU64BeParts } from '@img/block';
import { vhdChecksum } from './checksum.js';
import { readCookie } from './footer.js';
import { formatUuid, parseUuid } from './uuid.js';

/** Bytes of the dynamic disk header. */
export const DYNAMIC_HEADER_SIZE = 1024;
/** 0x00: the header's cookie. */
export const DYNAMIC_HEADER_COOKIE = 'cxsparse';
/** 0x18: the only header version (1.0). */
export const DYNAMIC_HEADER_VERSION = 0x00010000;
/** Offset of the header's checksum field. */
export const DYNAMIC_CHECKSUM_OFFSET = 0x24;
/** Bytes of the parent unicode name field (256 UTF-16 code units). */
export const PARENT_NAME_SIZE = 512;
/** Parent locator entries in the header. */
export const PARENT_LOCATOR_COUNT = 8;
/** Bytes of one parent locator entry. */
export const PARENT_LOCATOR_ENTRY_SIZE = 24;
const LOCATORS_AT = 0x240;

/** One parent locator entry (spec, "Parent Locator Entries"). */
export interface ParentLocatorEntry {
  /** +0: platform code as four characters ("W2ru", "W2ku", "MacX"), "\0\0\0\0" when unused. */
  platformCode: string;
  /** +4: the space reserved for the data (the spec says sectors; Windows writes bytes). */
  platformDataSpace: number;
  /** +8: bytes of locator data. */
  platformDataLength: number;
  /** +12 */
  reserved: number;
  /** +16: file offset of the locator data. */
  platformDataOffset: number;
}

export interface VhdDynamicHeader {
  /** 0x00: "cxsparse" */
  cookie: string;
  /** 0x08: unused, all ones. */
  dataOffset: bigint;
  /** 0x10: file offset of the BAT. */
  tableOffset: number;
  /** 0x18 */
  headerVersion: number;
  /** 0x1c: entries in the BAT. */
  maxTableEntries: number;
  /** 0x20: bytes of data per block (a power of two). */
  blockSize: number;
  /** 0x24: as stored. */
  checksum: number;
  /** 0x28: the parent's unique id (differencing disks). */
  parentUniqueId: string;
  /** 0x38: the parent's footer timestamp. */
  parentTimestamp: number;
  /** 0x3c */
  reserved1: number;
  /** 0x40: parent file name, UTF-16BE, NUL padded. */
  parentUnicodeName: string;
  /** 0x240: eight parent locator entries. */
  parentLocators: ParentLocatorEntry[];
  /** 0x300..0x3ff */
  reserved2: Uint8Array;
}

/** True if the UTF-16BE code units contain a NUL before the end. */
function decodeUtf16Be(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const c = (bytes[i]! << 8) | bytes[i + 1]!;
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

function read4(buf: Uint8Array, offset: number): string {
  let s = '';
  for (let i = 0; i < 4; i++) s += String.fromCharCode(buf[offset + i]!);
  return s;
}

/** Parses the 1024-byte dynamic disk header. */
export function parseDynamicHeader(bytes: Uint8Array): VhdDynamicHeader {
  if (bytes.length !== DYNAMIC_HEADER_SIZE) throw new RangeError(`a dynamic disk header has 1024 bytes, not ${bytes.length}`);
  const d = readU64BeParts(bytes, 0x08);
  const t = readU64BeParts(bytes, 0x10);
  const locators: ParentLocatorEntry[] = [];
  for (let i = 0; i < PARENT_LOCATOR_COUNT; i++) {
    const at = LOCATORS_AT + i * PARENT_LOCATOR_ENTRY_SIZE;
    const off = readU64BeParts(bytes, at + 16);
    locators.push({
      platformCode: read4(bytes, at),
      platformDataSpace: readU32Be(bytes, at + 4),
      platformDataLength: readU32Be(bytes, at + 8),
      reserved: readU32Be(bytes, at + 12),
      // Offsets above 2^53 cannot lie in any file; keep them as +Infinity-like numbers that bound checks reject.
      platformDataOffset: off.hi * 0x1_0000_0000 + off.lo,
    });
  }
  return {
    cookie: readCookie(bytes, 0),
    dataOffset: (BigInt(d.hi) << 32n) | BigInt(d.lo),
    tableOffset: t.hi * 0x1_0000_0000 + t.lo,
    headerVersion: readU32Be(bytes, 0x18),
    maxTableEntries: readU32Be(bytes, 0x1c),
    blockSize: readU32Be(bytes, 0x20),
    checksum: readU32Be(bytes, DYNAMIC_CHECKSUM_OFFSET),
    parentUniqueId: formatUuid(bytes.subarray(0x28, 0x38)),
    parentTimestamp: readU32Be(bytes, 0x38),
    reserved1: readU32Be(bytes, 0x3c),
    parentUnicodeName: decodeUtf16Be(bytes.subarray(0x40, 0x40 + PARENT_NAME_SIZE)),
    parentLocators: locators,
    reserved2: bytes.slice(0x300, DYNAMIC_HEADER_SIZE),
  };
}

function writeBig(b: Uint8Array, at: number, v: number | bigint): void {
  const big = BigInt(v);
  writeU64BeParts(b, at, Number((big >> 32n) & 0xffff_ffffn), Number(big & 0xffff_ffffn));
}

/** Serializes the header; the checksum is computed, not copied. */
export function serializeDynamicHeader(h: VhdDynamicHeader): Uint8Array {
  const b = new Uint8Array(DYNAMIC_HEADER_SIZE);
  for (let i = 0; i < 8; i++) b[i] = h.cookie.charCodeAt(i) & 0xff;
  writeBig(b, 0x08, h.dataOffset);
  writeBig(b, 0x10, h.tableOffset);
  writeU32Be(b, 0x18, h.headerVersion);
  writeU32Be(b, 0x1c, h.maxTableEntries);
  writeU32Be(b, 0x20, h.blockSize);
  b.set(parseUuid(h.parentUniqueId), 0x28);
  writeU32Be(b, 0x38, h.parentTimestamp);
  writeU32Be(b, 0x3c, h.reserved1);
  const name = h.parentUnicodeName.slice(0, PARENT_NAME_SIZE / 2);
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    b[0x40 + i * 2] = c >> 8;
    b[0x41 + i * 2] = c & 0xff;
  }
  for (let i = 0; i < PARENT_LOCATOR_COUNT; i++) {
    const l = h.parentLocators[i];
    if (!l) continue;
    const at = LOCATORS_AT + i * PARENT_LOCATOR_ENTRY_SIZE;
    for (let k = 0; k < 4; k++) b[at + k] = l.platformCode.charCodeAt(k) & 0xff;
    writeU32Be(b, at + 4, l.platformDataSpace);
    writeU32Be(b, at + 8, l.platformDataLength);
    writeU32Be(b, at + 12, l.reserved);
    writeBig(b, at + 16, l.platformDataOffset);
  }
  b.set(h.reserved2.subarray(0, DYNAMIC_HEADER_SIZE - 0x300), 0x300);
  writeU32Be(b, DYNAMIC_CHECKSUM_OFFSET, vhdChecksum(b, DYNAMIC_CHECKSUM_OFFSET));
  return b;
}

/** The checksum the header bytes should carry. */
export function dynamicHeaderChecksum(bytes: Uint8Array): number {
  return vhdChecksum(bytes, DYNAMIC_CHECKSUM_OFFSET);
}

/** An unused parent locator entry. */
export function emptyLocator(): ParentLocatorEntry {
  return { platformCode: '\0\0\0\0', platformDataSpace: 0, platformDataLength: 0, reserved: 0, platformDataOffset: 0 };
}
