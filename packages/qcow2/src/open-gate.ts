/**
 * The consistency gate of a writable open: the checks that cost metadata
 * bytes, not data. One pass over the active L1 and L2 tables marks every
 * host cluster in a flag byte (allocated in 1 MiB chunks as clusters are
 * seen); a cluster seen twice is a
 * candidate, refused unless its refcount covers the sharing and no COPIED
 * flag allows writing it in place. Snapshot L1 tables may not be or
 * overlap the active one. `img check -r all` repairs what refcounts and
 * COPIED flags can repair; the gate then lets the image through.
 */
import { corrupt, hex, readU32Be } from '@img/block';
import { entryOffset } from './mapping.js';
import { readRefcount } from './refcount-entry.js';
import { snapshotEntrySize } from './snapshot.js';
import type { MappingView } from './mapping-view.js';
import type { Qcow2Image } from './core.js';
import { entryHex, forEachEntryCluster, forEachL2Table, l1EntryCopied, l1FlagsWithoutOffset, l2TableOffsets, snapshotL1Tables, type L1Table } from './l2-walk.js';
import { ClusterFlags, COMPRESSED, COPIED, FORMAT, MAX_SHARED, META, SNAPSHOT, USED } from './gate-flags.js';
import { describeUse, markBitmapClusters, markSnapshotClusters, snapshotUses } from './gate-uses.js';

/** Largest read of consecutive refcount blocks. */
const MAX_READ = 4 * 1024 * 1024;

/** A host cluster used more than once in the active layer. */
interface Shared {
  cluster: number;
  /** What the second use is ('L2 table', 'data cluster', 'compressed data'). */
  what: string;
  /** Where the entry that makes the second use lies. */
  at: number;
  /** The first use is metadata (header, L1, refcount structures, snapshot tables): never shareable. */
  metadata: boolean;
}

/** What the gate found, if anything: one sentence. */
export interface GateResult {
  problem: string | undefined;
  offset: number;
  /** L2 tables read (for measurements). */
  l2Tables: number;
  /** What to do about the problem, when `img check -r all` cannot repair it. */
  hint?: string;
}

