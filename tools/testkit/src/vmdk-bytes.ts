/**
 * VMDK files as patchable bytes for tests: the header fields the sparse
 * extent header names (little-endian, sectors).
 */
import { readFileSync } from 'node:fs';

/** Byte offsets of the hosted sparse extent header's fields. */
export const VMDK_HEADER = {
  version: 4,
  flags: 8,
  capacity: 12,
  grainSize: 20,
  descriptorOffset: 28,
  descriptorSize: 36,
  numGTEsPerGT: 44,
  rgdOffset: 48,
  gdOffset: 56,
  overHead: 64,
  compressAlgorithm: 77,
} as const;

/** A sparse extent file opened for patching. */
export interface VmdkBytes {
  bytes: Uint8Array;
  view: DataView;
  /** gdOffset in bytes (of the header at 0; streamOptimized GD_AT_END files: of the footer). */
  gdOffset: number;
  /** Byte offset of the grain table that GD entry `i` points to. */
  tableOffset(i: number): number;
}

/** Reads a sparse VMDK for patching. */
export function readVmdkBytes(path: string): VmdkBytes {
  const bytes = new Uint8Array(readFileSync(path));
  return vmdkBytes(bytes);
}

/** Wraps sparse extent bytes for patching. */
export function vmdkBytes(bytes: Uint8Array): VmdkBytes {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let gd = view.getBigUint64(VMDK_HEADER.gdOffset, true);
  if (gd === 0xffff_ffff_ffff_ffffn) gd = view.getBigUint64(bytes.length - 1024 + VMDK_HEADER.gdOffset, true);
  const gdOffset = Number(gd) * 512;
  return { bytes, view, gdOffset, tableOffset: (i) => view.getUint32(gdOffset + i * 4, true) * 512 };
}
