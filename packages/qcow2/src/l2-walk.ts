/**
 * The one walk over L1 and L2 tables (spec: "Cluster mapping"): the L1
 * tables of an image (the active layer's and every snapshot's), the
 * entries of an L1 table, each distinct L2 table, L2 tables read in file
 * order (a callback per table), and the entries of a table (decoded by
 * the codec in mapping.ts, with a fast form for walks that count host
 * cluster uses). Check, check's repairs, the writable-open gate, amend,
 * snapshot commits, compact's reference graph, the overlap map, the
 * cluster map's copy of a shared table and the stream reader walk through
 * it; guest reads and extents walk a range of a view instead
 * (segments.ts), and writes look single entries up (cluster-map.ts).
 */
import { corrupt, readU32Be } from '@img/block';
import type { Storage } from '@img/block';
import { decodeL2Entry, entryCopied, entryOffset, l1EntryOffset, standardEntryCluster, type ClusterEntry, type EntryGeometry } from './mapping.js';
import { ENTRY_COMPRESSED_HI, ENTRY_COPIED_HI } from './constants.js';
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

/**
 * The L1 tables of the snapshots, read from the file. Every table lies in
 * the file (checked when the snapshot table is read), and qemu gives each
 * snapshot a table of its own, so together they fit in the file; tables
 * that add up to more overlap each other (snapshots may point at one
 * table thousands of times), and reading them would cost memory and time
 * by the snapshot count rather than by the file: ERR_IMG_CORRUPT.
 */
