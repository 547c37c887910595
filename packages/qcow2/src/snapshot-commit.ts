/**
 * The atomic metadata switch behind snapshot create, delete and apply.
 *
 * A snapshot operation changes refcounts and COPIED flags of many clusters
 * at once, and `qemu-img check` counts a COPIED flag that disagrees with
 * its refcount as corruption in either direction (set with a refcount of
 * 2, clear with a refcount of 1). No order of in-place writes avoids that
 * window, so nothing the header reaches is changed in place. Instead:
 *
 * 1. the new state is planned from the L1 trees alone (what each cluster's
 *    refcount becomes, which COPIED flags change), and refused before any
 *    write if a refcount would overflow or drop below zero;
 * 2. everything that changes is written to freshly allocated clusters (a
 *    crash leaves leaks only): active L2 tables whose flags change, the new
 *    active L1 table, the new snapshot table, copies of the refcount blocks
 *    whose counts change, and a new refcount table pointing at them. Only
 *    L2 tables no active L1 entry reaches may be changed in place (their
 *    flags are not checked and do not change what they map), and the
 *    COPIED flag of a compressed descriptor, which never belongs there, is
 *    cleared in place in every table that stays in use, as qemu's walk
 *    does (it changes no mapping and no refcount);
 * 3. a flush, then one header write (one sector: L1, refcount table and
 *    snapshot table pointers and counts, disk size) switches to the new
 *    state, and a flush;
 * 4. what only the old state used (old refcount blocks and table, old L1
 *    and snapshot tables) is released: a crash before that leaks it.
 *
 * At every point `qemu-img check` finds leaks at worst, and every view
 * (active layer and snapshots) is the old one or the new one. The dirty
 * bit is not needed, so version 2 images are as safe as version 3.
 */
import { FreshClusters } from './allocator.js';
import { bytesEqual, corrupt, hex, unsupported, writeU64Be } from '@img/block';
import { decodeL2Entry, ENTRY_DECODE, ENTRY_EMPTY, entryCopied, plainEntryCluster, setEntryCopied, writeEntryOffset } from './mapping.js';
import { loadL2, type MappingView } from './mapping-view.js';
import { readRefcount, writeRefcount } from './refcount-entry.js';
import type { Refcounts } from './refcount.js';
import { serializeHeader } from './header.js';
import { serializeSnapshotTable, snapshotEntrySize, type Qcow2Snapshot } from './snapshot.js';
import { OVERLAP } from './overlap.js';
import type { Qcow2Image } from './core.js';
import { checkedWrite } from './image-overlap.js';
import { entryHex, forEachL2Entry, l2EntriesPerTable, l2TableOffsets, type L1Table } from './l2-walk.js';
import { L2_RESERVED_HI, L2_RESERVED_LO } from './constants.js';

const FORMAT = 'qcow2';
/** The header switch must be one sector write to be atomic. */
const SECTOR = 512;

/** An L1 table and its entry count. */
export type L1Tree = L1Table;

/** What a snapshot operation changes (see the module comment). */
export interface MetadataChange {
  /**
   * Trees whose references go: the old active layer (on delete and apply;
   * on create it stays, as the new snapshot's), a deleted snapshot. The
   * new active tree gains its references.
   */
  leaving: L1Tree[];
  /** The new active L1 entries (flags and shared L2 tables are fixed by the commit). */
  active: { l1: Uint8Array; entries: number; size: number };
  /**
   * The old active L1 table: `release` it once the new one is in use (it
   * may stay where it is when its bytes do not change), or `adopt` it (a
   * new snapshot's L1 table: the active one always moves).
   */
  oldL1: 'release' | 'adopt';
  /** The new snapshot table, or undefined to keep it. */
  snapshots?: Qcow2Snapshot[];
  /** Clusters only the old state used, released after the switch. */
  release: Array<{ offset: number; bytes: number }>;
  /** Text for refusal messages ("a snapshot adds"). */
  verb: string;
}

