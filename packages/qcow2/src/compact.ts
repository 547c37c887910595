/**
 * compactQcow2: shrink a qcow2 file in place to what it holds, by moving
 * the objects nearest the end of the file (data clusters, runs of
 * compressed data, L2 tables, refcount blocks, the refcount table, L1
 * tables, the snapshot table, bitmap directory, tables and data) into the
 * lowest free clusters, then cutting the file behind the last one.
 *
 * Crash safety, for each move (several data moves share each step, none
 * of them holding a field of another):
 *
 * 1. The refcounts of the new clusters are raised to those of the old
 *    ones, then a flush: the new clusters are now a leak.
 * 2. The object is copied there, then a flush.
 * 3. Every field that pointed at the old place is rewritten (one aligned
 *    8-byte write each, so each reads old or new), then a flush. Both
 *    copies hold the same bytes, so a mix of old and new pointers reads
 *    the same; the refcounts of both are raised, a leak at worst.
 * 4. The old clusters' refcounts drop to 0, then a flush.
 *
 * After the last move, clusters that are counted but used by nothing
 * (leaks, from a crash or an abort) get refcount 0, and the file is cut
 * behind the last object. Running compactQcow2 again after a crash or an
 * abort starts from a fresh scan and finishes the job.
 */
import { throwIfAborted, type Storage } from '@img/block';
import { addToField, readQcow2Graph, refcountOf, setRefcounts, siteOffset, type HostObject, type Qcow2Graph } from './compact-graph.js';

/** Bytes copied per read/write while an object moves. */
const COPY_CHUNK = 4 * 1024 * 1024;

/** Data clusters moved together (one flush per step for all of them). */
const BATCH_BYTES = 32 * 1024 * 1024;

/** Options of compactQcow2. */
export interface Qcow2CompactOptions {
  /** Called after each group of moves, with the bytes moved so far and in all. */
  onProgress?: (done: number, total: number) => void;
  /** Stops before the next group of moves (ERR_IMG_ABORTED); the file stays consistent, and running compactQcow2 again finishes. */
  signal?: AbortSignal;
}

/** What compactQcow2 did. */
export interface Qcow2CompactResult {
  /** Clusters moved into lower free space: data (and compressed data) and metadata. */
  dataClustersMoved: number;
  metadataClustersMoved: number;
  /** Bytes copied. */
  bytesMoved: number;
  /** Clusters that were counted but used by nothing (a crash's leaks) and were given back. */
  leaksReclaimed: number;
  /** File size before and after. */
  sizeBefore: number;
  sizeAfter: number;
  /** Bytes the image needs: the header cluster and every cluster in use. */
  allocatedBytes: number;
  /** Set when there was nothing to do, saying why. */
  nothingToDo?: string;
}

interface Move {
  obj: HostObject;
  to: number;
}

/**
 * Moves the clusters of the qcow2 image in `storage` into the lowest free
 * space and truncates the file (see the module comment for the write
 * order). Works with snapshots, bitmaps, compressed clusters, backing
 * files (never opened) and external data files (then only metadata moves).
 * The storage must be writable; it is flushed and left open.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('disk.qcow2', { readOnly: false });
 * await sparsifyQcow2(storage, { resolver: fileResolver });
 * const r = await compactQcow2(storage);
 * console.log(`${r.bytesMoved} bytes moved, ${r.sizeBefore} -> ${r.sizeAfter}`);
 * await storage.close();
 * ```
 */
export async function compactQcow2(storage: Storage, options: Qcow2CompactOptions = {}): Promise<Qcow2CompactResult> {
  const g = await readQcow2Graph(storage);
  const cs = g.clusterSize;
  const sizeBefore = g.fileSize;
  const moves = planMoves(g);
  const total = moves.reduce((n, m) => n + m.obj.clusters * cs, 0);
  const result: Qcow2CompactResult = { dataClustersMoved: 0, metadataClustersMoved: 0, bytesMoved: 0, leaksReclaimed: 0, sizeBefore, sizeAfter: sizeBefore, allocatedBytes: 0 };
  let aborted: unknown;
  for (let i = 0; i < moves.length;) {
    try {
      throwIfAborted(options.signal);
    } catch (e) {
      aborted = e;
      break;
    }
    // Leaves (they hold no field of another object) go together; a table goes alone.
    const batch = [moves[i++]!];
    if (isLeaf(batch[0]!.obj)) {
      let bytes = batch[0]!.obj.clusters * cs;
      while (i < moves.length && isLeaf(moves[i]!.obj) && bytes < BATCH_BYTES) {
        bytes += moves[i]!.obj.clusters * cs;
        batch.push(moves[i++]!);
      }
    }
    await moveObjects(storage, g, batch);
    for (const m of batch) {
      const bytes = m.obj.clusters * cs;
      result.bytesMoved += bytes;
      if (isLeaf(m.obj) && m.obj.kind !== 'bitmap-data') result.dataClustersMoved += m.obj.clusters;
      else result.metadataClustersMoved += m.obj.clusters;
    }
    options.onProgress?.(result.bytesMoved, total);
  }
  // Give back what nothing uses, then cut behind the last object (also after an abort).
  const end = dataEnd(g);
  const leaks: Array<[number, number]> = [];
  // Only where a refcount block exists (the table may have room for thousands more).
  g.refcountBlocks.forEach((block, i) => {
    if (!block) return;
    for (let c = Math.max(1, i * g.entriesPerBlock); c < (i + 1) * g.entriesPerBlock; c++) {
      if (!(c < g.owner.length && g.owner[c]) && (refcountOf(g, c) ?? 0) > 0) leaks.push([c, 0]);
    }
  });
  if (leaks.length > 0) {
    await setRefcounts(storage, g, leaks);
    await storage.flush();
    result.leaksReclaimed = leaks.length;
  }
  if (end < sizeBefore) {
    await storage.truncate(end);
    await storage.flush();
  }
  result.sizeAfter = await storage.size();
  result.allocatedBytes = allocatedBytes(g);
  if (aborted) throw aborted;
  if (moves.length === 0 && result.sizeAfter === sizeBefore && leaks.length === 0) result.nothingToDo = 'no cluster lies above free space it fits in, and nothing follows the last cluster in use';
  return result;
}

