/**
 * streamOptimized markers (VMDK 5.0 technote, "Stream-Optimized Compressed
 * Sparse Extents"): a grain marker (lba u64, size u32, then `size` bytes of
 * compressed grain) and a metadata marker of one sector (numSectors u64,
 * size u32 = 0, type u32) that precedes a grain table, the grain directory
 * or the footer; an all-zero sector ends the stream.
 */
import { readU32Le, writeU32Le } from '@img/block';
import { readU64Le, writeU64Le } from './le64.js';
import { SECTOR } from './sparse-header.js';

/** Bytes before a grain's compressed data: lba (8) and size (4). */
export const GRAIN_MARKER_HEADER = 12;
/** Metadata marker type: end of stream. */
export const MARKER_EOS = 0;
/** Metadata marker type: a grain table follows. */
export const MARKER_GT = 1;
/** Metadata marker type: the grain directory follows. */
export const MARKER_GD = 2;
/** Metadata marker type: the footer follows. */
export const MARKER_FOOTER = 3;

/** A decoded marker: `size` 0 means a metadata marker of `type`; otherwise a grain marker. */
export interface Marker {
  /** Grain markers: the grain's first sector (LBA). Metadata markers: sectors of metadata that follow. */
  value: number;
  /** Compressed bytes that follow (grain markers); 0 for metadata markers. */
  size: number;
  /** Metadata markers only. */
  type: number;
}

/** Parses the marker at `at` (needs 16 bytes: the metadata type sits at 12). */
export function parseMarker(bytes: Uint8Array, at: number, file?: string): Marker {
  const value = readU64Le(bytes, at, 'marker value', file);
  const size = readU32Le(bytes, at + 8);
  return { value, size, type: size === 0 && bytes.length >= at + 16 ? readU32Le(bytes, at + 12) : -1 };
}

/** One sector holding a metadata marker of `type` announcing `sectors` sectors of metadata. */
export function serializeMetadataMarker(type: number, sectors: number): Uint8Array {
  const b = new Uint8Array(SECTOR);
  writeU64Le(b, 0, sectors);
  writeU32Le(b, 8, 0);
  writeU32Le(b, 12, type);
  return b;
}

/** The 12-byte grain marker header for a grain at `lba` whose compressed data is `size` bytes. */
export function serializeGrainMarker(lba: number, size: number): Uint8Array {
  const b = new Uint8Array(GRAIN_MARKER_HEADER);
  writeU64Le(b, 0, lba);
  writeU32Le(b, 8, size);
  return b;
}