export async function snapshotL1Tables(s: WalkImage): Promise<L1Table[]> {
  let total = 0;
  for (const sn of s.snapshots) total += sn.l1Size * 8;
  if (total > s.fileSize) {
    throw corrupt('qcow2', s.file, `the L1 tables of the ${s.snapshots.length} snapshots add up to ${total} bytes, more than the ${s.fileSize}-byte file holds: they overlap`, { field: 'snapshot l1_size', offset: s.snapshots[0]!.entryOffset + 8, actual: total });
  }
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

/** Largest read of L2 tables that follow each other in the file. */
const MAX_TABLES_READ = 4 * 1024 * 1024;

/** What the entry walks read: the image's name (for messages) and how its entries decode. */
export interface EntrySource {
  readonly file: string;
  readonly entryGeom: EntryGeometry;
}

/** What the table and entry walks read: the image file, its name, and how its entries decode. */
export interface TableSource extends EntrySource {
  readonly storage: Storage;
}

/** An 8-byte big-endian entry at `at` of `bytes` in hex, without leading zeros (as qemu-img check prints entries). */
export function entryHex(bytes: Uint8Array, at: number): string {
  return ((BigInt(readU32Be(bytes, at)) << 32n) | BigInt(readU32Be(bytes, at + 4))).toString(16);
}

/**
 * Whether L1 entry `index` of `l1` holds flags but no L2 table offset:
 * it maps nothing, but qemu-img check follows it to a "table" at offset 0
 * (the header) and counts corruptions there.
 */
export function l1FlagsWithoutOffset(l1: Uint8Array, index: number): boolean {
  const hi = readU32Be(l1, index * 8);
  const lo = readU32Be(l1, index * 8 + 4);
  return (hi !== 0 || lo !== 0) && entryOffset(hi, lo) === 0;
}

/** Whether L1 entry `index` of `t` has the COPIED flag (its L2 table's refcount is exactly 1). */
export function l1EntryCopied(t: L1Table, index: number): boolean {
  return entryCopied(t.l1, index * 8);
}

/**
 * Each L1 entry of `t` that points at an L2 table, decoded as
 * {@link l2TableOffsets} does in `strict` mode: `onEntry(l2Offset,
 * index)`; an entry that does not decode goes to `onBad` and the walk
 * goes on (check reports each). At most `limit` entries.
 */
export function forEachL1Entry(t: L1Table, clusterSize: number, file: string, onEntry: (l2Offset: number, index: number) => void, onBad: (error: Error, index: number) => void, limit = t.entries): void {
  const n = Math.min(limit, t.entries, Math.floor(t.l1.length / 8));
  for (let i = 0; i < n; i++) {
    let offset: number;
    try {
      offset = l1EntryOffset(t.l1, i, clusterSize, file, t.offset);
    } catch (e) {
      onBad(e as Error, i);
      continue;
    }
    if (offset) onEntry(offset, i);
  }
}

/**
 * The walk's fast form, a callback per table: reads the L2 tables at
 * `offsets` directly (not through the cache) in the order given, tables
 * that follow each other both in the file and in `offsets` in one read
 * (at most `maxRead` bytes, 4 MiB by default; one cluster reads one table
 * at a time), and calls `onTable(table, offset, index)` for each, `index`
 * being its place in `offsets`. `table` is a view of a buffer the next
 * read reuses: valid until `onTable` returns or its promise settles, and
 * it may be changed in place. Bytes past the end of the file read as
 * zeros. `onTable` returning `false` ends the walk.
 */
export async function forEachL2Table(s: TableSource, offsets: readonly number[], onTable: (table: Uint8Array, offset: number, index: number) => void | boolean | Promise<void | boolean>, maxRead = MAX_TABLES_READ): Promise<void> {
  const cs = s.entryGeom.clusterSize;
  const buf = new Uint8Array(Math.max(cs, Math.min(Math.floor(maxRead / cs) * cs, offsets.length * cs)));
  for (let t = 0; t < offsets.length;) {
    let n = 1;
    while (t + n < offsets.length && (n + 1) * cs <= buf.length && offsets[t + n] === offsets[t]! + n * cs) n++;
    const got = await s.storage.readInto(offsets[t]!, buf.subarray(0, n * cs));
    if (got < n * cs) buf.fill(0, got, n * cs);
    for (let k = 0; k < n; k++) {
      const r = onTable(buf.subarray(k * cs, (k + 1) * cs), offsets[t + k]!, t + k);
      if ((r instanceof Promise ? await r : r) === false) return;
    }
    t += n;
  }
}

/** An entry that is not unallocated. */
export type AllocatedEntry = Exclude<ClusterEntry, { type: 'unallocated' }>;

/** Entries in an L2 table of this geometry. */
export function l2EntriesPerTable(g: EntryGeometry): number {
  return g.clusterSize / (g.extendedL2 ? 16 : 8);
}

/**
 * The walk's per-entry form: each entry of the L2 table `table` (at
 * `tableOffset` in the file) decoded by the codec, in order:
 * `onEntry(e, index, at)`, `at` being the entry's file offset. An entry
 * that does not decode goes to `onBad` (skipped without one: reporting
 * it is check's business; a walk that must stop there throws from
 * `onBad`). At most the first `limit` entries (a table's last entries may
 * lie past the disk's end).
 */
export function forEachL2Entry(s: EntrySource, table: Uint8Array, tableOffset: number, onEntry: (e: ClusterEntry, index: number, at: number) => void, onBad?: (error: Error, index: number, at: number) => void, limit?: number): void {
  const g = s.entryGeom;
  const entries = Math.min(l2EntriesPerTable(g), limit ?? Infinity);
  const size = g.extendedL2 ? 16 : 8;
  for (let j = 0; j < entries; j++) {
    let e: ClusterEntry;
    try {
      e = decodeL2Entry(table, j, g, s.file, tableOffset);
    } catch (err) {
      onBad?.(err as Error, j, tableOffset + j * size);
      continue;
    }
    onEntry(e, j, tableOffset + j * size);
  }
}

/**
 * The per-entry form for walks that count uses of host clusters, making
 * no object for the common entry: `onCluster(cluster, index, copied)` for
 * each standard entry whose offset names a host cluster (a data cluster
 * or a preallocated zero cluster; see `standardEntryCluster`), and
 * `onEntry(e, index)` with the codec's full decode for compressed entries
 * and for every extended L2 entry. Entries naming no cluster are skipped,
 * and so are entries that do not decode, except that a standard entry
 * whose offset is not cluster-aligned goes to `onUnaligned(offset, index,
 * copied)` where given (qemu-img check counts the cluster_size bytes from
 * such an offset as referenced).
 */
export function forEachEntryCluster(
  s: EntrySource,
  table: Uint8Array,
  tableOffset: number,
  onCluster: (cluster: number, index: number, copied: boolean) => void,
  onEntry: (e: AllocatedEntry, index: number) => void,
  onUnaligned?: (offset: number, index: number, copied: boolean) => void,
): void {
  const g = s.entryGeom;
  const entries = l2EntriesPerTable(g);
  const cb = g.clusterBits;
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  for (let j = 0; j < entries; j++) {
    if (!g.extendedL2) {
      const hi = dv.getUint32(j * 8);
      const lo = dv.getUint32(j * 8 + 4);
      const c = standardEntryCluster(hi, lo, cb);
      if (c === -1) {
        if (onUnaligned) {
          const offset = entryOffset(hi, lo);
          if (offset % g.clusterSize !== 0) onUnaligned(offset, j, (hi & ENTRY_COPIED_HI) !== 0);
        }
        continue;
      }
      if (c >= 0) {
        onCluster(c, j, (hi & ENTRY_COPIED_HI) !== 0);
        continue;
      }
    }
    let e: ClusterEntry;
    try {
      e = decodeL2Entry(table, j, g, s.file, tableOffset);
    } catch {
      if (onUnaligned) {
        const at = j * (g.extendedL2 ? 16 : 8);
        const hi = dv.getUint32(at);
        const offset = entryOffset(hi, dv.getUint32(at + 4));
        if (!(hi & ENTRY_COMPRESSED_HI) && offset !== 0 && offset % g.clusterSize !== 0) onUnaligned(offset, j, (hi & ENTRY_COPIED_HI) !== 0);
      }
      continue;
    }
    if (e.type !== 'unallocated') onEntry(e, j);
  }
}
