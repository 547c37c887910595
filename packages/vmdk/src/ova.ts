/**
 * A bounded tar reader for OVA files: ustar headers, pax extended headers
 * ('x', path and size) and GNU long names ('L'). Only the member table is
 * read; member data stays in the file. Every path is confined: absolute
 * paths and `..` segments are refused.
 */
import { corrupt, hex, unsafe, unsupported, type Storage } from '@img/block';

const BLOCK = 512;
/** Most members an OVA may hold. */
export const MAX_TAR_MEMBERS = 4096;
/** Largest pax or GNU long-name header body read. */
const MAX_EXTENDED_HEADER = 64 * 1024;
/** Longest member path. */
const MAX_PATH = 4096;

/** One regular file inside the tar. */
export interface TarMember {
  /** The member's path, as stored (confined: relative, no `..`). */
  name: string;
  /** Offset of its data in the tar file. */
  offset: number;
  /** Bytes of data. */
  size: number;
}

function text(block: Uint8Array, start: number, length: number): string {
  let end = start;
  while (end < start + length && block[end] !== 0) end++;
  return new TextDecoder().decode(block.subarray(start, end));
}

function octal(block: Uint8Array, start: number, length: number, file: string, offset: number, field: string): number {
  if ((block[start]! & 0x80) !== 0) {
    // base-256 (GNU): big-endian two's complement; negative sizes are refused.
    if ((block[start]! & 0x40) !== 0) throw corrupt('ova', file, `the tar header at ${hex(offset)} has a negative ${field}`, { field, offset: offset + start });
    let v = block[start]! & 0x3f;
    for (let i = start + 1; i < start + length; i++) {
      v = v * 256 + block[i]!;
      if (v > Number.MAX_SAFE_INTEGER) throw corrupt('ova', file, `the tar header at ${hex(offset)} has a ${field} too large`, { field, offset: offset + start });
    }
    return v;
  }
  const s = text(block, start, length).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw corrupt('ova', file, `the tar header at ${hex(offset)} has a ${field} that is not octal ("${s}")`, { field, offset: offset + start, actual: s });
  return parseInt(s, 8);
}

function checksumOk(block: Uint8Array, stored: number): boolean {
  let unsigned = 0;
  for (let i = 0; i < BLOCK; i++) unsigned += i >= 148 && i < 156 ? 32 : block[i]!;
  return unsigned === stored;
}

/** Refuses absolute paths, `..` segments, backslashes, NULs and empty names. */
export function confinePath(name: string, file: string, offset: number): string {
  const clean = name.replace(/^(\.\/)+/, '');
  if (clean === '' || clean.startsWith('/') || /^[A-Za-z]:/.test(clean) || clean.includes('\\') || clean.includes('\0') || clean.split('/').some((s) => s === '..')) {
    throw unsafe('ova', file, `the tar member at ${hex(offset)} has the path "${name}", which is absolute or leaves the archive`, { field: 'name', offset, actual: name });
  }
  if (clean.length > MAX_PATH) throw corrupt('ova', file, `the tar member at ${hex(offset)} has a path longer than ${MAX_PATH} bytes`, { field: 'name', offset });
  return clean;
}

/** The records of a pax extended header body ('x'): key -> value. */
export function parsePax(body: Uint8Array, file: string, offset: number): Map<string, string> {
  const out = new Map<string, string>();
  let p = 0;
  while (p < body.length) {
    let sp = p;
    while (sp < body.length && body[sp] !== 0x20) sp++;
    const len = Number(new TextDecoder().decode(body.subarray(p, sp)));
    if (!Number.isInteger(len) || len <= sp - p || p + len > body.length || body[p + len - 1] !== 0x0a) {
      if (body.subarray(p).every((b) => b === 0)) break;
      throw corrupt('ova', file, `the pax header at ${hex(offset)} has a malformed record at byte ${p}`, { field: 'pax', offset: offset + p });
    }
    const record = new TextDecoder().decode(body.subarray(sp + 1, p + len - 1));
    const eq = record.indexOf('=');
    if (eq <= 0) throw corrupt('ova', file, `the pax header at ${hex(offset)} has a record without "key=value" at byte ${p}`, { field: 'pax', offset: offset + p });
    out.set(record.slice(0, eq), record.slice(eq + 1));
    p += len;
  }
  return out;
}

/** What one tar header block says: the type flag, the size field, the name (with the ustar prefix) and the magic. */
export interface TarHeader {
  type: string;
  size: number;
  name: string;
  magic: string;
}

/**
 * Parses one 512-byte tar header at `pos` (for messages): a bad checksum
 * or a header that is not ustar is an ImageError. The caller applies pax
 * and GNU long-name records and confines the name.
 */
