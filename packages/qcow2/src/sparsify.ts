/**
 * sparsifyQcow2: release the data clusters of the active layer that hold
 * only zeros, in place. A released cluster reads the same as before:
 *
 * - version 3: its L2 entry becomes a zero cluster (zero flag, no host
 *   offset), whether or not a backing file lies below, so backing data
 *   under it never shows through;
 * - version 2 without a backing file: the entry becomes unallocated (a
 *   hole reads as zeros);
 * - version 2 with a backing file (no zero flag exists): the entry becomes
 *   unallocated only where the backing file reads zeros too; elsewhere the
 *   cluster stays.
 *
 * Only clusters this layer owns alone change: an L2 table or a data
 * cluster shared with a snapshot (refcount above 1) stays as it is, and
 * so do compressed clusters. compactQcow2 then gives the space back.
 *
 * Crash safety: the changed L2 entries are written first (each one is an
 * aligned 8- or 16-byte field: old or new, both read as zeros), then a
 * flush, then the released clusters' refcounts drop to 0, then a flush. A
 * crash in between leaves leaks only; running it again finishes the job.
 */
import { invalidArg, isAllZero, throwIfAborted, type Disk, type Resolver, type Storage } from '@img/block';
import { readQcow2Graph, refcountOf, setRefcounts, type HostObject, type Qcow2Graph } from './compact-graph.js';
import { INCOMPAT_DATA_FILE, INCOMPAT_EXTENDED_L2 } from './constants.js';
import { openQcow2 } from './open.js';
import { encodeEntry } from './l2-entry.js';
import type { ClusterEntry, EntryGeometry } from './mapping.js';
import { forEachL2Entry, forEachL2Table, l2TableOffsets } from './l2-walk.js';

const FORMAT = 'qcow2';

/** L2 entries looked at, and released, at a time. */
const CHUNK_ENTRIES = 512;

/** The default zero-run granularity (qemu-img convert's -S default). */
export const QCOW2_DEFAULT_MIN_ZERO_RUN = 4096;

/** Options of sparsifyQcow2. */
export interface Qcow2SparsifyOptions {
  /**
   * Shortest run of zero bytes released (a multiple of 512; default 4096,
   * as qemu-img convert -S). A cluster is released whole or not at all:
   * with a run longer than a cluster, only zero clusters in a run of
   * clusters that read as zeros at least this long go.
   */
  minZeroRun?: number;
  /** Opens the backing file of a version 2 image (needed there: zero clusters over non-zero backing data stay). */
  resolver?: Resolver;
  /** Called after each group of L2 entries, with the guest bytes looked at so far and in all. */
  onProgress?: (done: number, total: number) => void;
  /** Stops before the next group of entries (ERR_IMG_ABORTED); what was released stays released. */
  signal?: AbortSignal;
}

/** What sparsifyQcow2 did. */
export interface Qcow2SparsifyResult {
  /** Allocated data clusters of the active layer read. */
  clustersScanned: number;
  /** Clusters released (zero clusters or holes now): their space is free for compactQcow2. */
  clustersReleased: number;
  /** Bytes of the file they held. */
  bytesReleased: number;
  /** Data clusters left alone because a snapshot shares them (or their L2 table). */
  clustersShared: number;
  /** Set when there was nothing to do, saying why. */
  nothingToDo?: string;
}

type Status = 'candidate' | 'zero' | 'other';

/**
 * Releases the all-zero clusters of the qcow2 image in `storage` (see the
 * module comment). The storage must be writable; it is flushed and left
 * open.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('disk.qcow2', { readOnly: false });
 * const r = await sparsifyQcow2(storage, { resolver: fileResolver });
 * await compactQcow2(storage);
 * await storage.close();
 * ```
 */
