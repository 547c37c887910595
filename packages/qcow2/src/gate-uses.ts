/**
 * What uses a host cluster besides the active layer, for the writable-open
 * gate (open-gate.ts): the persistent bitmaps, the snapshots' tables, and
 * the one sentence that names a use in a refusal.
 */
import { hex, readU32Be } from '@img/block';
import { entryOffset } from './mapping.js';
import { bitmapRanges, type BitmapRange } from './bitmaps.js';
import { EXT_BITMAPS } from './constants.js';
import { findExtension, parseBitmapsExtension } from './extensions.js';
import type { MappingView } from './mapping-view.js';
import type { Qcow2Image } from './core.js';
import { forEachEntryCluster, forEachL2Entry, forEachL2Table, l2TableOffsets, snapshotL1Tables, type L1Table } from './l2-walk.js';
import { BITMAP, COPIED, META, MAX_SHARED, SNAPSHOT, type ClusterFlags } from './gate-flags.js';

/**
 * Marks what the persistent bitmaps use (directory, tables, data clusters;
 * consistent or not) with BITMAP in `flags`, and returns the first cluster
 * something else uses too. The bitmap tracker sets bits in the data
 * clusters in place, and a resize, a bitmap edit or the drop of
 * inconsistent bitmaps releases them all: a guest cluster on a bitmap data
 * cluster had a bit set in its guest bytes by a write elsewhere, and lost
 * its reference on a resize, though its refcount covered both uses and
 * `qemu-img check` called the image clean (seed 1105 case 45, seed 1107
 * case 158).
 */
export async function markBitmapClusters(s: Qcow2Image, flags: ClusterFlags, notePastEnd: (cluster: number, what: string, at: number) => void): Promise<{ cluster: number; what: string; other?: { what: string; offset: number } } | undefined> {
  const ext = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  if (!ext) return undefined;
  const cs = s.geom.clusterSize;
  const fileClusters = Math.ceil(s.fileSize / cs);
  const firstUse = new Map<number, BitmapRange>();
  for (const r of await bitmapRanges(s.storage, ext, s.fileSize, cs)) {
    const named = r.what === 'bitmap directory' ? `the bitmap directory at ${hex(r.offset)}` : r.what === 'bitmap table' ? `the bitmap table at ${hex(r.offset)} (directory entry at ${hex(r.at)})` : `a bitmap data cluster (bitmap table entry at ${hex(r.at)})`;
    for (let c = Math.floor(r.offset / cs); c * cs < r.offset + r.bytes; c++) {
      if (c >= fileClusters) {
        notePastEnd(c, r.what, r.at);
        break;
      }
      const old = flags.add(c, BITMAP);
      if (old === 0) {
        firstUse.set(c, r);
        continue;
      }
      const first = old & BITMAP ? firstUse.get(c) : undefined;
      return { cluster: c, what: named, other: first && { what: `the ${first.what} at ${hex(c * cs)} (named at ${hex(first.at)})`, offset: r.at } };
    }
  }
  return undefined;
}

/**
 * Marks what the snapshots' L2 tables use (the tables, data clusters,
 * compressed spans) with SNAPSHOT in `flags`, notes uses past the end of
 * the file, and returns the uses that land on metadata (at most
 * MAX_SHARED). Tables the active layer also uses were walked already; each
 * other distinct table is read once.
 */