/** Runs the gate's checks on an open image (read-only work: nothing is written). */
export async function inspectForWriting(s: Qcow2Image, view: MappingView, refcountOf: (cluster: number) => Promise<number>, untrusted: ReadonlyMap<number, string> = new Map()): Promise<GateResult> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const activeEnd = view.l1Offset + h.l1Size * 8;
  for (const sn of s.snapshots) {
    const end = sn.l1TableOffset + sn.l1Size * 8;
    if (sn.l1Size > 0 && h.l1Size > 0 && sn.l1TableOffset < activeEnd && view.l1Offset < end) {
      const how = sn.l1TableOffset === view.l1Offset ? 'is' : 'overlaps';
      return { problem: `the L1 table of snapshot ${sn.id} at ${hex(sn.l1TableOffset)} ${how} the active L1 table at ${hex(view.l1Offset)}`, offset: sn.l1TableOffset, l2Tables: 0 };
    }
  }
  const flags = new ClusterFlags(s.file);
  const fileClusters = Math.ceil(s.fileSize / cs);
  const shared: Shared[] = [];
  let sharedCount = 0;
  const markRange = (offset: number, bytes: number) => {
    for (let c = Math.floor(offset / cs); c * cs < offset + bytes && c < fileClusters; c++) flags.add(c, META);
  };
  markRange(0, cs);
  markRange(view.l1Offset, h.l1Size * 8);
  markRange(h.refcountTableOffset, h.refcountTableClusters * cs);
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  for (let i = 0; i < rt.length / 8; i++) {
    const off = entryOffset(readU32Be(rt, i * 8), readU32Be(rt, i * 8 + 4));
    if (off) markRange(off, cs);
  }
  for (const sn of s.snapshots) markRange(sn.l1TableOffset, sn.l1Size * 8);
  // The snapshot table too: a guest cluster on it read the table, and a snapshot operation that rewrote the table
  // changed that guest cluster (seed 1003 case 793; qemu-img check counts only the refcount).
  const snapshotTableBytes = s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0);
  if (h.nbSnapshots) markRange(h.snapshotsOffset, snapshotTableBytes);
  // LUKS: the encryption header area; a guest cluster there would overwrite the key material.
  if (s.encryption?.area) markRange(s.encryption.area.offset, s.encryption.area.length);
  // Clusters in use past the end of the file: refused below.
  const pastEnd = new Map<number, { what: string; at: number }>();
  const notePastEnd = (cluster: number, what: string, at: number) => {
    if (pastEnd.size < MAX_SHARED && !pastEnd.has(cluster)) pastEnd.set(cluster, { what, at });
  };
  const note = (cluster: number, what: string, at: number, metadata: boolean) => {
    sharedCount++;
    if (shared.length < MAX_SHARED) shared.push({ cluster, what, at, metadata });
  };
  const useExclusive = (cluster: number, what: string, at: number, isCopied: boolean) => {
    if (cluster >= fileClusters) return notePastEnd(cluster, what, at);
    const old = flags.add(cluster, isCopied ? USED | COPIED : USED);
    if (old === 0) return;
    if (old & META) note(cluster, what, at, true);
    else if (old & COMPRESSED) note(cluster, 'compressed data', at, false);
    else if (old & USED) note(cluster, what, at, false);
  };

  // L2 tables of the active layer, read in file order, consecutive tables in one read.
  const active: L1Table = { l1: view.l1, offset: view.l1Offset, entries: h.l1Size };
  const inUse = Math.min(h.l1Size, Math.ceil(h.size / s.geom.l2Coverage));
  const tables: number[] = [];
  let flagsOnly = -1;
  l2TableOffsets(active, cs, s.file, 'raw', inUse).forEach((l2, i) => {
    // Flags without an offset: qemu-img check reads the header as that L2 table, and counts more corruptions after any header write.
    if (!l2 && flagsOnly < 0 && l1FlagsWithoutOffset(view.l1, i)) flagsOnly = i;
    if (!l2 || l2 % cs || l2 < cs || l2 + cs > s.fileSize) return; // the reader reports these
    useExclusive(l2 / cs, 'L2 table', view.l1Offset + i * 8, l1EntryCopied(active, i));
    tables.push(l2);
  });
  if (flagsOnly >= 0) {
    const at = view.l1Offset + flagsOnly * 8;
    return { problem: `L1 entry ${flagsOnly} at ${hex(at)} has flags (0x${entryHex(view.l1, flagsOnly * 8)}) but no L2 table offset`, offset: at, l2Tables: 0 };
  }
  tables.sort((a, b) => a - b);
  const dataFile = s.entryGeom.dataFile;
  const entrySize = s.geom.l2EntrySize;
  // Active L2 tables with a COPIED entry, and the first such entry: checked against the tables snapshots share.
  const copiedEntryIn = new Map<number, number>();
  // The first COPIED entry of the table being walked (-1: none yet): kept here, not looked up per entry.
  let firstCopied = -1;
  const noteCopied = (l2: number, j: number, isCopied: boolean) => {
    if (isCopied && firstCopied < 0) firstCopied = l2 + j * entrySize;
  };
  await forEachL2Table(s, tables, (table, l2) => {
    firstCopied = copiedEntryIn.get(l2) ?? -1;
    forEachEntryCluster(
      s,
      table,
      l2,
      // An external data file holds the data clusters: they are not in this file.
      (cluster, j, isCopied) => {
        noteCopied(l2, j, isCopied);
        if (!dataFile) useExclusive(cluster, 'data cluster', l2 + j * entrySize, isCopied);
      },
      (e, j) => {
        const at = l2 + j * entrySize;
        if (e.type === 'compressed') {
          for (let c = Math.floor(e.host / cs); c * cs < e.host + e.size; c++) {
            if (c >= fileClusters) {
              notePastEnd(c, 'compressed data', at);
              break;
            }
            const was = flags.add(c, COMPRESSED);
            if (was & META) note(c, 'compressed data', at, true);
            else if (was & USED) note(c, 'compressed data', at, false);
          }
        } else if (e.host !== undefined) {
          noteCopied(l2, j, e.copied);
          if (!dataFile) useExclusive(e.host / cs, 'data cluster', at, e.copied);
        }
      },
      // Unreadable, but qemu-img check counts the cluster_size bytes from it as referenced, and freeing one of
      // those clusters (an old L1 table moved by a resize) counted another corruption (seed 1014 case 92).
      (offset, j, isCopied) => {
        if (dataFile) return;
        for (let c = Math.floor(offset / cs); c * cs < offset + cs; c++) useExclusive(c, 'unaligned data cluster', l2 + j * entrySize, isCopied);
      },
    );
    if (firstCopied >= 0) copiedEntryIn.set(l2, firstCopied);
  });
  const l2Tables = tables.length;
  if (sharedCount > shared.length) {
    const first = shared[0]!;
    return { problem: `${sharedCount} host clusters are used more than once by the active layer (the first: ${first.what} at ${hex(first.cluster * cs)}, entry at ${hex(first.at)})`, offset: first.at, l2Tables };
  }
  const extra = new Map<number, number>();
  for (const x of shared) extra.set(x.cluster, (extra.get(x.cluster) ?? 0) + 1);
  const metadataUse = shared.find((x) => x.metadata);
  if (metadataUse) {
    return { problem: `the ${metadataUse.what} at ${hex(metadataUse.cluster * cs)} (entry at ${hex(metadataUse.at)}) lies on metadata`, offset: metadataUse.at, l2Tables };
  }
  // A refcount must cover the snapshots' uses too: else a copy-on-write by each active user frees the cluster under a snapshot.
  const bySnapshots = shared.length ? await snapshotUses(s, new Set(extra.keys())) : new Map<number, number>();
  for (const x of shared) {
    const host = hex(x.cluster * cs);
    const users = 1 + extra.get(x.cluster)!;
    const snapshots = bySnapshots.get(x.cluster) ?? 0;
    const refcount = await refcountOf(x.cluster);
    const copied = (flags.get(x.cluster) & COPIED) !== 0;
    if (refcount < users + snapshots || copied) {
      const as = x.what === 'compressed data' ? 'compressed data spans into a cluster in use' : `${x.what} is used ${users} times`;
      const also = snapshots ? ` (and ${snapshots} time${snapshots === 1 ? '' : 's'} by snapshots)` : '';
      return { problem: `${as}${also} at ${host} (entry at ${hex(x.at)}) with refcount ${refcount}${copied ? ' and the COPIED flag set' : ''}`, offset: x.at, l2Tables };
    }
  }
  // Clusters only snapshots use need a refcount as well: the allocator would hand out one with refcount 0, and a
  // write into the active layer would overwrite a snapshot's data or tables (seed 1001 case 245).
  if (s.snapshots.length) {
    const snapshotTables = await snapshotL1Tables(s);
    // As the active layer's above: qemu-img check reads the header as that entry's L2 table, so any header write
    // (a bitmap added, the corrupt bit) counts more corruptions (seed 1014 case 129: 11, then 16 after bitmap --add).
    for (const t of snapshotTables) {
      for (let i = 0; i < Math.min(t.entries, Math.floor(t.l1.length / 8)); i++) {
        if (!l1FlagsWithoutOffset(t.l1, i)) continue;
        const at = t.offset + i * 8;
        return { problem: `snapshot ${t.snapshot!.id}: its L1 entry ${i} at ${hex(at)} has flags (0x${entryHex(t.l1, i * 8)}) but no L2 table offset`, offset: at, l2Tables };
      }
    }
    const { onMetadata, copied } = await markSnapshotClusters(s, snapshotTables, flags, new Set(tables), copiedEntryIn, notePastEnd);
    // A snapshot's cluster on metadata needs a refcount for both: every snapshot commit writes a new refcount table
    // and releases the old one, and a data cluster of the snapshot on it lost that reference; applying the
    // snapshot then left it at refcount 1 without COPIED (seed 1105 case 94: 1 corruption, then 2; qemu-img
    // snapshot -a raises it to 2 and leaves 1). check -r all raises such refcounts, after which commits keep them right.
    if (onMetadata.length) {
      const bySnapshot = await snapshotUses(s, new Set(onMetadata.map((x) => x.cluster)));
      for (const x of onMetadata) {
        const users = 1 + (bySnapshot.get(x.cluster) ?? 0);
        const refcount = await refcountOf(x.cluster);
        if (refcount < users) {
          const meta = await describeUse(s, view, x.cluster);
          return { problem: `the ${x.what} at ${hex(x.cluster * cs)} (entry at ${hex(x.at)}) is also ${meta.what}, with refcount ${refcount} for ${users} uses`, offset: x.at, l2Tables };
        }
      }
    }
    // COPIED says "only the active layer uses this cluster": a write goes in place, into the snapshot's bytes or
    // table (qemu-img check: "OFLAG_COPIED ... refcount=2"; qemu writes in place too). check -r all clears the flag.
    if (copied?.entry !== undefined) {
      const table = hex(copied.cluster * cs);
      return { problem: `the L2 table at ${table} is also the ${copied.what} (entry at ${hex(copied.at)}), but its entry at ${hex(copied.entry)} has the COPIED flag set, so a write would go in place`, offset: copied.entry, l2Tables };
    }
    if (copied) {
      const use = await describeUse(s, view, copied.cluster);
      return { problem: `${use.what} has the COPIED flag set, so a write would go in place, but it is also the ${copied.what} (entry at ${hex(copied.at)})`, offset: use.offset, l2Tables };
    }
  }
  const onBitmap = await markBitmapClusters(s, flags, notePastEnd);
  if (onBitmap) {
    const use = onBitmap.other ?? (await describeUse(s, view, onBitmap.cluster));
    return { problem: `${use.what} is also ${onBitmap.what}`, offset: use.offset, l2Tables, hint: BITMAP_HINT };
  }
  // A cluster in use past the end of the file: the file was cut short (a copy or download that stopped), and the
  // cluster reads as zeros. With refcount 0 the allocator would hand it out again; with a refcount, every new
  // reference to it (a snapshot of the table that names it) is one more error qemu-img check counts (qcow2 fuzz seed
  // 1124 case 123: corruptions 5 -> 6 after img snapshot -c, 10 after qemu-img's). check -r all drops the active
  // layer's references, which read as zeros either way.
  for (const [cluster, use] of pastEnd) {
    const refcount = await refcountOf(cluster);
    const where = `the ${use.what} at ${hex(cluster * cs)} (entry at ${hex(use.at)}) lies past the end of the file`;
    return {
      problem: refcount === 0 ? `${where} with refcount 0: the allocator would hand it out again` : `${where} (${s.fileSize} bytes): the file was cut short`,
      offset: use.at,
      l2Tables,
      ...(use.what === 'data cluster' || use.what === 'compressed data' ? {} : { hint: PAST_END_HINT }),
    };
  }
  const unreferenced = await firstUnderRefcount(s, flags, rt, untrusted);
  if (unreferenced) {
    const use = await describeUse(s, view, unreferenced.cluster);
    return { problem: `${use.what} ${unreferenced.why}`, offset: use.offset, l2Tables };
  }
  return { problem: undefined, offset: 0, l2Tables };
}

