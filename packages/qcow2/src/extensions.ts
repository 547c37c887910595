/**
 * Header extensions (spec: "Header extensions"): typed views of the ones
 * this code knows (backing format, feature name table, bitmaps, full disk
 * encryption pointer, external data file name); every extension, known or
 * not, is kept in order so that rewriting the header preserves it.
 */
import { readU32Be, readU64Be, writeU32Be, corrupt, hex, utf8Decode, utf8Encode } from '@img/block';
import { EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE, FEATURE_TABLE_ENTRY_SIZE, KNOWN_FEATURE_NAMES } from './constants.js';

/** One header extension as stored: its type and data (padding not included). */
export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

/** The bitmaps extension's fields. */
export interface BitmapsExtension {
  nbBitmaps: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

/** A feature name table entry. */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  bit: number;
  name: string;
}

const FORMAT = 'qcow2';
/** Bytes of the bitmaps extension's data (spec: "Bitmaps extension"). */
const BITMAPS_EXTENSION_SIZE = 24;

/**
 * Reads the extensions from cluster 0 (`cluster0` holds at least the first
 * cluster or the whole file if shorter), starting at `start` (header_length).
 * Every extension must end inside cluster 0.
 */
export function parseExtensions(cluster0: Uint8Array, start: number, clusterSize: number, file?: string): HeaderExtension[] {
  const end = Math.min(clusterSize, cluster0.length);
  const out: HeaderExtension[] = [];
  let at = start;
  while (at + 8 <= end) {
    const type = readU32Be(cluster0, at); // 0: extension type
    const length = readU32Be(cluster0, at + 4); // 4: length of the data
    if (type === EXT_END) break;
    const padded = Math.ceil(length / 8) * 8;
    if (at + 8 + length > end) {
      throw corrupt(FORMAT, file, `header extension ${hex(type)} at ${hex(at)} (${length} bytes) runs past the first cluster`, { field: 'header extension', offset: at, actual: length });
    }
    // The bitmaps extension has a fixed size; its length is judged here, where its offset is known (qemu refuses the open).
    if (type === EXT_BITMAPS && length < BITMAPS_EXTENSION_SIZE) {
      throw corrupt(FORMAT, file, `bitmaps extension at ${hex(at)} is ${length} bytes (expected ${BITMAPS_EXTENSION_SIZE})`, { field: 'bitmaps extension length', offset: at + 4, expected: BITMAPS_EXTENSION_SIZE, actual: length });
    }
    out.push({ type, data: cluster0.slice(at + 8, at + 8 + length) });
    if (out.length > clusterSize / 8) break;
    at += 8 + padded;
  }
  return out;
}

