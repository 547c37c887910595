/**
 * Copy-on-repair for `check -r all`: the sharing that refcounts alone
 * cannot make safe. qemu-img check repairs a host cluster used twice by
 * the active layer by raising its refcount and clearing COPIED; the image
 * then checks clean, but the first write to one user leaves the other at
 * refcount 1 without COPIED (an error again), and a snapshot whose L1
 * table is the active one is changed by every write to the active layer.
 * Here each extra user gets its own copy instead, so the active layer ends
 * with every cluster its own (refcount 1, COPIED set) and later writes
 * keep the image clean:
 *
 * - a snapshot L1 table that is or overlaps the active L1 table is copied
 *   and the snapshot table entry pointed at the copy;
 * - an L2 table used by more than one active L1 entry is copied for each
 *   extra entry (the data clusters it names are then shared, and copied by
 *   the next step);
 * - a data cluster used by more than one active L2 entry is copied for
 *   each extra entry, in guest order (the lowest guest offset keeps it);
 *   one that lies on metadata is copied for every entry, with the bytes
 *   the guest read before the repair (captureDataOnMetadata);
 * - a compressed cluster whose sectors reach a data cluster or metadata is
 *   decompressed into a cluster of its own.
 *
 * What cannot be kept is dropped, and said: an L1 entry whose L2 table lies
 * on other metadata or outside the file, a compressed cluster that does not
 * decompress, and every extra user of a cluster whose copies would exceed
 * the copy budget (the file's size, at least 64 MiB: a crafted image with
 * millions of references to one cluster cannot make the repair write
 * terabytes). A dropped L2 entry reads as zeros (v3) or as unallocated
 * (v2); a cleared L1 entry as unallocated.
 *
 * Every write goes through the overlap map: a repair writes only tables it
 * rewrites (the active L1, L2 tables, one snapshot table field) and
 * clusters it allocated. The caller raises refcounts to cover every
 * reference first, so that the allocator cannot hand out a cluster in use,
 * and sets them exactly afterwards.
 */
import { hex, unsupported, writeU64Be } from '@img/block';
import type { MappingView } from './mapping-view.js';
import type { Qcow2Image } from './core.js';
import type { Qcow2Snapshot } from './snapshot.js';
import { forEachEntryCluster, forEachL2Table, l2TableOffsets, snapshotL1Tables } from './l2-walk.js';
import type { Refcounts } from './refcount.js';
import { OVERLAP, overlapKindName } from './overlap.js';
import { decodeEntry, encodeEntry, type Entry } from './l2-entry.js';
import { writeEntryOffset } from './mapping.js';
import { decompressCluster } from './compression.js';

const FORMAT = 'qcow2';

/** Bytes of copies a repair may write at least (the budget is the file's size when that is larger). */
export const MIN_REPAIR_COPY_BYTES = 64 * 1024 * 1024;
/** Messages kept per repair (the counts are always complete). */
const MAX_MESSAGES = 1000;
/** Entries named per message. */
const MAX_NAMED = 8;

/** What a copy-on-repair pass did. */
export interface SharingRepair {
  /** Clusters copied (L1 and L2 tables, data) or decompressed into their own cluster. */
  copies: number;
  /** References dropped (L1 or L2 entries made unallocated or zero). */
  dropped: number;
  /** One line per repair, for people. */
  messages: string[];
}

/** Flags per host cluster in the data pass. */
const USED = 1;
const COMPRESSED = 2;
const KEPT = 4;

class Budget {
  constructor(public left: number) {}
  take(bytes: number): boolean {
    if (bytes > this.left) return false;
    this.left -= bytes;
    return true;
  }
}

/** `bytes` in a buffer of `size` bytes (zeros after). */
function padded(bytes: Uint8Array, size: number): Uint8Array {
  const b = new Uint8Array(size);
  b.set(bytes.subarray(0, size));
  return b;
}

/** An 8-byte big-endian offset (a refcount table or snapshot table field). */
function put64(at: number): Uint8Array {
  const b = new Uint8Array(8);
  writeU64Be(b, 0, at);
  return b;
}

/** An L2 or L1 entry list for a message: "0x40008, 0x40010 and 3 more". */
function named(list: number[]): string {
  const shown = list.slice(0, MAX_NAMED).map(hex).join(', ');
  return list.length > MAX_NAMED ? `${shown} and ${list.length - MAX_NAMED} more` : shown;
}

