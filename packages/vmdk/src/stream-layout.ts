/**
 * The layout of a streamOptimized extent written front to back with no
 * seek, as the VMDK 5.0 technote describes it and VMware's exporters write
 * it: the header (gdOffset = GD_AT_END) with the embedded descriptor, then
 * each grain as a grain marker (lba, size) and its zlib stream padded to a
 * sector, each grain table behind a GT marker, the grain directory behind
 * a GD marker, the footer (the header again, with the real gdOffset)
 * behind a footer marker, and an end-of-stream marker.
 *
 * This module only lays out bytes: callers hand it compressed grains in
 * the order they are to appear and write or yield what it returns.
 */
import { ENTRY_BYTES, serializeEntries } from './grain-table.js';
import { GRAIN_MARKER_HEADER, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, serializeGrainMarker, serializeMetadataMarker } from './marker.js';
import { COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE, GD_AT_END, NEWLINE_CHARS, SECTOR, serializeSparseHeader, type SparseHeader } from './sparse-header.js';

/** Sectors of the embedded descriptor area (what VMware and qemu reserve). */
export const STREAM_DESCRIPTOR_SECTORS = 20;
/** Sectors before the first grain: grains start 64 KiB in, as in VMware's and qemu's streamOptimized files. */
export const STREAM_OVERHEAD_SECTORS = 128;
/** GTEs per grain table (the only value VMware's disk library accepts). */
export const STREAM_GTES_PER_GT = 512;
/** Header version of a streamOptimized extent (VMDK 5.0 technote: 3). */
export const STREAM_VERSION = 3;

function padToSector(n: number): number {
  return Math.ceil(n / SECTOR) * SECTOR;
}

/** Bookkeeping of one streamOptimized extent while it is laid out. */
export class StreamLayout {
  readonly header: SparseHeader;
  readonly grainBytes: number;
  readonly tableCount: number;
  /** Bytes laid out so far (the file offset of the next chunk). */
  position = 0;
  #tables = new Map<number, Uint32Array>();
  #gd: Uint32Array;
  #descriptor: Uint8Array;

  /** `capacity` in sectors; `descriptor` the embedded descriptor text's bytes (at most 20 sectors). */
  constructor(capacity: number, grainSize: number, descriptor: Uint8Array) {
    if (descriptor.length > STREAM_DESCRIPTOR_SECTORS * SECTOR) throw new RangeError(`descriptor of ${descriptor.length} bytes exceeds ${STREAM_DESCRIPTOR_SECTORS} sectors`);
    this.grainBytes = grainSize * SECTOR;
    this.tableCount = Math.ceil(capacity / (grainSize * STREAM_GTES_PER_GT));
    this.#gd = new Uint32Array(this.tableCount);
    this.#descriptor = descriptor;
    this.header = {
      version: STREAM_VERSION,
      flags: FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
      capacity,
      grainSize,
      descriptorOffset: 1,
      descriptorSize: STREAM_DESCRIPTOR_SECTORS,
      numGTEsPerGT: STREAM_GTES_PER_GT,
      rgdOffset: 0,
      gdOffset: GD_AT_END,
      overHead: STREAM_OVERHEAD_SECTORS,
      uncleanShutdown: false,
      newlineChars: [...NEWLINE_CHARS],
      compressAlgorithm: COMPRESSION_DEFLATE,
    };
  }

  /** The header and descriptor, padded to the first grain (overHead sectors). */
  head(): Uint8Array {
    const out = new Uint8Array(STREAM_OVERHEAD_SECTORS * SECTOR);
    out.set(serializeSparseHeader(this.header), 0);
    out.set(this.#descriptor, SECTOR);
    this.position = out.length;
    return out;
  }

  /** The sector where grain `grain` was placed, or 0. */
  entry(grain: number): number {
    return this.#tables.get(Math.floor(grain / STREAM_GTES_PER_GT))?.[grain % STREAM_GTES_PER_GT] ?? 0;
  }

  /** Lays out grain `grain` (its zlib stream): marker, data, padding. Returns the bytes to append. */
  grain(grain: number, compressed: Uint8Array): Uint8Array {
    const total = padToSector(GRAIN_MARKER_HEADER + compressed.length);
    const out = new Uint8Array(total);
    out.set(serializeGrainMarker(grain * this.header.grainSize, compressed.length), 0);
    out.set(compressed, GRAIN_MARKER_HEADER);
    const t = Math.floor(grain / STREAM_GTES_PER_GT);
    let table = this.#tables.get(t);
    if (!table) this.#tables.set(t, (table = new Uint32Array(STREAM_GTES_PER_GT)));
    table[grain % STREAM_GTES_PER_GT] = this.position / SECTOR;
    this.position += total;
    return out;
  }

  /** Lays out grain table `t` (GT marker and table) if it holds any grain, and forgets it. */
  table(t: number): Uint8Array | undefined {
    const table = this.#tables.get(t);
    if (!table) return undefined;
    const bytes = padToSector(STREAM_GTES_PER_GT * ENTRY_BYTES);
    const out = new Uint8Array(SECTOR + bytes);
    out.set(serializeMetadataMarker(MARKER_GT, bytes / SECTOR), 0);
    out.set(serializeEntries(table, bytes), SECTOR);
    this.#gd[t] = this.position / SECTOR + 1;
    this.position += out.length;
    this.#tables.delete(t);
    return out;
  }

  /** Every remaining grain table, the grain directory, the footer and the end-of-stream marker. */
  finish(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const t of [...this.#tables.keys()].sort((a, b) => a - b)) out.push(this.table(t)!);
    const gdBytes = padToSector(this.tableCount * ENTRY_BYTES);
    out.push(serializeMetadataMarker(MARKER_GD, gdBytes / SECTOR), serializeEntries(this.#gd, gdBytes));
    const gdSector = this.position / SECTOR + 1;
    this.position += SECTOR + gdBytes;
    out.push(serializeMetadataMarker(MARKER_FOOTER, 1), serializeSparseHeader({ ...this.header, gdOffset: gdSector }), serializeMetadataMarker(MARKER_EOS, 0));
    this.position += 3 * SECTOR;
    return out;
  }
}
