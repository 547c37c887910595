/**
 * ustar headers for writing an OVA (POSIX.1-1988 ustar, as DSP0243 asks of
 * an OVA and as ovftool and VirtualBox write it): one 512-byte header per
 * member, the data padded to 512 bytes, two zero blocks at the end. A
 * member of 8 GiB or more (beyond the 11 octal digits of `size`) gets a
 * pax extended header ('x') with its `size` record first, which GNU tar,
 * bsdtar, Python's tarfile and our reader honour.
 */
import { invalidArg } from '@img/block';

/** Bytes of a tar block. */
export const TAR_BLOCK = 512;
/** Largest size the ustar header's 11 octal digits hold. */
const USTAR_MAX_SIZE = 0o77777777777;
/** Longest member name written (the ustar `name` field, no prefix split). */
export const MAX_MEMBER_NAME = 100;

/** A member to write: its name, its size, its modification time. */
export interface TarHeaderOptions {
  name: string;
  size: number;
  /** Seconds since the epoch (default 0). */
  mtime?: number;
}

function putText(block: Uint8Array, at: number, length: number, text: string): void {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length > length) throw new RangeError(`"${text}" does not fit ${length} bytes`);
  block.set(bytes, at);
}

/** An octal field: `length - 1` digits and a NUL, as GNU tar and POSIX write. */
function putOctal(block: Uint8Array, at: number, length: number, value: number): void {
  putText(block, at, length, value.toString(8).padStart(length - 1, '0'));
}

function header(name: string, size: number, type: string, mtime: number): Uint8Array {
  const block = new Uint8Array(TAR_BLOCK);
  putText(block, 0, 100, name);
  putOctal(block, 100, 8, 0o644); // mode
  putOctal(block, 108, 8, 0); // uid
  putOctal(block, 116, 8, 0); // gid
  putOctal(block, 124, 12, size);
  putOctal(block, 136, 12, mtime);
  block.fill(0x20, 148, 156); // chksum counts as spaces while summing
  block[156] = type.charCodeAt(0);
  putText(block, 257, 6, 'ustar'); // magic "ustar\0"
  putText(block, 263, 2, '00'); // version
  let sum = 0;
  for (const b of block) sum += b;
  // Six octal digits, NUL, space: the historical layout every reader takes.
  putText(block, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return block;
}

/** The pax record "<len> size=<n>\n", whose length counts its own digits. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return `${len}${body}`;
}

/**
 * The header block(s) of one member: a ustar header, preceded by a pax
 * header holding `size` when the size needs more than 11 octal digits.
 * A name that is empty, longer than 100 bytes, absolute or with a `..`
 * segment is ERR_IMG_INVALID_ARG.
 */
export function serializeTarHeader(options: TarHeaderOptions): Uint8Array {
  const { name, size } = options;
  const mtime = Math.max(0, Math.floor(options.mtime ?? 0));
  const bytes = new TextEncoder().encode(name).length;
  if (bytes === 0 || bytes > MAX_MEMBER_NAME || name.startsWith('/') || name.split('/').includes('..') || /[\0\\]/.test(name)) {
    throw invalidArg('ova', `the member name "${name}" must be 1 to ${MAX_MEMBER_NAME} bytes, relative, without ".." or backslashes`, { field: 'name', actual: name });
  }
  if (!Number.isSafeInteger(size) || size < 0) throw invalidArg('ova', `the member "${name}" has an invalid size ${size}`, { field: 'size', actual: size });
  if (size <= USTAR_MAX_SIZE) return header(name, size, '0', mtime);
  const record = new TextEncoder().encode(paxRecord('size', String(size)));
  const out = new Uint8Array(2 * TAR_BLOCK + tarPadding(record.length) + record.length);
  out.set(header(`PaxHeaders/${name}`.slice(0, MAX_MEMBER_NAME), record.length, 'x', mtime), 0);
  out.set(record, TAR_BLOCK);
  // The ustar size field cannot hold the size; readers take the pax record's.
  out.set(header(name, 0, '0', mtime), out.length - TAR_BLOCK);
  return out;
}

/** Zero bytes after `size` bytes of data to reach the next block. */
export function tarPadding(size: number): number {
  return (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK;
}

/** The end of an archive: two zero blocks. */
export function tarEnd(): Uint8Array {
  return new Uint8Array(2 * TAR_BLOCK);
}