/** An entry that does not decode stops the commit with the codec's error. */
function rethrow(error: Error): never {
  throw error;
}

/** Calls `onRun(first, count)` for the host clusters each entry of an L2 table holds a reference to (compressed data may span two). */
function forEachEntryRun(s: Qcow2Image, table: Uint8Array, tableOffset: number, onRun: (first: number, count: number) => void): void {
  const cs = s.geom.clusterSize;
  const g = s.entryGeom;
  if (!g.extendedL2) {
    // Plain entries (most of a large image's) are read without decoding, neighbours in the file as one run.
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    let runFirst = -1;
    let runCount = 0;
    for (let j = 0; j < l2EntriesPerTable(g); j++) {
      const c = plainEntryCluster(dv, j, g.clusterBits);
      if (c === ENTRY_EMPTY) continue;
      if (c >= 0) {
        if (g.dataFile) continue;
        if (runCount && c === runFirst + runCount) runCount++;
        else {
          if (runCount) onRun(runFirst, runCount);
          runFirst = c;
          runCount = 1;
        }
        continue;
      }
      const e = decodeL2Entry(table, j, g, s.file, tableOffset);
      if (e.type === 'compressed') {
        const first = Math.floor(e.host / cs);
        onRun(first, Math.floor((e.host + e.size - 1) / cs) - first + 1);
      } else if (e.type !== 'unallocated' && e.host !== undefined && !g.dataFile) onRun(e.host / cs, 1);
    }
    if (runCount) onRun(runFirst, runCount);
    return;
  }
  forEachL2Entry(
    s,
    table,
    tableOffset,
    (e) => {
      if (e.type === 'compressed') {
        const first = Math.floor(e.host / cs);
        onRun(first, Math.floor((e.host + e.size - 1) / cs) - first + 1);
      } else if (e.type !== 'unallocated' && e.host !== undefined && !s.entryGeom.dataFile) onRun(e.host / cs, 1);
    },
    rethrow,
  );
}

/** What flagClusters finds: entry `index[k]` of the table maps host cluster `cluster[k]`, for k < count. */
interface FlagClusters {
  count: number;
  index: Uint32Array;
  cluster: Float64Array;
}

/** The entries of an L2 table that carry a COPIED flag (they map a host cluster of their own, not compressed), with that cluster. */
function flagClusters(s: Qcow2Image, table: Uint8Array, tableOffset: number): FlagClusters {
  const g = s.entryGeom;
  const cs = s.geom.clusterSize;
  const entries = l2EntriesPerTable(g);
  // Two typed arrays per table, not an object per entry: a million-cluster image's walk made millions of them.
  const out: FlagClusters = { count: 0, index: new Uint32Array(entries), cluster: new Float64Array(entries) };
  const add = (j: number, c: number): void => {
    out.index[out.count] = j;
    out.cluster[out.count++] = c;
  };
  if (!g.extendedL2) {
    // Most entries name an aligned cluster, known without decoding them into objects; the rest (none, compressed,
    // unaligned, out of range) are decoded, and refused as before.
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let j = 0; j < entries; j++) {
      const c = plainEntryCluster(dv, j, g.clusterBits);
      if (c === ENTRY_EMPTY) continue;
      if (c >= 0) {
        add(j, c);
        continue;
      }
      const e = decodeL2Entry(table, j, g, s.file, tableOffset);
      if (e.type !== 'compressed') refuseReservedBits(s, table, dv, j * (g.extendedL2 ? 16 : 8), tableOffset);
      if (e.type !== 'unallocated' && e.type !== 'compressed' && e.host !== undefined) add(j, e.host / cs);
    }
    return out;
  }
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  forEachL2Entry(
    s,
    table,
    tableOffset,
    (e, j) => {
      if (e.type !== 'compressed') refuseReservedBits(s, table, dv, j * (g.extendedL2 ? 16 : 8), tableOffset);
      if (e.type !== 'unallocated' && e.type !== 'compressed' && e.host !== undefined) add(j, e.host / cs);
    },
    rethrow,
  );
  return out;
}