const PAST_END_HINT = 'img convert copies the guest data (what lies past the end reads as zeros) to a new image, read-only opens still work';
const BITMAP_HINT = 'img check -r all cannot repair that, img convert copies the guest data to a new image, read-only opens still work';

/**
 * The first host cluster in use (any flag set) whose stored refcount is
 * too low, and why: its refcount block says 0 (or 1 for a cluster the
 * active layer shares with a snapshot), is missing, or cannot be trusted.
 * Reads each refcount block that covers a cluster in use once.
 */
async function firstUnderRefcount(s: Qcow2Image, flags: ClusterFlags, rt: Uint8Array, untrusted: ReadonlyMap<number, string>): Promise<{ cluster: number; why: string } | undefined> {
  const cs = s.geom.clusterSize;
  const bits = s.geom.refcountBits;
  const perBlock = (cs * 8) / bits;
  const offsetOf = (t: number) => ((t + 1) * 8 <= rt.length ? entryOffset(readU32Be(rt, t * 8), readU32Be(rt, t * 8 + 4)) : 0);
  // Blocks [first, first + count) are in `buf`: consecutive blocks (as qemu-img lays them out) are read together.
  const buf = new Uint8Array(Math.max(1, Math.min(Math.floor(MAX_READ / cs), Math.ceil(s.fileSize / cs / perBlock))) * cs);
  let first = -1;
  let count = 0;
  const blockOf = async (t: number, at: number): Promise<Uint8Array> => {
    if (t < first || t >= first + count) {
      let n = 1;
      while ((n + 1) * cs <= buf.length && !untrusted.has(t + n) && offsetOf(t + n) === at + n * cs) n++;
      await s.storage.readInto(at, buf.subarray(0, n * cs));
      first = t;
      count = n;
    }
    return buf.subarray((t - first) * cs, (t - first + 1) * cs);
  };
  for (const [base, chunk] of flags.chunks()) {
    for (let i = 0; i < chunk.length;) {
      if (chunk[i] === 0) {
        i++;
        continue;
      }
      const c = base + i;
      const t = Math.floor(c / perBlock);
      // Clusters of this chunk that block t covers.
      const stop = Math.min(chunk.length, (t + 1) * perBlock - base);
      const why = untrusted.get(t);
      if (why !== undefined) return { cluster: c, why: `has no refcount to trust (refcount table entry ${t} at ${hex(s.header.refcountTableOffset + t * 8)}: ${why})` };
      const at = offsetOf(t);
      if (!at) return { cluster: c, why: `has no refcount: refcount table entry ${t} at ${hex(s.header.refcountTableOffset + t * 8)} is empty` };
      const block = await blockOf(t, at);
      const under = underRefcountIn(chunk, i, stop, block, t * perBlock - base, bits);
      if (under >= 0) {
        const refcount = readRefcount(block, under + base - t * perBlock, bits);
        const why = refcount === 0 ? 'the allocator would hand it out again' : 'a snapshot uses it too, and a copy-on-write would free it under the snapshot';
        return { cluster: base + under, why: `has refcount ${refcount} in the refcount block at ${hex(at)}: ${why}` };
      }
      i = stop;
    }
  }
  return undefined;
}

