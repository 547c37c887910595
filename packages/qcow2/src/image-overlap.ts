/**
 * The overlap map of an open image (the map itself is overlap.ts): built
 * from the image's metadata when it opens for writing, built again after
 * operations that rewrite many tables at once, and the metadata writes
 * checked against it. Guest data writes go through the image's guarded
 * data storage (core.ts).
 */
import { findExtension, parseBitmapsExtension } from './extensions.js';
import { EXT_BITMAPS } from './constants.js';
import { snapshotEntrySize } from './snapshot.js';
import { OverlapMap, OVERLAP } from './overlap.js';
import { bitmapRanges } from './bitmaps.js';
import type { MappingView } from './mapping-view.js';
import { l2TableOffsets, snapshotL1Tables, type L1Table } from './l2-walk.js';
import type { Qcow2Image } from './core.js';

/** Adds the L2 tables an L1 table points at to the map (offsets only: the tables are not read). */
function addL2Tables(map: OverlapMap, t: L1Table, cs: number, file: string): void {
  for (const l2 of l2TableOffsets(t, cs, file, 'strict')) if (l2 !== 0) map.add(OVERLAP.L2, l2, cs);
}

/**
 * The overlap map of an open image, from metadata only: header cluster,
 * active L1 and its L2 tables, snapshot table, snapshot L1s and their L2
 * tables, bitmap directory and tables, the encryption header area. (Refcount table and blocks are
 * added by {@link Refcounts.load}.)
 */
export async function buildOverlapMap(s: Qcow2Image, view: MappingView): Promise<OverlapMap> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const map = new OverlapMap(cs);
  map.add(OVERLAP.HEADER, 0, cs);
  map.add(OVERLAP.ACTIVE_L1, view.l1Offset, h.l1Size * 8);
  addL2Tables(map, { l1: view.l1, offset: view.l1Offset, entries: view.l1.length / 8 }, cs, s.file);
  if (s.snapshots.length) {
    let bytes = 0;
    for (const snap of s.snapshots) bytes += snapshotEntrySize(snap);
    map.add(OVERLAP.SNAPSHOT_TABLE, h.snapshotsOffset, bytes);
    for (const t of await snapshotL1Tables(s)) {
      map.add(OVERLAP.SNAPSHOT_L1, t.offset, t.entries * 8);
      addL2Tables(map, t, cs, s.file);
    }
  }
  // A write there would destroy the key material: the image would no longer open with any passphrase.
  const crypto = s.encryption?.area;
  if (crypto) map.add(OVERLAP.CRYPTO_HEADER, crypto.offset, crypto.length);
  const bitmaps = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  if (bitmaps) {
    for (const r of await bitmapRanges(s.storage, bitmaps, s.fileSize, cs)) {
      if (r.what === 'bitmap directory') map.add(OVERLAP.BITMAP_DIRECTORY, r.offset, r.bytes);
      else if (r.what === 'bitmap table') map.add(OVERLAP.BITMAP_TABLE, r.offset, r.bytes);
    }
  }
  return map;
}

/**
 * Builds the overlap map again after an operation that rewrote many tables
 * at once (snapshot create, apply and delete, resize).
 */
export async function refreshOverlapMap(s: Qcow2Image, view: MappingView): Promise<void> {
  const rc = s.writer?.allocator.refcounts;
  if (!s.overlap || !rc) return;
  const fresh = await buildOverlapMap(s, view);
  rc.mapInto(fresh);
  s.overlap.assign(fresh);
}

/** A metadata write through the overlap check: `allowed` names the metadata it may replace (ERR_IMG_CORRUPT otherwise). */
export async function checkedWrite(s: Qcow2Image, offset: number, bytes: Uint8Array, allowed = 0): Promise<void> {
  s.overlap?.check(s.file, offset, bytes.length, allowed);
  await s.storage.write(offset, bytes);
}