export async function markSnapshotClusters(
  s: Qcow2Image,
  snapshotTables: readonly L1Table[],
  flags: ClusterFlags,
  activeTables: ReadonlySet<number>,
  copiedEntryIn: ReadonlyMap<number, number>,
  notePastEnd: (cluster: number, what: string, at: number) => void,
): Promise<{ onMetadata: Array<{ cluster: number; what: string; at: number }>; copied?: SnapshotOverCopied }> {
  const onMetadata: Array<{ cluster: number; what: string; at: number }> = [];
  let copied: SnapshotOverCopied | undefined;
  const cs = s.geom.clusterSize;
  const fileClusters = Math.ceil(s.fileSize / cs);
  const dataFile = s.entryGeom.dataFile;
  const entrySize = s.geom.l2EntrySize;
  const mark = (c: number, what: string, at: number) => {
    if (c >= fileClusters) return notePastEnd(c, what, at);
    const old = flags.add(c, SNAPSHOT);
    if (old & COPIED && !copied) copied = { cluster: c, what, at };
    if (old & META && onMetadata.length < MAX_SHARED) onMetadata.push({ cluster: c, what, at });
  };
  const tables = new Set<number>();
  for (const t of snapshotTables) {
    l2TableOffsets(t, cs, s.file, 'raw').forEach((l2, i) => {
      if (!l2 || l2 % cs || l2 < cs) return; // the reader and check report these
      const what = `L2 table of snapshot ${t.snapshot!.id}`;
      mark(l2 / cs, what, t.offset + i * 8);
      // A table the active layer shares: its entries are the snapshot's too, so none may be COPIED.
      const entry = copiedEntryIn.get(l2);
      if (entry !== undefined && !copied) copied = { cluster: l2 / cs, what, at: t.offset + i * 8, entry };
      if (l2 + cs <= s.fileSize && !activeTables.has(l2)) tables.add(l2);
    });
  }
  await forEachL2Table(
    s,
    [...tables].sort((a, b) => a - b),
    (table, l2) => {
      forEachEntryCluster(
        s,
        table,
        l2,
        (cluster, j) => {
          if (!dataFile) mark(cluster, 'data cluster of a snapshot', l2 + j * entrySize);
        },
        (e, j) => {
          const at = l2 + j * entrySize;
          if (e.type === 'compressed') {
            for (let c = Math.floor(e.host / cs); c * cs < e.host + e.size; c++) {
              mark(c, 'compressed data of a snapshot', at);
              if (c >= fileClusters) break;
            }
          } else if (e.host !== undefined && !dataFile) {
            mark(e.host / cs, 'data cluster of a snapshot', at);
          }
        },
      );
    },
  );
  return { onMetadata, copied };
}

/**
 * A snapshot's use (`what`, named at `at`) of a cluster the active layer
 * marks COPIED; `entry`: the COPIED entry, when the cluster is an L2 table
 * both share.
 */
export interface SnapshotOverCopied {
  cluster: number;
  what: string;
  at: number;
  entry?: number;
}

/**
 * How many times the snapshots' L1 and L2 tables use each of `clusters`
 * (data clusters, compressed spans and L2 tables). Read only when the
 * active layer shares a cluster (rare): each distinct snapshot L2 table
 * is read once and counted by the L1 entries that point at it.
 */
export async function snapshotUses(s: Qcow2Image, clusters: ReadonlySet<number>): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  if (!s.snapshots.length) return out;
  const cs = s.geom.clusterSize;
  const count = (c: number, times: number) => {
    if (clusters.has(c)) out.set(c, (out.get(c) ?? 0) + times);
  };
  const tables = new Map<number, number>();
  for (const t of await snapshotL1Tables(s)) {
    for (const l2 of l2TableOffsets(t, cs, s.file, 'raw')) {
      if (!l2 || l2 % cs || l2 + cs > s.fileSize) continue;
      count(l2 / cs, 1);
      tables.set(l2, (tables.get(l2) ?? 0) + 1);
    }
  }
  await forEachL2Table(s, [...tables.keys()], (table, l2) => {
    const times = tables.get(l2)!;
    forEachL2Entry(s, table, l2, (e) => {
      if (e.type === 'compressed') {
        for (let c = Math.floor(e.host / cs); c * cs < e.host + e.size; c++) count(c, times);
      } else if (e.type !== 'unallocated' && e.host !== undefined) {
        count(e.host / cs, times);
      }
    });
  });
  return out;
}

/**
 * What uses host cluster `c` and where that use is written down (for the
 * refusal): looked for only after a problem is found, in the order of the
 * gate's own pass.
 */