/**
 * Refuses (ERR_IMG_CORRUPT) a plain L2 entry with reserved bits set, before a snapshot change writes anything: the
 * change copies and rewrites the tables that hold it, and left a second corrupt entry beside the first (fuzz seed
 * 1151 case 185: a snapshot created over one, then a failed write). `img check -r all` clears them, as qemu-img's.
 */
function refuseReservedBits(s: Qcow2Image, table: Uint8Array, dv: DataView, at: number, tableOffset: number): void {
  if ((dv.getUint32(at) & L2_RESERVED_HI) === 0 && (dv.getUint32(at + 4) & L2_RESERVED_LO) === 0) return;
  const entry = `0x${entryHex(table, at)}`;
  throw corrupt(FORMAT, s.file, `L2 entry at ${hex(tableOffset + at)} has reserved bits set (${entry}): run img check -r all before changing snapshots`, { field: 'L2 entry', offset: tableOffset + at, actual: entry });
}

/**
 * A copy of an L2 table without the COPIED flags of its compressed
 * descriptors, or undefined when none carries one. qemu's snapshot walk
 * clears that flag in every table it passes (it never belongs on a
 * compressed descriptor), and `qemu-img check` counts it once per L1 table
 * that reaches the table, so a snapshot sharing the table counted it twice.
 */
function withoutCompressedCopied(s: Qcow2Image, table: Uint8Array, tableOffset: number): Uint8Array | undefined {
  let copy: Uint8Array | undefined;
  const g = s.entryGeom;
  if (!g.extendedL2) {
    // Only compressed descriptors change, and entries that may not decode are refused as before: plain ones are skipped unread.
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let j = 0; j < l2EntriesPerTable(g); j++) {
      if (plainEntryCluster(dv, j, g.clusterBits) !== ENTRY_DECODE) continue;
      const e = decodeL2Entry(table, j, g, s.file, tableOffset);
      if (e.type !== 'compressed' || !entryCopied(table, j * 8)) continue;
      copy ??= table.slice();
      setEntryCopied(copy, j * 8, false);
    }
    return copy;
  }
  forEachL2Entry(
    s,
    table,
    tableOffset,
    (e, j) => {
      if (e.type !== 'compressed' || !entryCopied(table, j * s.geom.l2EntrySize)) return;
      copy ??= table.slice();
      setEntryCopied(copy, j * s.geom.l2EntrySize, false);
    },
    rethrow,
  );
  return copy;
}

/** L2 table offsets of a tree, by L1 index (0: none). */
function tablesOf(s: Qcow2Image, t: L1Tree): number[] {
  return l2TableOffsets(t, s.geom.clusterSize, s.file, 'strict');
}

/** Clusters per chunk of {@link Deltas}. */
const CHUNK = 4096;