/** Encodes extensions with their padding and the end marker. */
export function serializeExtensions(extensions: readonly HeaderExtension[]): Uint8Array {
  let total = 8;
  for (const e of extensions) total += 8 + Math.ceil(e.data.length / 8) * 8;
  const out = new Uint8Array(total);
  let at = 0;
  for (const e of extensions) {
    writeU32Be(out, at, e.type);
    writeU32Be(out, at + 4, e.data.length);
    out.set(e.data, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  return out; // the last 8 bytes stay zero: the end marker
}

/** The byte length serializeExtensions() produces. */
export function extensionsLength(extensions: readonly HeaderExtension[]): number {
  let total = 8;
  for (const e of extensions) total += 8 + Math.ceil(e.data.length / 8) * 8;
  return total;
}

/** The first header extension of `type`, if any. */
export function findExtension(extensions: readonly HeaderExtension[], type: number): HeaderExtension | undefined {
  return extensions.find((e) => e.type === type);
}

/**
 * Checks that each known extension appears at most once (spec: "each header
 * extension type shall appear at most once"). `start` is where
 * parseExtensions() began (header_length): the extensions lie back to back
 * from there, so the error can name both offsets.
 */
export function checkDuplicateExtensions(extensions: readonly HeaderExtension[], start: number, file?: string): void {
  const seen = new Map<number, number>();
  let at = start;
  for (const e of extensions) {
    const first = seen.get(e.type);
    if (first !== undefined && [EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE].includes(e.type)) {
      throw corrupt(FORMAT, file, `header extension ${hex(e.type)} at ${hex(at)} appears twice (first at ${hex(first)})`, { field: 'header extension', offset: at, actual: e.type });
    }
    if (first === undefined) seen.set(e.type, at);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
}

/** A string extension's text (backing format, data file name). */
export function extensionString(ext: HeaderExtension | undefined): string | undefined {
  return ext ? utf8Decode(ext.data) : undefined;
}

/** A header extension holding a string (backing format, data file name), as UTF-8 bytes. */
export function stringExtension(type: number, value: string): HeaderExtension {
  return { type, data: utf8Encode(value) };
}

/** Decodes the feature name table. */
export function parseFeatureTable(ext: HeaderExtension | undefined): FeatureName[] {
  if (!ext) return [];
  const out: FeatureName[] = [];
  for (let at = 0; at + FEATURE_TABLE_ENTRY_SIZE <= ext.data.length; at += FEATURE_TABLE_ENTRY_SIZE) {
    const nameBytes = ext.data.subarray(at + 2, at + FEATURE_TABLE_ENTRY_SIZE);
    const nul = nameBytes.indexOf(0);
    out.push({ type: ext.data[at]!, bit: ext.data[at + 1]!, name: utf8Decode(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)) });
  }
  return out;
}

/** Encodes a feature name table (the one qemu writes lists every feature it knows). */
export function serializeFeatureTable(names: readonly FeatureName[] = KNOWN_FEATURE_NAMES): HeaderExtension {
  const data = new Uint8Array(names.length * FEATURE_TABLE_ENTRY_SIZE);
  names.forEach((n, i) => {
    const at = i * FEATURE_TABLE_ENTRY_SIZE;
    data[at] = n.type;
    data[at + 1] = n.bit;
    data.set(utf8Encode(n.name).subarray(0, 46), at + 2);
  });
  return { type: EXT_FEATURE_TABLE, data };
}

/** The name of a feature bit: from the image's table, else from the names this code knows. */
export function featureName(table: readonly FeatureName[], type: number, bit: number): string | undefined {
  return table.find((f) => f.type === type && f.bit === bit)?.name ?? KNOWN_FEATURE_NAMES.find((f) => f.type === type && f.bit === bit)?.name;
}

/** Decodes the bitmaps extension (24 bytes). */
export function parseBitmapsExtension(ext: HeaderExtension | undefined, file?: string): BitmapsExtension | undefined {
  if (!ext) return undefined;
  // parseExtensions refuses a short one in a file; this guards extensions built in memory.
  if (ext.data.length < BITMAPS_EXTENSION_SIZE) throw corrupt(FORMAT, file, `bitmaps extension is ${ext.data.length} bytes (expected ${BITMAPS_EXTENSION_SIZE})`, { field: 'bitmaps extension length', expected: BITMAPS_EXTENSION_SIZE, actual: ext.data.length });
  return {
    nbBitmaps: readU32Be(ext.data, 0), // 0: nb_bitmaps
    bitmapDirectorySize: readU64Be(ext.data, 8, { field: 'bitmap_directory_size', format: FORMAT, file }), // 8
    bitmapDirectoryOffset: readU64Be(ext.data, 16, { field: 'bitmap_directory_offset', format: FORMAT, file }), // 16
  };
}

/** The file offset of extension `type`'s data in the header cluster (the extensions follow the header at `start`, each padded to 8), or undefined. */
export function extensionDataOffset(extensions: readonly HeaderExtension[], start: number, type: number): number | undefined {
  let pos = start;
  for (const ext of extensions) {
    if (ext.type === EXT_END) break;
    if (ext.type === type) return pos + 8;
    pos += 8 + Math.ceil(ext.data.length / 8) * 8;
  }
  return undefined;
}