/**
 * Gives every extra user of a shared host cluster of the active layer its
 * own copy (see the module comment). `rc` is the open image's refcounts,
 * already raised to cover every reference.
 */
export async function repairSharing(s: Qcow2Image, view: MappingView, rc: Refcounts, captured: ReadonlyMap<number, Uint8Array>): Promise<SharingRepair> {
  const out: SharingRepair = { copies: 0, dropped: 0, messages: [] };
  const say = (m: string) => {
    if (out.messages.length < MAX_MESSAGES) out.messages.push(`Repaired: ${m}`);
  };
  const budget = new Budget(Math.max(MIN_REPAIR_COPY_BYTES, s.fileSize));
  /** Writes `bytes` at `at` unless that would hit metadata of a kind other than `allowed`. */
  const put = async (at: number, bytes: Uint8Array, allowed: number) => {
    s.overlap?.check(s.file, at, bytes.length, allowed);
    await s.storage.write(at, bytes);
    s.noteFileEnd(at + bytes.length);
  };

  const fileEnd = s.fileSize;
  await copySnapshotL1s(s, view, rc, budget, put, say, out);
  await unshareL2Tables(s, view, rc, fileEnd, budget, put, say, out);
  if (!s.entryGeom.dataFile) await unshareDataClusters(s, view, rc, budget, captured, put, say, out);
  s.cache.clear();
  s.decompressed.clear();
  return out;
}

type Put = (at: number, bytes: Uint8Array, allowed: number) => Promise<void>;
type Say = (m: string) => void;

/**
 * A snapshot L1 table that is or overlaps the active one gets a copy of
 * its own. Snapshots whose tables start at the same offset read the same
 * bytes and share one copy (of the largest of them; a refcount per
 * snapshot, as for any L1 table). Copies count against the budget; a
 * crafted image that needs more is refused before anything is written.
 */
async function copySnapshotL1s(s: Qcow2Image, view: MappingView, rc: Refcounts, budget: Budget, put: Put, say: Say, out: SharingRepair): Promise<void> {
  const cs = s.geom.clusterSize;
  const activeEnd = view.l1Offset + s.header.l1Size * 8;
  const groups = new Map<number, { bytes: number; snapshots: Qcow2Snapshot[] }>();
  for (const sn of s.snapshots) {
    const bytes = sn.l1Size * 8;
    if (!bytes || !s.header.l1Size || sn.l1TableOffset >= activeEnd || view.l1Offset >= sn.l1TableOffset + bytes) continue;
    const g = groups.get(sn.l1TableOffset);
    if (g) {
      g.bytes = Math.max(g.bytes, bytes);
      g.snapshots.push(sn);
    } else {
      groups.set(sn.l1TableOffset, { bytes, snapshots: [sn] });
    }
  }
  let need = 0;
  for (const g of groups.values()) need += Math.ceil(g.bytes / cs) * cs;
  if (!budget.take(need)) {
    throw unsupported(FORMAT, s.file, `${groups.size} snapshot L1 tables overlap the active L1 table; copies of them would need ${need} bytes, more than the repair's copy budget`, { field: 'l1_table_offset' });
  }
  for (const [offset, g] of groups) {
    // The snapshots keep what they read now: the bytes at their L1 offset (each bounded by the 32 MiB L1 limit at open).
    const table = new Uint8Array(Math.ceil(g.bytes / cs) * cs);
    await s.storage.readInto(offset, table.subarray(0, g.bytes));
    const at = await rc.allocate(table.length / cs);
    await put(at, table, 0);
    await s.storage.flush();
    // l1_table_offset is the first field of a snapshot's entry.
    for (const sn of g.snapshots) await put(sn.entryOffset, put64(at), OVERLAP.SNAPSHOT_TABLE);
    await s.storage.flush();
    s.overlap?.add(OVERLAP.SNAPSHOT_L1, at, g.bytes);
    const how = offset === view.l1Offset ? 'was' : 'overlapped';
    const ids = g.snapshots.map((sn) => sn.id).join(', ');
    say(`the L1 table of snapshot${g.snapshots.length > 1 ? 's' : ''} ${ids} ${how} the active L1 table at ${hex(view.l1Offset)}; a copy of it is at ${hex(at)}`);
    for (const sn of g.snapshots) sn.l1TableOffset = at;
    out.copies += table.length / cs;
  }
}

