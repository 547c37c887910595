/**
 * The clusters a grow with preallocation `falloc` or `full` adds, laid out
 * as qemu's preallocating truncate (qcow2_co_truncate) lays them out: a new
 * refcount area past the last cluster in use, then the data clusters in
 * guest order, one run that the file system allocates in one call
 * (`falloc`: fallocate, no zeros written) or that gets its zeros written
 * (`full`), then the L2 tables that map them, each in the first free
 * cluster. A grow from a size inside a cluster moves that cluster to the
 * head of the run, its bytes copied, as qemu does. With an external data
 * file the entries map guest offsets and the data file's added range is
 * preallocated.
 *
 * Ordering (crash safety): the caller has already written the new size,
 * and the added range reads as zeros without these clusters; their
 * refcounts are raised and their space given (with the moved cluster's
 * bytes) and flushed before the L2 entries that map them, and an entry's
 * old cluster is freed only after the entry is on disk. A crash leaves
 * leaks at worst; a failure before the entries frees the run again.
 */
import { abortError, preallocateRange } from '@img/block';
import type { Storage } from '@img/block';
import { encodeDataRun, type Entry } from './l2-entry.js';
import { PendingWrites } from './pending-writes.js';
import { readRange } from './reader.js';
import type { Qcow2Image } from './core.js';

/** New L2 tables are written this many bytes at a time. */
const TABLE_WINDOW = 4 * 1024 * 1024;

/**
 * Gives the guest range [old, newSize) (a grow just made) preallocated
 * data clusters of zeros (see the module comment). The caller holds the
 * writer exclusively.
 */
export async function preallocateGrow(core: Qcow2Image, old: number, newSize: number, mode: 'falloc' | 'full', signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) throw abortError(signal, 'resize');
  const cs = core.geom.clusterSize;
  const firstCluster = Math.floor(old / cs);
  const count = Math.ceil(newSize / cs) - firstCluster;
  if (count <= 0) return;
  const full = core.entryGeom.extendedL2 ? 0xffffffff : 1;
  if (core.dataFile) {
    // The cluster the old size ends in keeps its entry (its bytes past the old size are zeroed in place).
    await zeroedSpace(core.dataFile, old, newSize - old, mode, signal);
    await core.dataFile.flush();
    const from = Math.ceil(old / cs);
    if (from < firstCluster + count) await linkRun(core, from, firstCluster + count - from, from * cs, { alloc: full, zero: 0 });
    return;
  }
  const { allocator } = core.writer!;
  // qemu's count of L2 tables the refcount area must also cover: one per table's worth of clusters, and one for a head or tail.
  const tables = Math.ceil(count / core.geom.l2Entries) + 1;
  const areaEnd = await allocator.reserveArea(count + tables);
  let host: number;
  if (areaEnd !== undefined && (await allocator.allocateAt(areaEnd, count))) host = areaEnd * cs;
  else {
    // Refcounts that could not be trusted: a run wherever the allocator finds one.
    const pending = new PendingWrites();
    host = await allocator.allocateForData(count, pending);
    await pending.settle();
  }
  try {
    core.overlap?.check(core.file, host, count * cs);
    // The head of a cluster the old size ends in moves with it (qemu's copy on write of the cluster).
    const head = old % cs ? new Uint8Array(old % cs) : undefined;
    if (head) await readRange(core, core, core.active, firstCluster * cs, head);
    await zeroedSpace(core.storage, host, count * cs, mode, signal);
    if (head) await core.storage.write(host, head);
    allocator.noteWritten(host + count * cs);
    await core.writer!.scheduler.barrier();
  } catch (e) {
    // Nothing points at the run yet: it is free again (a failure to free it leaves a leak, not the error reported).
    await allocator.giveBack(host, count * cs);
    throw e;
  }
  // Extended L2 entries, as qemu leaves them: the units of new clusters unallocated (they read as zeros), or all
  // allocated where a backing file would show through; a moved cluster keeps its units (compressed, it had none).
  const covered = Math.min(newSize, core.backing?.size ?? 0) > old;
  const units = { alloc: covered ? full : 0, zero: 0 };
  const moved = (e: Entry): Units => (covered || e.compressed ? { alloc: full, zero: 0 } : { alloc: e.alloc, zero: e.zero });
  await linkRun(core, firstCluster, count, host, units, old % cs && core.entryGeom.extendedL2 ? moved : undefined);
}