export async function sparsifyQcow2(storage: Storage, options: Qcow2SparsifyOptions = {}): Promise<Qcow2SparsifyResult> {
  const minZeroRun = options.minZeroRun ?? QCOW2_DEFAULT_MIN_ZERO_RUN;
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < 512 || minZeroRun % 512 !== 0) {
    throw invalidArg(FORMAT, `minZeroRun must be a positive multiple of 512 bytes, not ${minZeroRun}`, { field: 'minZeroRun' });
  }
  const g = await readQcow2Graph(storage);
  const h = g.header;
  const result: Qcow2SparsifyResult = { clustersScanned: 0, clustersReleased: 0, bytesReleased: 0, clustersShared: 0 };
  if ((h.incompatibleFeatures >> BigInt(INCOMPAT_DATA_FILE)) & 1n) {
    return { ...result, nothingToDo: 'the data clusters live in the external data file, not in this file' };
  }
  const extendedL2 = ((h.incompatibleFeatures >> BigInt(INCOMPAT_EXTENDED_L2)) & 1n) === 1n;
  const zeroFlag = h.version >= 3;
  const hasBacking = h.backingFileOffset !== 0 && h.backingFileSize > 0;
  // A version 2 image can only punch holes: the backing file decides where that reads the same. The chain is opened
  // for a version 3 image too (when a resolver is given), so that a backing file that is this very file is refused.
  let top: Disk | undefined;
  if (hasBacking && (!zeroFlag || options.resolver)) {
    top = await openQcow2(keepOpen(storage), { readOnly: true, noDataFile: true, ...(options.resolver ? { resolver: options.resolver } : {}) });
  }
  try {
    const below = top?.backing;
    const cs = g.clusterSize;
    const entrySize = extendedL2 ? 16 : 8;
    const perTable = cs / entrySize;
    const l1 = g.objects.find((o) => o.kind === 'l1');
    const l1Bytes = l1 ? await storage.read(l1.at, h.l1Size * 8) : new Uint8Array(0);
    const tables: Array<{ index: number; obj: HostObject }> = [];
    l2TableOffsets({ l1: l1Bytes, offset: l1?.at ?? 0, entries: h.l1Size }, cs, storage.name, 'raw').forEach((at, i) => {
      if (at !== 0) tables.push({ index: i, obj: g.owner[at / cs]! });
    });
    const total = tables.length * perTable * cs;
    let done = 0;
    let aborted: unknown;
    // Version 2 over a backing file: clusters of zeros kept because a hole there would show the backing file's data.
    const keptOverBacking = { clusters: 0 };
    const geom: EntryGeometry = { clusterBits: h.clusterBits, clusterSize: cs, extendedL2, zeroFlag: zeroFlag && !extendedL2, dataFile: false };
    const source = { storage, file: storage.name, entryGeom: geom };
    // One table at a time: released entries are written back before the next table is read.
    await forEachL2Table(
      source,
      tables.map((t) => t.obj.at),
      async (table, at, k) => {
        const { index, obj } = tables[k]!;
        const shared = refcountOf(g, obj.at / cs)! > 1;
        // Decoded by the codec before any entry changes; an entry that does not decode is left alone.
        const entries = new Array<ClusterEntry | undefined>(perTable);
        forEachL2Entry(source, table, at, (e, j) => {
          entries[j] = e;
        });
        for (let first = 0; first < perTable; first += CHUNK_ENTRIES) {
          try {
            throwIfAborted(options.signal);
          } catch (e) {
            aborted = e;
            return false;
          }
          const count = Math.min(CHUNK_ENTRIES, perTable - first);
          const status: Status[] = [];
          for (let j = first; j < first + count; j++) {
            const guest = (index * perTable + j) * cs;
            const e = entries[j];
            const s = guest >= h.size || !e ? 'other' : await classify(g, storage, e, { zeroFlag, hasBacking, shared, below, guest, result, keptOverBacking });
            status.push(s);
          }
          const release = releasable(status, Math.ceil(minZeroRun / cs));
          if (release.length > 0) {
            await releaseEntries(
              storage,
              g,
              obj,
              table,
              release.map((r) => first + r),
              release.map((r) => (entries[first + r] as { host: number }).host),
              geom,
            );
            result.clustersReleased += release.length;
            result.bytesReleased += release.length * cs;
          }
          done += count * cs;
          options.onProgress?.(done, total);
        }
        return true;
      },
      cs,
    );
    await storage.flush();
    if (aborted) throw aborted;
    if (result.clustersScanned === 0) result.nothingToDo = result.clustersShared > 0 ? 'every allocated cluster is shared with a snapshot' : 'no data cluster is allocated in the active layer';
    else if (result.clustersReleased === 0 && keptOverBacking.clusters > 0) {
      const n = keptOverBacking.clusters;
      result.nothingToDo = `${n === 1 ? 'the one cluster' : `the ${n} clusters`} of zeros ${n === 1 ? 'lies' : 'lie'} over backing file data: a version 2 image has no zero clusters, and a hole would show that data (amended to compat=1.1, version 3, they can become zero clusters)`;
    }
    return result;
  } finally {
    await top?.backing?.close();
  }
}