/** Bytes of data clusters on metadata a repair keeps in memory (more are dropped instead of copied). */
export const MAX_CAPTURED_BYTES = 64 * 1024 * 1024;

/**
 * The bytes of every data cluster of the active layer that lies on
 * metadata, read before the repair changes anything (refcount repairs
 * rewrite refcount blocks a guest cluster may lie on): the copy the
 * repair gives such an entry holds what the guest read. At most
 * {@link MAX_CAPTURED_BYTES}; clusters past that are dropped by the repair.
 */
export async function captureDataOnMetadata(s: Qcow2Image, view: MappingView): Promise<Map<number, Uint8Array>> {
  const out = new Map<number, Uint8Array>();
  const map = s.overlap;
  if (!map || s.entryGeom.dataFile) return out;
  const cs = s.geom.clusterSize;
  const meta = metadataFlags(s, Math.ceil(s.fileSize / cs));
  let bytes = 0;
  const seen = new Set<number>();
  // A table on other metadata is dropped, not read; a table several L1 entries share is read once.
  const tables: number[] = [];
  for (const [l2] of activeTables(s, view)) {
    if (map.kindsAt(l2 / cs) & ~OVERLAP.L2 || seen.has(l2)) continue;
    seen.add(l2);
    tables.push(l2);
  }
  const onMetadata: number[] = [];
  await forEachL2Table(
    s,
    tables,
    async (table, l2) => {
      onMetadata.length = 0;
      const use = (c: number) => {
        if (c < meta.length && meta[c]) onMetadata.push(c);
      };
      forEachEntryCluster(s, table, l2, use, (e) => {
        if (e.type !== 'compressed' && e.host !== undefined) use(e.host / cs);
      });
      for (const c of onMetadata) {
        if (out.has(c)) continue;
        if (bytes + cs > MAX_CAPTURED_BYTES) return false;
        const data = new Uint8Array(cs);
        await s.storage.readInto(c * cs, data);
        out.set(c, data);
        bytes += cs;
      }
      return true;
    },
    cs,
  );
  return out;
}

/** Why repair 'all' cannot keep an L2 table at `l2` (and drops the L1 entry that points at it), or undefined. */
function l2TableUnkeepable(s: Qcow2Image, l2: number, fileEnd: number): string | undefined {
  const cs = s.geom.clusterSize;
  if (l2 % cs || l2 < cs || l2 + cs > fileEnd) return 'is unaligned or outside the file';
  const kinds = (s.overlap?.kindsAt(l2 / cs) ?? 0) & ~OVERLAP.L2;
  return kinds ? `lies on the ${overlapKindName(kinds)}` : undefined;
}

/**
 * The first active L1 entry that repair 'all' would clear (its L2 table
 * cannot be kept: see {@link l2TableUnkeepable}), for a repair that must
 * not change what the guest reads (a dirty image's repair on open).
 */
export function firstDroppedL1Entry(s: Qcow2Image, view: MappingView): { at: number; why: string } | undefined {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const inUse = Math.min(h.l1Size, Math.ceil(h.size / s.geom.l2Coverage));
  const l2s = l2TableOffsets({ l1: view.l1, offset: view.l1Offset, entries: h.l1Size }, cs, s.file, 'raw', inUse);
  for (let i = 0; i < l2s.length; i++) {
    const l2 = l2s[i]!;
    const why = l2 ? l2TableUnkeepable(s, l2, s.fileSize) : undefined;
    if (why) return { at: view.l1Offset + i * 8, why: `active L1 entry ${i} at ${hex(view.l1Offset + i * 8)} points at an L2 table at ${hex(l2)} that ${why}` };
  }
  return undefined;
}

