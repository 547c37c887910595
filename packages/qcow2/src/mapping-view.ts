/**
 * What a walk over the cluster mapping reads an image through: the reader
 * state of an open image, the L1 table of the view being read, the runs
 * ("segments") a walk yields, and the one load of an L2 table through the
 * cache with its bounds checks.
 */
import { corrupt, hex } from '@img/block';
import type { Disk, Storage } from '@img/block';
import type { EntryGeometry } from './mapping.js';
import type { L2Cache } from './l2-cache.js';
import type { Qcow2Geometry } from './header.js';
import type { Qcow2Encryption } from './encryption.js';

const FORMAT = 'qcow2';

/** A run of guest bytes that one rule decides. */
export interface Segment {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole' | 'compressed';
  /**
   * data: host offset of `offset`; zero, hole: host offset where the cluster has one (preallocated zero
   * cluster, unallocated subcluster of an allocated cluster); compressed: start of the compressed bytes.
   */
  host?: number;
  /** compressed: bytes that may hold the compressed data. */
  csize?: number;
  /** compressed: guest offset of the cluster. */
  clusterOffset?: number;
}

/** What the reader needs of an open image. */
export interface ReaderState {
  readonly storage: Storage;
  readonly file: string;
  readonly geom: Qcow2Geometry;
  readonly entryGeom: EntryGeometry;
  readonly cache: L2Cache;
  readonly compressionType: number;
  /** Storage guest clusters live in (the image, or its external data file). */
  readonly dataStorage: Storage;
  /** Raw external data file (data_file_raw): the data file must read as the disk, so zeroes are written for real. */
  readonly rawDataFile: boolean;
  backing: Disk | undefined;
  fileSize: number;
  /** An encrypted image's method, header and (once unlocked) key: its data clusters are decrypted as they are read. */
  readonly encryption: Qcow2Encryption | undefined;
}

/** The L1 table a disk view reads through (the active one or a snapshot's). */
export interface MappingView {
  l1: Uint8Array;
  l1Offset: number;
  size: number;
}

/** Loads the L2 table at `offset` (through the cache), checking it lies inside the file. */
export function loadL2(state: ReaderState, offset: number, l1Index: number): Promise<Uint8Array> | Uint8Array {
  return state.cache.get(offset, async () => {
    const cs = state.geom.clusterSize;
    if (offset + cs > state.fileSize) {
      throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} (L1 entry ${l1Index}) lies past the end of the file`, { field: 'L1 entry', offset, actual: offset });
    }
    if (offset < cs) {
      throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} (L1 entry ${l1Index}) overlaps the header`, { field: 'L1 entry', offset });
    }
    const table = new Uint8Array(cs);
    const n = await state.storage.readInto(offset, table);
    if (n < cs) throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} is cut short by the end of the file`, { field: 'L2 table', offset });
    return table;
  });
}