export async function describeUse(s: Qcow2Image, view: MappingView, c: number): Promise<{ what: string; offset: number }> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const host = c * cs;
  const inRange = (offset: number, bytes: number) => bytes > 0 && host + cs > offset && host < offset + bytes;
  if (c === 0) return { what: 'the header cluster', offset: 0 };
  if (inRange(view.l1Offset, h.l1Size * 8)) return { what: `the active L1 table at ${hex(view.l1Offset)}`, offset: 40 };
  if (inRange(h.refcountTableOffset, h.refcountTableClusters * cs)) return { what: `the refcount table at ${hex(h.refcountTableOffset)}`, offset: 48 };
  const crypto = s.encryption?.area;
  if (crypto && inRange(crypto.offset, crypto.length)) return { what: `the encryption header at ${hex(crypto.offset)}`, offset: 0 };
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  for (let i = 0; i < rt.length / 8; i++) {
    if (entryOffset(readU32Be(rt, i * 8), readU32Be(rt, i * 8 + 4)) === host) return { what: `the refcount block at ${hex(host)} (refcount table entry ${i})`, offset: h.refcountTableOffset + i * 8 };
  }
  for (const sn of s.snapshots) {
    if (inRange(sn.l1TableOffset, sn.l1Size * 8)) return { what: `the L1 table of snapshot ${sn.id} at ${hex(sn.l1TableOffset)}`, offset: sn.entryOffset };
  }
  const inUse = Math.min(h.l1Size, Math.ceil(h.size / s.geom.l2Coverage));
  const tables: number[] = [];
  const active = l2TableOffsets({ l1: view.l1, offset: view.l1Offset, entries: h.l1Size }, cs, s.file, 'raw', inUse);
  for (let i = 0; i < active.length; i++) {
    const l2 = active[i]!;
    if (l2 === host) return { what: `the L2 table at ${hex(host)} (L1 entry ${i} at ${hex(view.l1Offset + i * 8)})`, offset: view.l1Offset + i * 8 };
    if (l2 && l2 % cs === 0 && l2 >= cs && l2 + cs <= s.fileSize) tables.push(l2);
  }
  let found: { what: string; offset: number } | undefined;
  await forEachL2Table(
    s,
    tables.sort((a, b) => a - b),
    (table, l2) => {
      forEachL2Entry(s, table, l2, (e, _j, at) => {
        if (found) return;
        if (e.type === 'compressed') {
          if (host + cs > e.host && host < e.host + e.size) found = { what: `the compressed data at ${hex(host)} (L2 entry at ${hex(at)})`, offset: at };
        } else if (e.type !== 'unallocated' && e.host === host) {
          found = { what: `the data cluster at ${hex(host)} (L2 entry at ${hex(at)})`, offset: at };
        }
      });
      return found === undefined;
    },
  );
  if (found) return found;
  // Then the snapshots' tables: a cluster only they use.
  for (const t of await snapshotL1Tables(s)) {
    const l2s = l2TableOffsets(t, cs, s.file, 'raw');
    const id = t.snapshot!.id;
    const i = l2s.indexOf(host);
    if (i >= 0) return { what: `the L2 table at ${hex(host)} of snapshot ${id} (L1 entry ${i} at ${hex(t.offset + i * 8)})`, offset: t.offset + i * 8 };
    await forEachL2Table(
      s,
      [...new Set(l2s.filter((l2) => l2 && l2 % cs === 0 && l2 >= cs && l2 + cs <= s.fileSize))].sort((a, b) => a - b),
      (table, l2) => {
        forEachL2Entry(s, table, l2, (e, _j, at) => {
          if (found) return;
          if (e.type === 'compressed') {
            if (host + cs > e.host && host < e.host + e.size) found = { what: `the compressed data at ${hex(host)} of snapshot ${id} (L2 entry at ${hex(at)})`, offset: at };
          } else if (e.type !== 'unallocated' && e.host === host) {
            found = { what: `the data cluster at ${hex(host)} of snapshot ${id} (L2 entry at ${hex(at)})`, offset: at };
          }
        });
        return found === undefined;
      },
    );
    if (found) return found;
  }
  const ext = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  for (const r of ext ? await bitmapRanges(s.storage, ext, s.fileSize, cs) : []) {
    if (inRange(r.offset, r.bytes)) return { what: `the ${r.what} at ${hex(host)} (named at ${hex(r.at)})`, offset: r.at };
  }
  return { what: `the host cluster at ${hex(host)}`, offset: host };
}