/** Active L1 entries: each L2 table used once, none on other metadata or outside the file. */
async function unshareL2Tables(s: Qcow2Image, view: MappingView, rc: Refcounts, fileEnd: number, budget: Budget, put: Put, say: Say, out: SharingRepair): Promise<void> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const inUse = Math.min(h.l1Size, Math.ceil(h.size / s.geom.l2Coverage));
  const first = new Map<number, number>();
  const extra = new Map<number, number[]>();
  // Entries change in memory; the L1 table is written once, after the copies it points at reached the disk.
  let changed = false;
  const setEntry = (i: number, offset: number) => {
    writeEntryOffset(view.l1, i * 8, offset, offset !== 0);
    changed = true;
  };
  // A dropped entry no longer makes its cluster an L2 table: the overlap map forgets that use (the L1 table
  // itself may be that cluster, and its rewrite below must go through).
  const dropEntry = (i: number, l2: number) => {
    setEntry(i, 0);
    s.overlap?.remove(OVERLAP.L2, l2, cs);
    out.dropped++;
  };
  const l2s = l2TableOffsets({ l1: view.l1, offset: view.l1Offset, entries: h.l1Size }, cs, s.file, 'raw', inUse);
  for (let i = 0; i < l2s.length; i++) {
    const l2 = l2s[i]!;
    if (!l2) continue;
    const at = view.l1Offset + i * 8;
    const why = l2TableUnkeepable(s, l2, fileEnd);
    if (why) {
      dropEntry(i, l2);
      say(`active L1 entry ${i} at ${hex(at)} pointed at an L2 table at ${hex(l2)} that ${why}; cleared (its range is unallocated now)`);
      continue;
    }
    if (!first.has(l2)) first.set(l2, i);
    else {
      const list = extra.get(l2);
      if (list) list.push(i);
      else extra.set(l2, [i]);
    }
  }
  const table = new Uint8Array(cs);
  for (const [l2, list] of extra) {
    const entries = list.map((i) => view.l1Offset + i * 8);
    if (!budget.take(list.length * cs)) {
      for (const i of list) setEntry(i, 0);
      out.dropped += list.length;
      say(`the L2 table at ${hex(l2)} was used by ${list.length + 1} active L1 entries; the entries at ${named(entries)} were cleared, as copies would exceed the repair's copy budget`);
      continue;
    }
    await s.storage.readInto(l2, table);
    for (const i of list) {
      const at = await rc.allocate(1);
      await put(at, table, 0);
      s.overlap?.add(OVERLAP.L2, at, cs);
      setEntry(i, at);
      out.copies++;
    }
    say(`the L2 table at ${hex(l2)} was used by ${list.length + 1} active L1 entries; the entries at ${named(entries)} have copies of their own`);
  }
  if (!changed) return;
  await s.storage.flush();
  await put(view.l1Offset, view.l1.subarray(0, h.l1Size * 8), OVERLAP.ACTIVE_L1);
  await s.storage.flush();
}

/** A byte per cluster below `n`: 1 where the overlap map holds metadata (array reads instead of map lookups per entry). */
function metadataFlags(s: Qcow2Image, n: number): Uint8Array {
  const meta = new Uint8Array(n);
  if (s.overlap) for (const c of s.overlap.clusters()) if (c < n) meta[c] = 1;
  return meta;
}

/**
 * Whether any cluster the overlap map holds is counted more than once by
 * the check (`refs`): only then can a data cluster lie on metadata, and
 * the capture pass is worth its walk.
 */
export function mayHaveDataOnMetadata(s: Qcow2Image, refs: Uint32Array): boolean {
  if (!s.overlap) return false;
  for (const c of s.overlap.clusters()) if (c < refs.length && refs[c]! > 1) return true;
  return false;
}

/** The active L2 tables in L1 order, with the L1 index of each (after unshareL2Tables: each once). */
function activeTables(s: Qcow2Image, view: MappingView): Array<[number, number]> {
  const cs = s.geom.clusterSize;
  const inUse = Math.min(s.header.l1Size, Math.ceil(s.header.size / s.geom.l2Coverage));
  const tables: Array<[number, number]> = [];
  l2TableOffsets({ l1: view.l1, offset: view.l1Offset, entries: s.header.l1Size }, cs, s.file, 'raw', inUse).forEach((l2, i) => {
    if (l2 && l2 % cs === 0 && l2 >= cs && l2 + cs <= s.fileSize) tables.push([l2, i]);
  });
  return tables;
}

/** L2 tables that snapshots use (changed only through a copy: the snapshot must keep reading what it did). */
async function snapshotTables(s: Qcow2Image): Promise<Set<number>> {
  const set = new Set<number>();
  for (const t of await snapshotL1Tables(s)) for (const l2 of l2TableOffsets(t, s.geom.clusterSize, s.file, 'raw')) if (l2) set.add(l2);
  return set;
}