/** Refcount changes by cluster, in dense chunks of {@link CHUNK} clusters (allocated as touched). */
class Deltas {
  readonly #chunks = new Map<number, Int32Array>();
  /** The chunk {@link get} read last (chunks are never replaced). */
  #lastK = -1;
  #last: Int32Array | undefined;
  add(first: number, count: number, d: number): void {
    for (let c = first; c < first + count;) {
      const k = Math.floor(c / CHUNK);
      let chunk = this.#chunks.get(k);
      if (!chunk) this.#chunks.set(k, (chunk = new Int32Array(CHUNK)));
      const stop = Math.min(first + count, (k + 1) * CHUNK);
      for (let i = c - k * CHUNK; c < stop; c++, i++) chunk[i]! += d;
    }
  }
  get(c: number): number {
    const k = Math.floor(c / CHUNK);
    if (k !== this.#lastK) {
      const chunk = this.#chunks.get(k);
      if (!chunk) return 0;
      this.#lastK = k;
      this.#last = chunk;
    }
    return this.#last![c - k * CHUNK]!;
  }
  /** The chunks of changes: [first cluster, delta per cluster]. */
  *chunks(): Generator<[number, Int32Array]> {
    for (const [k, chunk] of this.#chunks) yield [k * CHUNK, chunk];
  }
}

/**
 * Refcounts read cluster by cluster without an await where the block is in memory: the block of the read before
 * is kept until {@link CountReader.forget}, which a caller calls after any await (a block may have been replaced).
 */
class CountReader {
  readonly #rc: Refcounts;
  #t = -1;
  #block: Uint8Array | null | undefined;
  constructor(rc: Refcounts) {
    this.#rc = rc;
  }
  /** The count of cluster `c`, or undefined: ask Refcounts.get (then call forget). */
  read(c: number): number | undefined {
    const rc = this.#rc;
    const t = Math.floor(c / rc.perBlock);
    if (t !== this.#t) {
      this.#block = rc.peekBlock(t);
      this.#t = t;
    }
    const b = this.#block;
    return b === null ? 0 : b === undefined ? undefined : readRefcount(b, c - t * rc.perBlock, rc.bits);
  }
  forget(): void {
    this.#t = -1;
  }
}

/** Adds `sign` for every table of `tables` and every cluster its entries reference. */
async function countTree(s: Qcow2Image, tables: readonly number[], sign: number, d: Deltas): Promise<void> {
  const cs = s.geom.clusterSize;
  for (let i = 0; i < tables.length; i++) {
    const at = tables[i]!;
    if (!at) continue;
    d.add(at / cs, 1, sign);
    const table = await loadL2(s, at, i);
    forEachEntryRun(s, table, at, (first, count) => d.add(first, count, sign));
  }
}

async function flushAll(s: Qcow2Image): Promise<void> {
  await s.dataFile?.flush();
  await s.storage.flush();
}

/** Allocates clusters (refcount 1, written in place: a crash leaks them) and grows the file over them; given back if it cannot grow. */
async function allocate(s: Qcow2Image, rc: Refcounts, count: number): Promise<number> {
  const offset = await rc.allocate(count);
  const end = rc.endCluster * s.geom.clusterSize;
  if (end > s.fileSize) {
    try {
      await s.storage.truncate(end);
    } catch (error) {
      await rc.release(offset, count * s.geom.clusterSize).catch(() => undefined);
      throw error;
    }
    s.noteFileEnd(end);
  }
  return offset;
}

/**
 * Refuses a snapshot operation while a refcount block cannot be trusted
 * (the commit copies every block whose counts change). The operations call
 * it before their exclusive section too, where a refusal would set the
 * corrupt bit: nothing is written.
 */
export function refuseUntrustedRefcounts(s: Qcow2Image, rc: Refcounts): void {
  if (!rc.untrustedBlocks.length) return;
  const { index, reason } = rc.untrustedBlocks[0]!;
  const at = s.header.refcountTableOffset + index * 8;
  throw corrupt(FORMAT, s.file, `refusing the snapshot operation: refcount block ${index} (refcount table entry at ${hex(at)}) cannot be trusted (${reason}); repair the image first (check -r all)`, {
    field: 'refcount table entry',
    offset: at,
  });
}

/**
 * Applies `change` to the image with one header switch (see the module
 * comment). On return the header, the active view, the snapshot list and
 * the refcounts describe the new state.
 */
export async function commitChange(s: Qcow2Image, view: MappingView, rc: Refcounts, change: MetadataChange): Promise<void> {
  const cs = s.geom.clusterSize;
  const es = s.geom.l2EntrySize;
  refuseUntrustedRefcounts(s, rc);
  await s.writer?.allocator.drainReleases();
  // Refcounts change here in bulk (new refcount blocks, releases below), not through the allocator: the last
  // compressed cluster may be freed and handed out again, so its free tail is no place for more compressed data.
  s.writer?.allocator.forgetCompressedTail();
  await flushAll(s);

  // ---- 1. plan ---------------------------------------------------------
  const beforeActive = new Set(tablesOf(s, { l1: view.l1, offset: view.l1Offset, entries: s.header.l1Size }).filter((t) => t !== 0));
  const newTables = tablesOf(s, { l1: change.active.l1, offset: view.l1Offset, entries: change.active.entries });
  const d = new Deltas();
  for (const t of change.leaving) await countTree(s, tablesOf(s, t), -1, d);
  await countTree(s, newTables, 1, d);
  // Over millions of clusters: an await only where a refcount block must be read first.
  const counts = new CountReader(rc);
  const countOf = async (c: number): Promise<number> => {
    const now = counts.read(c);
    if (now !== undefined) return now;
    const read = await rc.get(c);
    counts.forget();
    return read;
  };
  const after = async (c: number): Promise<number> => (await countOf(c)) + d.get(c);
  for (const [base, chunk] of d.chunks()) {
    for (let i = 0; i < CHUNK; i++) {
      const delta = chunk[i]!;
      if (!delta) continue;
      const c = base + i;
      let now = counts.read(c);
      if (now === undefined) {
        now = await rc.get(c);
        counts.forget();
      }
      if (now + delta < 0) {
        throw corrupt(FORMAT, s.file, `refcount of cluster ${c} (${hex(c * cs)}) would drop below zero: it is ${now}, but more references to it go`, { field: 'refcount', offset: c * cs, actual: now });
      }
      if (now + delta > rc.maxRefcount) {
        throw unsupported(FORMAT, s.file, `refcount_bits ${rc.bits} cannot count the references ${change.verb} to cluster ${c} (${hex(c * cs)}): ${now} + ${delta} > ${rc.maxRefcount}; use wider refcounts (qemu-img amend -o refcount_bits=16)`, {
          field: 'refcount_bits',
        });
      }
    }
  }
  // The active L2 tables whose COPIED flags change: copied if the active layer reaches them now,
  // changed in place if only snapshots do. (Their new bytes are made again when written, so that
  // they are not all held at once.)
  const withFlags = async (at: number, i: number): Promise<Uint8Array | undefined> => {
    const table = (await loadL2(s, at, i)).slice();
    // Blocks may have changed hands while this awaited (the write phase allocates between calls).
    counts.forget();
    let changed = false;
    const flags = flagClusters(s, table, at);
    for (let k = 0; k < flags.count; k++) {
      const j = flags.index[k]!;
      const c = flags.cluster[k]!;
      const known = counts.read(c);
      const own = s.entryGeom.dataFile || (known === undefined ? await after(c) : known + d.get(c)) === 1;
      if (setEntryCopied(table, j * es, own)) changed = true;
    }
    return changed ? table : undefined;
  };
  const rewrite = new Map<number, { index: number; copy: boolean; uses: number }>();
  const unchanged = new Set<number>();
  for (let i = 0; i < newTables.length; i++) {
    const at = newTables[i]!;
    if (!at || unchanged.has(at)) continue;
    const known = rewrite.get(at);
    if (known) {
      known.uses++;
      continue;
    }
    if (await withFlags(at, i)) rewrite.set(at, { index: i, copy: beforeActive.has(at), uses: 1 });
    else unchanged.add(at);
  }
  // Each copy takes one reference from the table it copies; the copy itself is allocated (refcount 1).
  for (const [at, r] of rewrite) {
    if (r.copy) {
      d.add(at / cs, 1, -r.uses);
      const now = await rc.get(at / cs);
      if (now + d.get(at / cs) < 0) {
        throw corrupt(FORMAT, s.file, `refcount of L2 table ${hex(at)} would drop below zero: it is ${now}, less than the L1 entries that point at it`, { field: 'refcount', offset: at, actual: now });
      }
    } else {
      s.overlap?.check(s.file, at, cs, OVERLAP.L2); // before anything is written
    }
  }

  // Tables that stay in use lose the COPIED flags of their compressed descriptors in place, as in qemu's
  // walk: that changes no mapping and no refcount, so every crash point reads as before. The copies made
  // below are made from the cleaned tables (the cache holds them).
  const cleaned = new Map<number, Uint8Array>();
  const walked = new Map<number, number>();
  for (const tables of [...change.leaving.map((t) => tablesOf(s, t)), newTables]) {
    for (let i = 0; i < tables.length; i++) if (tables[i]) walked.set(tables[i]!, i);
  }
  for (const [at, i] of walked) {
    if ((await after(at / cs)) <= 0) continue;
    const table = withoutCompressedCopied(s, await loadL2(s, at, i), at);
    if (!table) continue;
    s.overlap?.check(s.file, at, cs, OVERLAP.L2); // before anything is written
    cleaned.set(at, table);
  }

  // ---- 2. write the new state to fresh clusters ----------------------------
  for (const [at, table] of cleaned) {
    await checkedWrite(s, at, table, OVERLAP.L2);
    s.cache.put(at, table);
  }
  // Clusters allocated for the new state: nothing the header reaches points at them until the switch, so a
  // failure before it (a full file system, a write error) gives them back, as qemu does, instead of leaving
  // them as leaks. From the header write on, they may be in use: a failure then leaves them.
  const taken = new FreshClusters((offset, bytes) => rc.release(offset, bytes));
  const take = async (count: number): Promise<number> => {
    const at = await allocate(s, rc, count);
    taken.add(at, count * cs);
    return at;
  };
  let switching = false;
  try {
    const placed = new Map<number, number>();
    for (const [at, r] of rewrite) {
      const bytes = (await withFlags(at, r.index))!;
      if (r.copy) {
        const fresh = await take(1);
        if (r.uses > 1) d.add(fresh / cs, 1, r.uses - 1);
        await checkedWrite(s, fresh, bytes);
        placed.set(at, fresh);
      } else {
        await checkedWrite(s, at, bytes, OVERLAP.L2);
      }
    }
    const l1 = change.active.l1.slice(0, change.active.entries * 8);
    for (let i = 0; i < newTables.length; i++) {
      const at = newTables[i]!;
      if (!at) continue;
      const target = placed.get(at) ?? at;
      writeEntryOffset(l1, i * 8, target, false);
      const refs = placed.has(at) ? 1 + d.get(target / cs) : await after(at / cs);
      setEntryCopied(l1, i * 8, refs === 1);
    }
    const l1Bytes = change.active.entries * 8;
    const sameL1 = change.oldL1 === 'release' && l1Bytes === s.header.l1Size * 8 && bytesEqual(l1, view.l1.subarray(0, l1Bytes));
    let l1Offset = view.l1Offset;
    if (!sameL1 && l1Bytes) {
      const padded = new Uint8Array(Math.ceil(l1Bytes / cs) * cs);
      padded.set(l1);
      l1Offset = await take(padded.length / cs);
      await checkedWrite(s, l1Offset, padded);
      if (change.oldL1 === 'release') change.release.push({ offset: view.l1Offset, bytes: Math.ceil((s.header.l1Size * 8) / cs) * cs });
    }
    let snapshotsOffset = s.header.snapshotsOffset;
    let snapshots = s.snapshots;
    if (change.snapshots) {
      const bytes = serializeSnapshotTable(change.snapshots);
      const oldBytes = s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0);
      if (oldBytes && snapshotsOffset) change.release.push({ offset: snapshotsOffset, bytes: oldBytes });
      snapshotsOffset = 0;
      if (bytes.length) {
        snapshotsOffset = await take(Math.ceil(bytes.length / cs));
        await checkedWrite(s, snapshotsOffset, bytes);
      }
      let pos = snapshotsOffset;
      snapshots = change.snapshots.map((sn) => {
        const entry = { ...sn, entryOffset: pos };
        pos += snapshotEntrySize(sn);
        return entry;
      });
    }
    // Refcount blocks whose counts change are copied with the new counts, under a new refcount table.
    const blocks = new Set<number>();
    for (const [base, chunk] of d.chunks()) for (let i = 0; i < CHUNK; i++) if (chunk[i]) blocks.add(Math.floor((base + i) / rc.perBlock));
    const freshBlocks = new Map<number, number>();
    for (const t of blocks) freshBlocks.set(t, await take(1));
    let tableClusters = rc.tableClusters;
    let tableOffset = rc.tableOffset;
    if (blocks.size) {
      tableOffset = await take(tableClusters);
      while (rc.tableClusters !== tableClusters) {
        // Allocating grew the live refcount table: the new one must be as large.
        await rc.release(tableOffset, tableClusters * cs);
        taken.forget(tableOffset);
        tableClusters = rc.tableClusters;
        tableOffset = await take(tableClusters);
      }
    }
    const live = rc.table;
    const oldBlocks: number[] = [];
    for (const [t, fresh] of freshBlocks) {
      const old = live[t] ?? 0;
      if (!old) throw corrupt(FORMAT, s.file, `no refcount block covers cluster ${t * rc.perBlock}, whose refcount the snapshot operation changes`, { field: 'refcount table entry' });
      const block = new Uint8Array(cs);
      await s.storage.readInto(old, block);
      for (let k = 0; k < rc.perBlock; k++) {
        const delta = d.get(t * rc.perBlock + k);
        if (delta) writeRefcount(block, k, rc.bits, readRefcount(block, k, rc.bits) + delta);
      }
      await checkedWrite(s, fresh, block);
      oldBlocks.push(old);
    }
    if (blocks.size) {
      const table = new Uint8Array(tableClusters * cs);
      for (let t = 0; t < live.length; t++) {
        const at = freshBlocks.get(t) ?? live[t] ?? 0;
        writeU64Be(table, t * 8, at);
      }
      await checkedWrite(s, tableOffset, table);
    }
    await flushAll(s);

    // ---- 3. the switch: one sector -----------------------------------------
    const old = { tableOffset: rc.tableOffset, tableClusters: rc.tableClusters };
    const h = { ...s.header };
    h.l1TableOffset = l1Offset;
    h.l1Size = change.active.entries;
    h.size = change.active.size;
    h.refcountTableOffset = tableOffset;
    h.refcountTableClusters = tableClusters;
    h.snapshotsOffset = snapshotsOffset;
    h.nbSnapshots = snapshots.length;
    const header = serializeHeader(h);
    if (header.length > SECTOR) throw unsupported(FORMAT, s.file, `a header of ${header.length} bytes cannot be switched with one sector write`, { field: 'header_length' });
    switching = true;
    await checkedWrite(s, 0, header, OVERLAP.HEADER);
    await flushAll(s);
    // `view` is the active view (snapshot operations change nothing else).
    s.setHeader(h);
    s.setSnapshots(snapshots);
    s.replaceActiveL1(sameL1 ? view.l1 : l1, l1Offset);
    s.setSize(change.active.size);
    s.cache.clear();
    s.decompressed.clear();
    if (blocks.size) {
      await rc.switchTable(tableOffset, tableClusters, s.fileSize);
      for (const at of oldBlocks) change.release.push({ offset: at, bytes: cs });
      change.release.push({ offset: old.tableOffset, bytes: old.tableClusters * cs });
    }

    // ---- 4. what only the old state used ---------------------------------------
    for (const r of change.release) if (r.offset && r.bytes) await rc.release(r.offset, r.bytes);
    await flushAll(s);
  } catch (error) {
    if (!switching) await taken.giveBack();
    throw error;
  }
}
