/**
 * Bounds-checked big- and little-endian integer codecs over Uint8Array.
 * Image metadata is parsed with these so that a short buffer is a clear
 * RangeError and a 64-bit value that does not fit a JS number is an
 * ImageError instead of a silently wrong offset.
 */
import { corrupt, hex } from './errors.js';

function check(buf: Uint8Array, offset: number, width: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + width > buf.length) {
    throw new RangeError(`read/write of ${width} bytes at ${offset} is outside a buffer of ${buf.length} bytes`);
  }
}

// Stores byte by byte: a DataView per call costs an allocation, which
// the once-run code that writes a fresh image's tables (16,384 L2 entries
// per GiB, as many refcounts) paid on every entry.
function put32Be(buf: Uint8Array, offset: number, value: number): void {
  buf[offset] = value >>> 24;
  buf[offset + 1] = (value >>> 16) & 0xff;
  buf[offset + 2] = (value >>> 8) & 0xff;
  buf[offset + 3] = value & 0xff;
}

/** The byte at `offset` (RangeError outside the buffer). */
export function readU8(buf: Uint8Array, offset: number): number {
  check(buf, offset, 1);
  return buf[offset]!;
}

/** Unsigned 16-bit big-endian value at `offset` (RangeError outside the buffer). */
export function readU16Be(buf: Uint8Array, offset: number): number {
  check(buf, offset, 2);
  return (buf[offset]! << 8) | buf[offset + 1]!;
}

/** Unsigned 16-bit little-endian value at `offset` (RangeError outside the buffer). */
export function readU16Le(buf: Uint8Array, offset: number): number {
  check(buf, offset, 2);
  return buf[offset]! | (buf[offset + 1]! << 8);
}

/** Unsigned 32-bit big-endian value at `offset` (RangeError outside the buffer). */
export function readU32Be(buf: Uint8Array, offset: number): number {
  check(buf, offset, 4);
  return ((buf[offset]! << 24) >>> 0) + ((buf[offset + 1]! << 16) | (buf[offset + 2]! << 8) | buf[offset + 3]!);
}

/** Unsigned 32-bit little-endian value at `offset` (RangeError outside the buffer). */
export function readU32Le(buf: Uint8Array, offset: number): number {
  check(buf, offset, 4);
  return ((buf[offset + 3]! << 24) >>> 0) + ((buf[offset + 2]! << 16) | (buf[offset + 1]! << 8) | buf[offset]!);
}

/** Signed 32-bit big-endian value at `offset` (RangeError outside the buffer). */
export function readI32Be(buf: Uint8Array, offset: number): number {
  check(buf, offset, 4);
  return (buf[offset]! << 24) | (buf[offset + 1]! << 16) | (buf[offset + 2]! << 8) | buf[offset + 3]!;
}

/** Context used to name the field when a 64-bit value does not fit. */
export interface U64Context {
  field?: string;
  format?: string;
  file?: string;
}

/**
 * Reads an unsigned 64-bit big-endian value as a JS number.
 * Values above Number.MAX_SAFE_INTEGER throw ERR_IMG_CORRUPT: no image
 * field may legitimately need them (files are far smaller than 2^53 bytes).
 */
export function readU64Be(buf: Uint8Array, offset: number, ctx: U64Context = {}): number {
  check(buf, offset, 8);
  const hi = readU32Be(buf, offset);
  const lo = readU32Be(buf, offset + 4);
  if (hi > 0x1fffff) {
    const fmt = ctx.format ?? 'image';
    throw corrupt(fmt, ctx.file, `${ctx.field ?? '64-bit field'} at ${hex(offset)} is too large (0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')})`, {
      field: ctx.field,
      offset,
      format: ctx.format,
    });
  }
  return hi * 0x1_0000_0000 + lo;
}

/**
 * Reads a 64-bit big-endian value as two 32-bit halves, for fields that
 * are bit sets (flags, L2 entries) where the high bits matter but the
 * value is never used as a number.
 */
export function readU64BeParts(buf: Uint8Array, offset: number): { hi: number; lo: number } {
  check(buf, offset, 8);
  return { hi: readU32Be(buf, offset), lo: readU32Be(buf, offset + 4) };
}