/** Data clusters of the active layer: each used by one L2 entry, none on metadata, no compressed span into them. */
async function unshareDataClusters(s: Qcow2Image, view: MappingView, rc: Refcounts, budget: Budget, captured: ReadonlyMap<number, Uint8Array>, put: Put, say: Say, out: SharingRepair): Promise<void> {
  const cs = s.geom.clusterSize;
  const g = s.entryGeom;
  const n = Math.ceil((await s.storage.size()) / cs);
  const flags = new Uint8Array(n);
  /** Normal users of clusters used more than once (rare; a crafted image's few clusters). */
  const users = new Map<number, number>();
  const tables = activeTables(s, view);
  const decode = (table: Uint8Array, l2: number, j: number): Entry | undefined => {
    try {
      return decodeEntry(table, j, g, s.file, l2);
    } catch {
      return undefined; // a bad entry is counted by the check, not repaired here
    }
  };
  const span = (host: number, size: number) => [Math.floor(host / cs), Math.floor((host + size - 1) / cs)] as const;

  // Pass 1: who uses what.
  const meta = metadataFlags(s, n);
  let compressed = 0;
  let onMetadata = 0;
  let pastEnd = 0;
  const use = (c: number) => {
    if (c >= n) {
      pastEnd++;
      return;
    }
    if (meta[c]) onMetadata++;
    if (flags[c]! & USED) users.set(c, (users.get(c) ?? 1) + 1);
    else flags[c]! |= USED;
  };
  await forEachL2Table(
    s,
    tables.map(([l2]) => l2),
    (table, l2) => {
      forEachEntryCluster(s, table, l2, use, (e) => {
        if (e.type === 'compressed') {
          compressed++;
          const [a, b] = span(e.host, e.size);
          for (let k = a; k <= b && k < n; k++) flags[k]! |= COMPRESSED;
        } else if (e.host !== undefined) use(e.host / cs);
      });
    },
  );
  // Nothing shared, nothing on metadata, nothing past the end, nothing compressed: no second pass.
  if (!users.size && !onMetadata && !pastEnd && !compressed) return;

  // Pass 2: in guest order the first user keeps a shared cluster; the others, and every user of metadata, get copies.
  const shared = await snapshotTables(s);
  const decided = new Map<number, boolean>();
  const full = g.extendedL2 ? 0xffffffff : 1;
  const dropped: Entry = { host: undefined, copied: false, compressed: undefined, alloc: 0, zero: g.zeroFlag || g.extendedL2 ? full : 0 };
  const data = new Uint8Array(cs);
  const reasons = new Map<string, number[]>();
  const note = (why: string, at: number) => {
    const list = reasons.get(why);
    if (list) list.push(at);
    else reasons.set(why, [at]);
  };
  // One table at a time: each is changed in place and written back before the next is read.
  await forEachL2Table(
    s,
    tables.map(([l2]) => l2),
    async (table, l2, index) => {
      const i = tables[index]![1];
      // The entries worth a full decode: compressed, extended, or naming a shared cluster or metadata.
      const candidates: number[] = [];
      forEachEntryCluster(
        s,
        table,
        l2,
        (c, j) => {
          if (c >= n || meta[c] || users.has(c)) candidates.push(j);
        },
        (_e, j) => candidates.push(j),
      );
      let changed = false;
      for (const j of candidates) {
        const e = decode(table, l2, j);
        if (!e) continue;
        const at = l2 + j * s.geom.l2EntrySize;
        if (e.compressed) {
          const [a, b] = span(e.compressed.host, e.compressed.size);
          let hit = '';
          for (let c = a; c <= b && !hit; c++) {
            if (c >= n) hit = 'reach past the end of the file';
            else if (meta[c]) hit = `reach the ${overlapKindName(s.overlap?.kindsAt(c) ?? 0)}`;
            else if (flags[c]! & USED) hit = 'reach a data cluster in use';
          }
          if (!hit) continue;
          let plain: Uint8Array | undefined;
          if (budget.take(cs)) {
            try {
              const bytes = new Uint8Array(Math.max(0, Math.min(e.compressed.size, n * cs - e.compressed.host)));
              await s.storage.readInto(e.compressed.host, bytes);
              plain = await decompressCluster(s.compressionType, bytes, cs, { file: s.file, hostOffset: e.compressed.host });
            } catch {
              plain = undefined;
            }
          }
          if (plain) {
            const host = await rc.allocate(1);
            await put(host, plain.length === cs ? plain : padded(plain, cs), 0);
            encodeEntry(table, j, { host, copied: true, compressed: undefined, alloc: full, zero: 0 }, g);
            out.copies++;
            note(`compressed cluster whose sectors ${hit}: decompressed into a cluster of its own`, at);
          } else {
            encodeEntry(table, j, dropped, g);
            out.dropped++;
            note(`compressed cluster whose sectors ${hit} and that does not decompress (or exceeds the copy budget): dropped (it reads as ${dropped.zero ? 'zeros' : 'unallocated'})`, at);
          }
          changed = true;
          continue;
        }
        if (e.host === undefined) continue;
        const c = e.host / cs;
        if (c >= n) {
          // It reads as zeros (nothing is stored there), and the allocator would hand the cluster out again.
          encodeEntry(table, j, e.alloc === 0 ? { ...e, host: undefined, copied: false } : dropped, g);
          out.dropped++;
          note(`data cluster past the end of the file: dropped (it reads as ${e.alloc === 0 || dropped.zero ? 'zeros' : 'unallocated'})`, at);
          changed = true;
          continue;
        }
        const kinds = meta[c] ? (s.overlap?.kindsAt(c) ?? 0) : 0;
        const count = users.get(c);
        if (!kinds) {
          if (count === undefined) continue;
          if (!(flags[c]! & KEPT)) {
            flags[c]! |= KEPT;
            continue;
          }
        }
        const why = kinds ? `data cluster on the ${overlapKindName(kinds)}` : `data cluster at ${hex(c * cs)} used by ${count} entries`;
        if (e.alloc === 0) {
          // A preallocated zero cluster reads as zeros without its cluster: the entry keeps its zero bits, the cluster goes.
          encodeEntry(table, j, { ...e, host: undefined, copied: false }, g);
          note(`${why} (a zero cluster): it keeps reading zeros without a cluster`, at);
          out.dropped++;
          changed = true;
          continue;
        }
        let copy = decided.get(c);
        if (copy === undefined) {
          copy = budget.take((kinds ? (count ?? 1) : count! - 1) * cs);
          decided.set(c, copy);
        }
        const saved = kinds ? captured.get(c) : undefined;
        const lost = copy && kinds !== 0 && !saved;
        if (lost) copy = false;
        if (copy) {
          data.fill(0);
          if (saved) data.set(saved);
          else await s.storage.readInto(c * cs, data);
          const host = await rc.allocate(1);
          await put(host, data, 0);
          encodeEntry(table, j, { ...e, host, copied: true }, g);
          out.copies++;
          note(`${why}: copied`, at);
        } else {
          encodeEntry(table, j, dropped, g);
          out.dropped++;
          const because = lost ? `its bytes were not kept (more than ${MAX_CAPTURED_BYTES / 2 ** 20} MiB of data lies on metadata)` : "copies would exceed the repair's copy budget";
          note(`${why}: dropped, as ${because} (it reads as ${dropped.zero ? 'zeros' : 'unallocated'})`, at);
        }
        changed = true;
      }
      if (!changed) return;
      // Copies before the table that points at them.
      await s.storage.flush();
      if (shared.has(l2)) {
        // A snapshot reads this table too: the active layer gets the changed table as a copy.
        const copy = await rc.allocate(1);
        await put(copy, table, 0);
        await s.storage.flush();
        s.overlap?.add(OVERLAP.L2, copy, cs);
        const entry = new Uint8Array(8);
        writeEntryOffset(entry, 0, copy, true);
        await put(view.l1Offset + i * 8, entry, OVERLAP.ACTIVE_L1);
        view.l1.set(entry, i * 8);
        out.copies++;
      } else {
        await put(l2, table, OVERLAP.L2);
      }
      await s.storage.flush();
    },
    cs,
  );
  for (const [why, list] of reasons) say(`${why} (L2 entr${list.length === 1 ? 'y' : 'ies'} at ${named(list)})`);
}