/**
 * Makes [offset, offset + length) of `storage` read as zeros with its
 * space given: `full` writes the zeros; `falloc` allocates it (one
 * fallocate where the storage can), after punching what part of it the
 * storage already holds (clusters freed at the end of the file keep their
 * old bytes, which an allocation would leave in place), or writing zeros
 * there where it cannot punch. A failure (a full disk, an abort) cuts the
 * storage back to its size before, as qemu's file driver does.
 */
async function zeroedSpace(storage: Storage, offset: number, length: number, mode: 'falloc' | 'full', signal?: AbortSignal): Promise<void> {
  if (length <= 0) return;
  const before = await storage.size();
  try {
    const within = Math.min(offset + length, before) - offset;
    if (mode === 'falloc' && within > 0 && !(storage.punchHole && (await storage.punchHole(offset, within)))) await preallocateRange(storage, offset, within, 'full', signal);
    await preallocateRange(storage, offset, length, mode, signal);
  } catch (e) {
    if ((await storage.size().catch(() => before)) > before) await storage.truncate(before).catch(() => undefined);
    throw e;
  }
}

/** Extended L2 units of a cluster's entry: allocated ones and ones that read as zeros. */
interface Units {
  alloc: number;
  zero: number;
}

/**
 * Maps guest clusters [firstCluster, firstCluster + count) to the host
 * run from `host`, L2 table by table in guest order: new tables are
 * allocated (each the first free cluster, as qemu allocates them) and
 * hooked up a window at a time; tables already there are changed in place
 * (copied first when a snapshot shares them), and what their entries
 * pointed at is freed. With extended L2 entries, `units` are those of
 * every new cluster, and `head` (a cluster that moved) gives those of the
 * first from its old entry.
 */
async function linkRun(core: Qcow2Image, firstCluster: number, count: number, host: number, units: Units, head?: (old: Entry) => Units): Promise<void> {
  const { map, allocator, scheduler } = core.writer!;
  const cs = core.geom.clusterSize;
  const g = core.entryGeom;
  const perTable = core.geom.l2Entries;
  const end = firstCluster + count;
  const hostOf = (c: number) => host + (c - firstCluster) * cs;
  const unallocated: Entry = { host: undefined, copied: false, compressed: undefined, alloc: 0, zero: 0 };
  /** Fills the entries of clusters [c, stop) (within one table); `old`: the first one's entry before. */
  const fill = (table: Uint8Array, c: number, stop: number, old: Entry): void => {
    let from = c;
    if (c === firstCluster && head) {
      const u = head(old);
      encodeDataRun(table, c % perTable, 1, hostOf(c), g, u.alloc, u.zero);
      from++;
    }
    if (stop > from) encodeDataRun(table, from % perTable, stop - from, hostOf(from), g, units.alloc, units.zero);
  };
  for (let c = firstCluster; c < end;) {
    const l1Index = Math.floor(c / perTable);
    if (map.l2OffsetOf(l1Index) === 0) {
      // A run of tables that do not exist yet, up to a window.
      const batch: Array<{ l1Index: number; c: number; stop: number }> = [];
      for (let i = l1Index; c < end && map.l2OffsetOf(i) === 0 && batch.length * cs < TABLE_WINDOW; i++) {
        const stop = Math.min(end, (i + 1) * perTable);
        batch.push({ l1Index: i, c, stop });
        c = stop;
      }
      const offsets = await allocator.allocateEach(batch.length);
      const built = batch.map((b, k) => {
        const table = new Uint8Array(cs);
        fill(table, b.c, b.stop, unallocated);
        return { l1Index: b.l1Index, offset: offsets[k]!, table };
      });
      await map.installTables(built);
      allocator.noteWritten(Math.max(...offsets) + cs);
      continue;
    }
    const stop = Math.min(end, (l1Index + 1) * perTable);
    const from = c;
    await scheduler.tables.run(l1Index, async () => {
      const { table, offset } = await map.tableFor(l1Index);
      const first = from % perTable;
      const olds: Entry[] = [];
      for (let i = first; i < first + (stop - from); i++) olds.push(map.decode(table, i, offset));
      fill(table, from, stop, olds[0]!);
      await map.writeTableRange(offset, table, first, first + (stop - from) - 1);
      const stale = olds.filter((e) => e.compressed || (e.host !== undefined && !core.dataFile));
      if (stale.length) {
        await scheduler.barrier();
        for (const e of stale) await allocator.releaseEntry(e);
      }
    });
    c = stop;
  }
}