/** Writes the low 8 bits of `value` at `offset` (RangeError outside the buffer). */
export function writeU8(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 1);
  buf[offset] = value & 0xff;
}

/** Writes the low 16 bits of `value` big-endian at `offset` (RangeError outside the buffer). */
export function writeU16Be(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 2);
  buf[offset] = (value >>> 8) & 0xff;
  buf[offset + 1] = value & 0xff;
}

/** Writes the low 16 bits of `value` little-endian at `offset` (RangeError outside the buffer). */
export function writeU16Le(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 2);
  buf[offset] = value & 0xff;
  buf[offset + 1] = (value >>> 8) & 0xff;
}

/** Writes `value` as an unsigned 32-bit big-endian value at `offset` (RangeError outside the buffer). */
export function writeU32Be(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 4);
  put32Be(buf, offset, value >>> 0);
}

/** Writes `value` as an unsigned 32-bit little-endian value at `offset` (RangeError outside the buffer). */
export function writeU32Le(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 4);
  const v = value >>> 0;
  buf[offset] = v & 0xff;
  buf[offset + 1] = (v >>> 8) & 0xff;
  buf[offset + 2] = (v >>> 16) & 0xff;
  buf[offset + 3] = v >>> 24;
}

/** Writes a non-negative safe integer as unsigned 64-bit big-endian. */
export function writeU64Be(buf: Uint8Array, offset: number, value: number): void {
  check(buf, offset, 8);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`writeU64Be: ${value} is not a non-negative safe integer`);
  }
  const hi = Math.floor(value / 0x1_0000_0000);
  put32Be(buf, offset, hi);
  put32Be(buf, offset + 4, value >>> 0);
}

/** Writes a 64-bit big-endian value from its two 32-bit halves. */
export function writeU64BeParts(buf: Uint8Array, offset: number, hi: number, lo: number): void {
  check(buf, offset, 8);
  put32Be(buf, offset, hi >>> 0);
  put32Be(buf, offset + 4, lo >>> 0);
}

/** ASCII string of a fixed-width field, stopping at the first NUL. */
export function readAscii(buf: Uint8Array, offset: number, length: number): string {
  check(buf, offset, length);
  let s = '';
  for (let i = 0; i < length; i++) {
    const c = buf[offset + i]!;
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

/** Writes an ASCII string into a fixed-width field, NUL padded. */
export function writeAscii(buf: Uint8Array, offset: number, length: number, value: string): void {
  check(buf, offset, length);
  if (value.length > length) throw new RangeError(`"${value}" does not fit in ${length} bytes`);
  for (let i = 0; i < length; i++) buf[offset + i] = i < value.length ? value.charCodeAt(i) & 0xff : 0;
}

/** Node's memcmp where there is one: found at run time (this module imports nothing from Node, for browsers). */
const nodeCompare = (globalThis as { Buffer?: { compare?: (a: Uint8Array, b: Uint8Array) => number } }).Buffer?.compare?.bind((globalThis as { Buffer?: unknown }).Buffer);

/** True if two byte arrays hold the same bytes (a memcmp under Node; else 32-bit words at a time where both share an alignment). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  const n = a.length;
  if (n !== b.length) return false;
  if (n >= 256 && nodeCompare) return nodeCompare(a, b) === 0;
  let i = 0;
  if (n >= 64 && (a.byteOffset & 3) === (b.byteOffset & 3)) {
    const skew = (4 - (a.byteOffset & 3)) & 3;
    for (; i < skew; i++) if (a[i] !== b[i]) return false;
    const words = (n - skew) >>> 2;
    const wa = new Uint32Array(a.buffer, a.byteOffset + skew, words);
    const wb = new Uint32Array(b.buffer, b.byteOffset + skew, words);
    for (let k = 0; k < words; k++) if (wa[k] !== wb[k]) return false;
    i = skew + words * 4;
  }
  for (; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Concatenates byte arrays into a new one. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** UTF-8 encode/decode without Node's Buffer. */
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false });
/** The UTF-8 bytes of `s`. */
export function utf8Encode(s: string): Uint8Array {
  return encoder.encode(s);
}
/** Decodes UTF-8 bytes (invalid sequences become U+FFFD). */
export function utf8Decode(b: Uint8Array): string {
  return decoder.decode(b);
}