function isLeaf(obj: HostObject): boolean {
  return obj.kind === 'data' || obj.kind === 'compressed' || obj.kind === 'bitmap-data';
}

/**
 * The moves, highest object first, each into the lowest free run below it
 * that holds it whole. An object's old place lies above every object
 * still to move, so it is never a target: the free space is found once.
 * Free: no object uses the cluster and a refcount block covers it (a
 * cluster counted by nothing, a crash's leak, is free too).
 */
function planMoves(g: Qcow2Graph): Move[] {
  const cs = g.clusterSize;
  const n = g.owner.length;
  const free = new Uint8Array(n);
  for (let c = 1; c < n; c++) if (!g.owner[c] && refcountOf(g, c) !== undefined) free[c] = 1;
  const objects = [...g.objects].sort((a, b) => b.at - a.at);
  const moves: Move[] = [];
  let lowest = 1;
  for (const obj of objects) {
    const from = obj.at / cs;
    while (lowest < n && !free[lowest]) lowest++;
    if (lowest >= from) break;
    let to = -1;
    for (let c = lowest; c + obj.clusters <= from; c++) {
      if (!free[c]) continue;
      let k = 0;
      while (k < obj.clusters && free[c + k]) k++;
      if (k === obj.clusters) {
        to = c;
        break;
      }
      c += k;
    }
    if (to < 0) continue;
    free.fill(0, to, to + obj.clusters);
    moves.push({ obj, to: to * cs });
  }
  return moves;
}

/** Raises the new places' refcounts, copies, rewrites the pointers, frees the old places: a flush after each step. */
async function moveObjects(storage: Storage, g: Qcow2Graph, batch: Move[]): Promise<void> {
  const cs = g.clusterSize;
  const raise: Array<[number, number]> = [];
  for (const { obj, to } of batch) {
    for (let k = 0; k < obj.clusters; k++) raise.push([to / cs + k, refcountOf(g, obj.at / cs + k)!]);
  }
  await setRefcounts(storage, g, raise);
  await storage.flush();
  for (const { obj, to } of batch) await copyObject(storage, g, obj, to);
  await storage.flush();
  for (const { obj, to } of batch) {
    const delta = to - obj.at;
    for (const site of obj.sites) {
      const at = siteOffset(site);
      const field = new Uint8Array(8);
      await storage.readInto(at, field);
      addToField(field, 0, delta);
      await storage.write(at, field);
    }
  }
  await storage.flush();
  const release: Array<[number, number]> = [];
  for (const m of batch) {
    const from = m.obj.at / cs;
    m.obj.at = m.to;
    for (let k = 0; k < m.obj.clusters; k++) {
      release.push([from + k, 0]);
      g.owner[from + k] = undefined;
      g.owner[m.to / cs + k] = m.obj;
    }
  }
  await setRefcounts(storage, g, release);
  await storage.flush();
}

/** Copies an object's clusters to `to` (a refcount block from memory, where its newest entries are). */
async function copyObject(storage: Storage, g: Qcow2Graph, obj: HostObject, to: number): Promise<void> {
  if (obj.bytes) {
    await storage.write(to, obj.bytes);
    return;
  }
  const span = obj.clusters * g.clusterSize;
  const buffer = new Uint8Array(Math.min(COPY_CHUNK, span));
  for (let pos = 0; pos < span; pos += buffer.length) {
    const chunk = buffer.subarray(0, Math.min(buffer.length, span - pos));
    const n = await storage.readInto(obj.at + pos, chunk);
    if (n < chunk.length) chunk.fill(0, n);
    await storage.write(to + pos, chunk);
  }
}

/** The end of the last cluster in use. */
function dataEnd(g: Qcow2Graph): number {
  let end = g.clusterSize;
  for (const obj of g.objects) end = Math.max(end, obj.at + obj.clusters * g.clusterSize);
  return end;
}

/** Bytes of the clusters in use, the header cluster included. */
function allocatedBytes(g: Qcow2Graph): number {
  let clusters = 1;
  for (const obj of g.objects) clusters += obj.clusters;
  return clusters * g.clusterSize;
}