/**
 * The first index in chunk[from, to) whose refcount in `block` is below
 * what its flags need, or -1; chunk index i is entry i - first of the
 * block. Any use needs 1; the active layer's use of a cluster a snapshot
 * uses too needs 2 (a copy-on-write drops one reference, and at 0 the
 * cluster would be handed out while the snapshot still reads it). The
 * default 16-bit width reads two bytes per cluster (a 1 TiB image has
 * 16 M clusters in use).
 */
function underRefcountIn(chunk: Uint8Array, from: number, to: number, block: Uint8Array, first: number, bits: number): number {
  const needsTwo = (f: number) => (f & SNAPSHOT) !== 0 && (f & (USED | COMPRESSED)) !== 0;
  if (bits === 16) {
    // A zero reads as zero in either byte order: a 16-bit view of the big-endian block (2-aligned) serves.
    const counts = new Uint16Array(block.buffer, block.byteOffset, block.length / 2);
    for (let i = from; i < to; i++) {
      const f = chunk[i]!;
      if (f !== 0 && (counts[i - first] === 0 || (needsTwo(f) && readRefcount(block, i - first, bits) < 2))) return i;
    }
    return -1;
  }
  for (let i = from; i < to; i++) {
    const f = chunk[i]!;
    if (f !== 0 && readRefcount(block, i - first, bits) < (needsTwo(f) ? 2 : 1)) return i;
  }
  return -1;
}

/**
 * Refuses a writable open of an image that fails the gate, with the
 * problem named in one sentence (ERR_IMG_CORRUPT).
 */
export async function gateWritableOpen(s: Qcow2Image, view: MappingView, refcountOf: (cluster: number) => Promise<number>, untrusted: ReadonlyMap<number, string> = new Map()): Promise<void> {
  const r = await inspectForWriting(s, view, refcountOf, untrusted);
  if (r.problem) {
    throw corrupt(FORMAT, s.file, `refusing to open for writing: ${r.problem}; ${r.hint ?? 'img check -r all may repair it, read-only opens still work'}`, { field: 'L2 entry', offset: r.offset });
  }
}