/** A storage whose close() does nothing (the caller owns it; the read-only view only opens the backing chain). */
function keepOpen(storage: Storage): Storage {
  return new Proxy(storage, {
    get(target, key) {
      if (key === 'close') return () => Promise.resolve();
      const v: unknown = Reflect.get(target, key, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

interface ClassifyContext {
  /** Version 3: zero clusters exist, so a released cluster never shows the backing file. */
  zeroFlag: boolean;
  hasBacking: boolean;
  shared: boolean;
  below: Disk | undefined;
  guest: number;
  result: Qcow2SparsifyResult;
  /** Counts the clusters of zeros kept because the backing file reads otherwise below them (version 2). */
  keptOverBacking: { clusters: number };
}

/** Whether an entry (decoded) may be released (a stored cluster of zeros), already reads as zeros, or neither. */
async function classify(g: Qcow2Graph, storage: Storage, e: ClusterEntry, c: ClassifyContext): Promise<Status> {
  let host = 0;
  switch (e.type) {
    case 'compressed':
      return 'other';
    case 'zero':
      return 'zero';
    // Reads the backing file, or zeros without one.
    case 'unallocated':
      return c.hasBacking ? 'other' : 'zero';
    case 'normal':
      host = e.host;
      break;
    case 'subclusters':
      // Only whole clusters: all subclusters zero, or all allocated.
      if (e.zero === 0xffffffff) return 'zero';
      if (e.alloc !== 0xffffffff || e.zero !== 0 || e.host === undefined) return 'other';
      host = e.host;
      break;
  }
  if (c.shared || refcountOf(g, host / g.clusterSize)! > 1) {
    c.result.clustersShared++;
    return 'other';
  }
  c.result.clustersScanned++;
  const data = new Uint8Array(g.clusterSize);
  const n = await storage.readInto(host, data);
  if (n < data.length) data.fill(0, n);
  if (!isAllZero(data)) return 'other';
  if (!c.zeroFlag && c.hasBacking) {
    // A hole would show the backing file: only where it reads zeros too.
    if (!c.below) return 'other';
    const length = Math.max(0, Math.min(g.clusterSize, c.below.size - c.guest));
    if (length > 0 && !isAllZero(await c.below.read(c.guest, length))) {
      c.keptOverBacking.clusters++;
      return 'other';
    }
  }
  return 'candidate';
}

/** The candidates inside runs of entries that read as zeros at least `minClusters` long. */
function releasable(status: readonly Status[], minClusters: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < status.length;) {
    if (status[i] === 'other') {
      i++;
      continue;
    }
    let j = i;
    while (j < status.length && status[j] !== 'other') j++;
    if (j - i >= minClusters) for (let k = i; k < j; k++) if (status[k] === 'candidate') out.push(k);
    i = j;
  }
  return out;
}

/** Rewrites the entries (zero cluster or hole), flush, then drops the clusters' refcounts to 0 (flushed by the caller). */
async function releaseEntries(storage: Storage, g: Qcow2Graph, obj: HostObject, table: Uint8Array, indexes: number[], hosts: number[], f: EntryGeometry): Promise<void> {
  const entrySize = f.extendedL2 ? 16 : 8;
  const pieces = new Set<number>();
  for (const j of indexes) {
    // Extended L2: every subcluster reads as zeros; standard: the zero flag on version 3, a hole on version 2.
    const zero = f.extendedL2 ? 0xffffffff : f.zeroFlag ? 1 : 0;
    encodeEntry(table, j, { host: undefined, copied: false, compressed: undefined, alloc: 0, zero }, f);
    pieces.add(Math.floor((j * entrySize) / 512));
  }
  for (const p of [...pieces].sort((a, b) => a - b)) await storage.write(obj.at + p * 512, table.subarray(p * 512, (p + 1) * 512));
  await storage.flush();
  await setRefcounts(
    storage,
    g,
    hosts.map((host) => [host / g.clusterSize, 0] as const),
  );
}
