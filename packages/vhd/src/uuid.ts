/** Unique ids as VHD stores them: 16 bytes, shown in the usual 8-4-4-4-12 form. */
import { v4 } from 'uuid';

/** Formats 16 bytes as a lower-case UUID string (any bytes, not only RFC 4122 ones). */
export function formatUuid(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new RangeError(`a UUID has 16 bytes, not ${bytes.length}`);
  let s = '';
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += '-';
    s += bytes[i]!.toString(16).padStart(2, '0');
  }
  return s;
}

/** Parses a UUID string (with or without dashes, any case) into 16 bytes. */
export function parseUuid(text: string): Uint8Array {
  const hex = text.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex) || !/^[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{12}$/.test(text)) {
    throw new TypeError(`"${text}" is not a UUID`);
  }
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** A new random (version 4) UUID string. */
export function newUuid(): string {
  return v4();
}

/** The all-zero UUID (a dynamic disk's parent id). */
export const NIL_UUID = '00000000-0000-0000-0000-000000000000';