export function parseTarHeader(block: Uint8Array, file: string, pos: number): TarHeader {
  const stored = octal(block, 148, 8, file, pos, 'chksum');
  if (!checksumOk(block, stored)) throw corrupt('ova', file, `the tar header at ${hex(pos)} has a bad checksum (is this a tar file?)`, { field: 'chksum', offset: pos + 148 });
  const magic = text(block, 257, 6);
  if (magic !== 'ustar' && magic !== 'ustar ') throw unsupported('ova', file, `the tar header at ${hex(pos)} is not ustar (magic "${magic}")`, { field: 'magic', offset: pos + 257, actual: magic });
  let name = text(block, 0, 100);
  const prefix = text(block, 345, 155);
  if (magic === 'ustar' && prefix) name = `${prefix}/${name}`;
  return { type: String.fromCharCode(block[156]!), size: octal(block, 124, 12, file, pos, 'size'), name, magic };
}

/** Largest pax or GNU long-name header body read. */
export const MAX_TAR_EXTENDED_HEADER = MAX_EXTENDED_HEADER;

/** The member's name and size after the pax (`path`, `size`) and GNU long-name records before it. */
export function applyExtended(header: TarHeader, pax: Map<string, string> | undefined, longName: string | undefined, file: string, pos: number): { name: string; size: number } {
  let { name, size } = header;
  if (longName !== undefined) name = longName;
  if (pax?.has('path')) name = pax.get('path')!;
  if (pax?.has('size')) {
    const s = pax.get('size')!;
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw corrupt('ova', file, `the pax size of the member at ${hex(pos)} is not a number ("${s}")`, { field: 'size', offset: pos, actual: s });
    size = Number(s);
  }
  return { name, size };
}

/** The GNU long name ('L') in a header body. */
export function longNameOf(body: Uint8Array): string {
  return text(body, 0, body.length);
}

/**
 * Reads the member table of the tar in `storage` (regular files only;
 * directories are skipped). A header whose data runs past the end of the
 * file, a bad checksum or a path leaving the archive is an ImageError.
 */
export async function readTar(storage: Storage): Promise<TarMember[]> {
  const file = storage.name;
  const fileSize = await storage.size();
  const members: TarMember[] = [];
  let pos = 0;
  let pax: Map<string, string> | undefined;
  let longName: string | undefined;
  let headers = 0;
  while (true) {
    if (pos + BLOCK > fileSize) {
      if (members.length > 0 && pos === fileSize) break; // no end-of-archive blocks, but whole members: accepted as GNU tar does
      throw corrupt('ova', file, `the tar is truncated: a header at ${hex(pos)} runs past the end of the file (${fileSize} bytes)`, { field: 'header', offset: pos, actual: fileSize });
    }
    const block = await storage.read(pos, BLOCK);
    if (block.every((b) => b === 0)) break;
    if (++headers > MAX_TAR_MEMBERS * 2) throw unsupported('ova', file, `the tar holds more than ${MAX_TAR_MEMBERS} members`, { field: 'members' });
    const header = parseTarHeader(block, file, pos);
    const type = header.type;
    let size = header.size;
    const dataAt = pos + BLOCK;
    if (type === 'x' || type === 'g' || type === 'L') {
      if (size > MAX_EXTENDED_HEADER) throw unsupported('ova', file, `the extended tar header at ${hex(pos)} holds ${size} bytes (at most ${MAX_EXTENDED_HEADER})`, { field: 'size', offset: pos + 124, actual: size });
      if (dataAt + size > fileSize) throw corrupt('ova', file, `the tar is truncated: the header at ${hex(pos)} needs ${size} bytes the file does not hold`, { field: 'size', offset: pos + 124, actual: fileSize });
      const body = await storage.read(dataAt, size);
      if (type === 'x') pax = parsePax(body, file, dataAt);
      else if (type === 'L') longName = text(body, 0, body.length);
      pos = dataAt + Math.ceil(size / BLOCK) * BLOCK;
      continue;
    }
    const resolved = applyExtended(header, pax, longName, file, pos);
    const name = resolved.name;
    size = resolved.size;
    pax = undefined;
    longName = undefined;
    const isFile = type === '0' || type === '\0' || type === '7';
    if (type === '1' || type === '2') throw unsafe('ova', file, `the tar member "${name}" at ${hex(pos)} is a link, which an OVA may not hold`, { field: 'typeflag', offset: pos + 156, actual: type });
    const path = confinePath(name, file, pos);
    if (!isFile && type !== '5') throw unsupported('ova', file, `the tar member "${path}" at ${hex(pos)} has type "${type}" (only files and directories are read)`, { field: 'typeflag', offset: pos + 156, actual: type });
    if (!isFile) size = 0;
    if (dataAt + size > fileSize) throw corrupt('ova', file, `the tar is truncated: member "${path}" needs ${size} bytes from ${hex(dataAt)}, but the file ends at ${hex(fileSize)}`, { field: 'size', offset: pos + 124, expected: dataAt + size, actual: fileSize });
    if (isFile) {
      if (members.some((m) => m.name === path)) throw unsafe('ova', file, `the tar holds "${path}" twice (at ${hex(pos)})`, { field: 'name', offset: pos, actual: path });
      members.push({ name: path, offset: dataAt, size });
    }
    pos = dataAt + Math.ceil(size / BLOCK) * BLOCK;
  }
  return members;
}
