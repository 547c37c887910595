/**
 * Growth of the refcount structures: a new refcount block where a change
 * needs one, a bigger refcount table when the blocks outgrow it, and the
 * refcount area of a preallocating resize. Each lays out blocks that
 * count themselves at the allocation frontier and orders its writes with
 * barriers, so that a crash on the way leaves leaks at worst. Refcounts
 * (refcount.ts) calls these with its table, frontier and count changes.
 */
import { concatBytes, writeU64Be, corrupt, unsupported } from '@img/block';
import { MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { OVERLAP } from './overlap.js';
import { refcountFixedPoint, writeRefcount } from './refcount-entry.js';
import type { RefcountTable, RefcountTableOptions } from './refcount-table.js';
import type { AllocationFrontier } from './refcount-frontier.js';

const FORMAT = 'qcow2';
/** New refcount blocks of a refcount area go out in writes of at most this many bytes. */
const AREA_PIECE = 4 * 1024 * 1024;

/** How a growing refcount structure reaches the image and orders its writes. */
export interface RefcountGrowthOptions extends Pick<RefcountTableOptions, 'storage' | 'file' | 'overlap'> {
  /** Called after the refcount table moved (the header must be rewritten). */
  onTableMoved: (offset: number, clusters: number) => Promise<void>;
  /** Flush barrier between dependent metadata writes (a no-op with lazy refcounts). */
  barrier: () => Promise<void>;
}

/** The refcount structures that grow (Refcounts holds one of these). */
export interface RefcountGrowthContext {
  readonly o: RefcountGrowthOptions;
  readonly table: RefcountTable;
  readonly frontier: AllocationFrontier;
  /** Adds `delta` to the refcounts of clusters [first, first+count) (Refcounts.add). */
  add(first: number, count: number, delta: number): Promise<void>;
}

/**
 * Makes sure refcount block `t` exists. A new block goes at the end of
 * the file; if it lies in its own range it describes itself, else the
 * block covering it is made first.
 */
export async function ensureRefcountBlock(g: RefcountGrowthContext, t: number): Promise<void> {
  const { o, table, frontier } = g;
  const cs = table.clusterSize;
  const per = table.perBlock;
  while ((table.table[t] ?? 0) === 0) {
    const at = frontier.endPastHeld();
    const ownerIndex = Math.floor(at / per);
    if (ownerIndex !== t && (table.table[ownerIndex] ?? 0) === 0) {
      await ensureRefcountBlock(g, ownerIndex);
      continue;
    }
    if (t >= table.table.length || ownerIndex >= table.table.length) {
      await growTable(g, Math.max(t, ownerIndex) + 1);
      continue;
    }
    // `at` is the frontier: the block's cluster moves it up by one.
    frontier.noteEnd(at + 1);
    const block = new Uint8Array(cs);
    // A block that replaces an untrusted one counts every cluster of its range in the file as used
    // (leaks at worst, never a live cluster handed out again).
    if (table.isUntrusted(t)) {
      for (let c = t * per; c < Math.min(table.loadEnd, (t + 1) * per); c++) writeRefcount(block, c % per, table.bits, 1);
    }
    if (ownerIndex === t) writeRefcount(block, at % per, table.bits, 1);
    o.overlap?.check(o.file, at * cs, cs);
    await o.storage.write(at * cs, block);
    if (ownerIndex !== t) await g.add(at, 1, 1);
    await o.barrier();
    table.setEntry(t, at * cs);
    o.overlap?.add(OVERLAP.REFCOUNT_BLOCK, at * cs, cs);
    table.cacheBlock(at * cs, block);
    await table.writeEntry(t);
    await o.barrier();
  }
}

/**
 * Moves the refcount table to a bigger one at the end of the file, with
 * new self-describing refcount blocks for its own clusters where needed.
 */
async function growTable(g: RefcountGrowthContext, minEntries: number): Promise<void> {
  const { o, table: rt, frontier } = g;
  const cs = rt.clusterSize;
  const per = rt.perBlock;
  const perCluster = cs / 8;
  let entries = Math.max(minEntries, Math.ceil(rt.table.length * 1.5), perCluster);
  let clusters = 0;
  let newBlocks: number[] = [];
  let start = frontier.endPastHeld();
  // Find a size that covers the table itself and the blocks that describe it, on clusters no metadata holds.
  for (;;) {
    clusters = Math.ceil(entries / perCluster);
    newBlocks = [];
    // Blocks are needed for every block index covering [start, start+clusters+newBlocks) that has none.
    let span = clusters;
    for (let guard = 0; guard < 64; guard++) {
      newBlocks = [];
      for (let t = Math.floor(start / per); t <= Math.floor((start + span - 1) / per); t++) {
        if ((rt.table[t] ?? 0) === 0) newBlocks.push(t);
      }
      if (clusters + newBlocks.length === span) break;
      span = clusters + newBlocks.length;
    }
    const maxIndex = Math.max(rt.table.length, minEntries, ...newBlocks.map((t) => t + 1));
    const held = frontier.heldIn(start, clusters + newBlocks.length);
    if (held >= 0) {
      // `held` lies at or past `start`, the frontier.
      frontier.noteEnd(held + 1);
      start = frontier.endPastHeld();
      continue;
    }
    if (maxIndex <= clusters * perCluster) break;
    entries = maxIndex;
  }
  if (clusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw corrupt(FORMAT, o.file, `the refcount table would exceed qemu's 8 MiB bound`, { field: 'refcount_table_clusters' });
  }
  const table = rt.table.slice();
  while (table.length < clusters * perCluster) table.push(0);
  // Write the new blocks (they count the table and themselves), then the table.
  const blockAt = start + clusters;
  const blocks = new Map<number, Uint8Array>();
  newBlocks.forEach((t, i) => {
    table[t] = (blockAt + i) * cs;
    blocks.set(t, new Uint8Array(cs));
  });
  // `start` is the frontier: the table and its blocks move it past them.
  frontier.noteEnd(blockAt + newBlocks.length);
  // Refcounts of the new clusters: in new blocks directly, in existing blocks through add().
  const fresh: number[] = [];
  for (let c = start; c < frontier.end; c++) {
    const t = Math.floor(c / per);
    const nb = blocks.get(t);
    if (nb) writeRefcount(nb, c % per, rt.bits, 1);
    else fresh.push(c);
  }
  for (const [t, b] of blocks) {
    o.overlap?.check(o.file, table[t]!, cs);
    await o.storage.write(table[t]!, b);
    rt.cacheBlock(table[t]!, b);
    o.overlap?.add(OVERLAP.REFCOUNT_BLOCK, table[t]!, cs);
  }
  rt.replaceEntries(table);
  for (const c of fresh) await g.add(c, 1, 1);
  const bytes = new Uint8Array(clusters * cs);
  table.forEach((off, i) => writeU64Be(bytes, i * 8, off));
  o.overlap?.check(o.file, start * cs, bytes.length);
  await o.storage.write(start * cs, bytes);
  await o.barrier();
  const oldOffset = rt.tableOffset;
  const oldClusters = rt.tableClusters;
  rt.relocate(start * cs, clusters);
  o.overlap?.add(OVERLAP.REFCOUNT_TABLE, start * cs, clusters * cs);
  await o.onTableMoved(rt.tableOffset, clusters);
  o.overlap?.remove(OVERLAP.REFCOUNT_TABLE, oldOffset, oldClusters * cs);
  await o.barrier();
  await g.add(oldOffset / cs, oldClusters, -1);
}

/**
 * qemu's refcount area (qcow2_refcount_area with an exact size), which
 * its preallocating truncate lays out before the data clusters: from
 * cluster `start` (past every cluster in use), a new refcount block for
 * each table entry without one, then a new refcount table, sized so that
 * they cover themselves and `additional` clusters after them. Blocks
 * already there count the new clusters in place. The blocks and the
 * table are written and flushed, the header switches to the table, and
 * the old table is freed: a crash on the way leaves leaks at worst.
 * Answers the first cluster after the new table (where the additional
 * clusters go), or undefined, with nothing changed, where a block of the
 * area could not be trusted at open or a cluster of it is in use or
 * holds metadata. A table over qemu's 8 MiB bound is ERR_IMG_UNSUPPORTED.
 */
export async function reserveRefcountArea(g: RefcountGrowthContext, start: number, additional: number): Promise<number | undefined> {
  const { o, table: rt, frontier } = g;
  const cs = rt.clusterSize;
  const per = rt.perBlock;
  const perCluster = cs / 8;
  const total = refcountFixedPoint(start + additional, cs, per).blocks;
  const first = Math.floor(start / per);
  let kept = rt.table.length;
  while (kept > 0 && (rt.table[kept - 1] ?? 0) === 0) kept--;
  // qemu drops the blocks past the ones it needs (they count only free clusters); they stay here, so that their own clusters are not leaked.
  const entries = Math.ceil(Math.max(total, kept, 1) / perCluster) * perCluster;
  const tableClusters = entries / perCluster;
  if (tableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw unsupported(FORMAT, o.file, `preallocating ${additional} more clusters needs a refcount table of ${tableClusters * cs} bytes, over qemu's 8 MiB bound`, { field: 'size' });
  }
  let fresh = 0;
  for (let t = first; t < total; t++) {
    if (rt.isUntrusted(t)) return undefined;
    if ((rt.table[t] ?? 0) === 0) fresh++;
  }
  const tableAt = start + fresh;
  const end = tableAt + tableClusters;
  if (frontier.heldIn(start, end - start) >= 0 || !(await rt.allFree(start, end - start))) return undefined;
  const storage = o.storage;
  const overlap = o.overlap;
  const table = rt.table.slice(0, entries);
  while (table.length < entries) table.push(0);
  // New blocks follow each other from `start`: they go out a piece at a time.
  const piece: Array<[number, Uint8Array]> = [];
  const writePiece = async (): Promise<void> => {
    if (!piece.length) return;
    const at = piece[0]![0];
    await storage.write(at, piece.length === 1 ? piece[0]![1] : concatBytes(piece.map(([, b]) => b)));
    for (const [offset, block] of piece) {
      rt.cacheBlock(offset, block);
      overlap?.add(OVERLAP.REFCOUNT_BLOCK, offset, cs);
    }
    piece.length = 0;
  };
  let next = start;
  for (let t = first; t < total; t++) {
    const lo = Math.max(start, t * per);
    const hi = Math.min(end, (t + 1) * per);
    if (table[t]) {
      if (lo >= hi) continue;
      const block = (await rt.block(t))!;
      for (let c = lo; c < hi; c++) writeRefcount(block, c % per, rt.bits, 1);
      await rt.writeBlockRange(t, block, lo - t * per, hi - t * per);
      continue;
    }
    const block = new Uint8Array(cs);
    for (let c = lo; c < hi; c++) writeRefcount(block, c % per, rt.bits, 1);
    table[t] = next * cs;
    overlap?.check(o.file, next * cs, cs);
    piece.push([next * cs, block]);
    next++;
    if (piece.length * cs >= AREA_PIECE) await writePiece();
  }
  await writePiece();
  frontier.noteEnd(end);
  const bytes = new Uint8Array(entries * 8);
  table.forEach((offset, i) => {
    if (offset) writeU64Be(bytes, i * 8, offset);
  });
  overlap?.check(o.file, tableAt * cs, bytes.length);
  await storage.write(tableAt * cs, bytes);
  await o.barrier();
  const oldOffset = rt.tableOffset;
  const oldClusters = rt.tableClusters;
  rt.replaceEntries(table);
  rt.relocate(tableAt * cs, tableClusters);
  overlap?.add(OVERLAP.REFCOUNT_TABLE, tableAt * cs, bytes.length);
  await o.onTableMoved(rt.tableOffset, tableClusters);
  overlap?.remove(OVERLAP.REFCOUNT_TABLE, oldOffset, oldClusters * cs);
  await o.barrier();
  await g.add(oldOffset / cs, oldClusters, -1);
  return end;
}
