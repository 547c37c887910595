/**
 * The one walk over L1 and L2 tables (spec: "Cluster mapping"): the L1
 * tables of an image (the active layer's and every snapshot's), the L2
 * table offsets an L1 table holds, each distinct L2 table, and each L2
 * entry of a set of tables. Check, the writable-open gate, amend, check's
 * repairs, snapshot commits and the overlap map walk through it; guest
 * reads and writes look single entries up instead (reader.ts,
 * cluster-map.ts).
 */
import { readU32Be } from '@img/block';
import type { Storage } from '@img/block';
import { decodeL2Entry, entryOffset, l1EntryOffset, type ClusterEntry, type EntryGeometry } from './mapping.js';
import { readL1 } from './reader.js';
import { loadL2, type MappingView, type ReaderState } from './mapping-view.js';
import type { Qcow2Geometry } from './header.js';
import type { Qcow2Snapshot } from './snapshot.js';

/** An L1 table of the image: the active layer's, or a snapshot's. */
export interface L1Table {
  l1: Uint8Array;
  /** Where the table is in the file. */
  offset: number;
  /** Its entries (l1_size). */
  entries: number;
  /** The snapshot it belongs to (none: the active layer). */
  snapshot?: Qcow2Snapshot;
}

/** What the walk reads of an image. */
export interface WalkImage extends ReaderState {
  readonly storage: Storage;
  readonly file: string;
  readonly geom: Qcow2Geometry;
  readonly entryGeom: EntryGeometry;
  readonly snapshots: readonly Qcow2Snapshot[];
}

/** The L1 tables of the snapshots, read from the file. */
export async function snapshotL1Tables(s: WalkImage): Promise<L1Table[]> {
  const out: L1Table[] = [];
  for (const sn of s.snapshots) out.push({ l1: await readL1(s.storage, sn.l1TableOffset, sn.l1Size), offset: sn.l1TableOffset, entries: sn.l1Size, snapshot: sn });
  return out;
}

/** The active L1 table (`entries` long: the header's l1_size) and every snapshot's. */
export async function imageL1Tables(s: WalkImage, view: MappingView, entries: number): Promise<L1Table[]> {
  return [{ l1: view.l1, offset: view.l1Offset, entries }, ...(await snapshotL1Tables(s))];
}

/**
 * The L2 table offsets of an L1 table by index (0: none). `strict`: an
 * entry past any file size or unaligned is ERR_IMG_CORRUPT; `raw`: the
 * offset bits as they are (the caller filters: check and repairs report
 * or skip bad entries themselves). At most `limit` entries.
 */
export function l2TableOffsets(t: L1Table, clusterSize: number, file: string, mode: 'strict' | 'raw', limit = t.entries): number[] {
  const n = Math.min(limit, t.entries, Math.floor(t.l1.length / 8));
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = mode === 'strict' ? l1EntryOffset(t.l1, i, clusterSize, file, t.offset) : entryOffset(readU32Be(t.l1, i * 8), readU32Be(t.l1, i * 8 + 4));
  return out;
}

/** Each distinct L2 table the L1 tables point at (strictly checked), loaded through the cache, in first-use order. */
export async function* distinctL2Tables(s: WalkImage, tables: readonly L1Table[]): AsyncGenerator<{ offset: number; l1Index: number; table: Uint8Array }> {
  const seen = new Set<number>();
  for (const t of tables) {
    const offsets = l2TableOffsets(t, s.geom.clusterSize, s.file, 'strict');
    for (let i = 0; i < offsets.length; i++) {
      const offset = offsets[i]!;
      if (offset === 0 || seen.has(offset)) continue;
      seen.add(offset);
      yield { offset, l1Index: i, table: await loadL2(s, offset, i) };
    }
  }
}

/**
 * Each L2 entry that decodes, of the tables at `offsets`, in order; the
 * tables are read directly (not through the cache). An entry that does
 * not decode is skipped: reporting it is check's business.
 */
export async function* l2EntriesOf(s: WalkImage, offsets: Iterable<number>): AsyncGenerator<{ l2: number; j: number; e: ClusterEntry }> {
  const table = new Uint8Array(s.geom.clusterSize);
  for (const l2 of offsets) {
    await s.storage.readInto(l2, table);
    for (let j = 0; j < s.geom.l2Entries; j++) {
      let e;
      try {
        e = decodeL2Entry(table, j, s.entryGeom, s.file, l2);
      } catch {
        continue;
      }
      yield { l2, j, e };
    }
  }
}
