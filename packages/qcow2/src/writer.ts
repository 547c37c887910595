/**
 * Guest writes: write, writeZeroes, discard and writeCompressed over the
 * active L1/L2 tables, with copy-on-write from the backing image, from
 * compressed clusters and from clusters shared with snapshots. Functions
 * over the core; they use its cluster map (cluster-map.ts), allocator
 * (allocator.ts) and scheduler (scheduler.ts).
 *
 * Ordering (crash safety): a cluster's refcount is raised before anything
 * points at it, its data is written and flushed before the L2 entry that
 * maps it, and an old cluster's refcount is lowered only after the new
 * entry is on disk. Work is done per L2 table under that table's lock;
 * refcounts are changed under the allocator's lock. A write that changes
 * no entry writes its data after the lock is released, and anything that
 * changes entries first waits for those (in-flight.ts).
 */
import { concatBytes } from '@img/block';
import type { Storage } from '@img/block';
import type { Entry } from './l2-entry.js';
import { readRange } from './reader.js';
import { loadL2 } from './mapping-view.js';
import type { TableTail } from './scheduler.js';
import { PendingWrites } from './pending-writes.js';
// InFlightWrites is named by the TSDoc links below.
// oxlint-disable-next-line no-unused-vars
import type { ClusterSpan, InFlightWrites } from './in-flight.js';
import type { Qcow2Image, Qcow2WriterParts } from './core.js';

/** The writable parts of an image open for writing. */
function partsOf(core: Qcow2Image): Qcow2WriterParts {
  return core.writer!;
}

/** Allocation units per cluster (subclusters with extended L2 entries), the mask of all of them, and their size. */
function unitsOf(core: Qcow2Image): { units: number; full: number; unitSize: number } {
  const ext = core.entryGeom.extendedL2;
  return { units: ext ? 32 : 1, full: ext ? 0xffffffff : 1, unitSize: core.geom.subclusterSize };
}

/**
 * Writes pieces that follow each other in the file as one I/O: one view
 * when they also follow each other in memory (consecutive clusters of one
 * guest write, the usual case), else one joined copy (pieces padded with
 * old content are few).
 */
function writeRun(target: Storage, run: { host: number; bytes: Uint8Array }[]): Promise<void> {
  const first = run[0]!.bytes;
  if (run.length === 1) return target.write(run[0]!.host, first);
  let end = first.byteOffset + first.length;
  let adjacent = true;
  for (let k = 1; k < run.length && adjacent; k++) {
    const b = run[k]!.bytes;
    adjacent = b.buffer === first.buffer && b.byteOffset === end;
    end += b.length;
  }
  if (adjacent) return target.write(run[0]!.host, new Uint8Array(first.buffer, first.byteOffset, end - first.byteOffset));
  return target.write(run[0]!.host, concatBytes(run.map((p) => p.bytes)));
}

/** Units of a cluster touched by bytes [a, b) of it, as a bit mask. */
function unitMask(core: Qcow2Image, a: number, b: number): number {
  const { units, unitSize } = unitsOf(core);
  if (units === 1) return 1;
  const first = Math.floor(a / unitSize);
  const last = Math.ceil(b / unitSize) - 1;
  let m = 0;
  for (let i = first; i <= last; i++) m |= 1 << i;
  return m >>> 0;
}

/** Units wholly inside bytes [a, b). */
function wholeMask(core: Qcow2Image, a: number, b: number): number {
  const { units, unitSize } = unitsOf(core);
  const first = Math.ceil(a / unitSize);
  const end = Math.floor(b / unitSize);
  if (units === 1) return first === 0 && end === 1 ? 1 : 0;
  let m = 0;
  for (let i = first; i < end; i++) m |= 1 << i;
  return m >>> 0;
}

// ---- write ------------------------------------------------------------

/** Writes `data` at guest `offset`. */
export function writeGuest(core: Qcow2Image, offset: number, data: Uint8Array): Promise<void> {
  return partsOf(core).scheduler.perTable(offset, data.length, (l1Index, start, end) => writeInTable(core, l1Index, start, data.subarray(start - offset, end - offset)));
}

/**
 * Starts a write that changes no metadata at once, without queueing for
 * its table's lock: when operations are {@link inOrder}, the write
 * lies in one L2 table that is cached, private and not locked, and every
 * cluster it touches is private, allocated and not a zero cluster. Its
 * data write then runs as one of the {@link InFlightWrites}. Answers
 * undefined when that does not hold (the caller takes {@link write}).
 */
export function writeInPlace(core: Qcow2Image, offset: number, data: Uint8Array): Promise<void> | undefined {
  const cov = core.geom.l2Coverage;
  const l1Index = Math.floor(offset / cov);
  const { scheduler } = partsOf(core);
  if (!scheduler.inOrder || offset + data.length > (l1Index + 1) * cov || !scheduler.tables.isFree(l1Index)) return undefined;
  return tryInPlace(core, l1Index, offset, data);
}

/** {@link writeInPlace} for a write within table `l1Index`, once nothing but the mapping can stop it. */
function tryInPlace(core: Qcow2Image, l1Index: number, offset: number, data: Uint8Array): Promise<void> | undefined {
  const s = core;
  const { map } = partsOf(core);
  if (!map.isPrivate(l1Index)) return undefined;
  try {
    const tableOffset = map.l2OffsetOf(l1Index);
    // Not cached (or still loading): the locked path loads it, and meets a bad table there. Starting
    // the load here would leave a promise that nobody awaits.
    if (s.cache.peek(tableOffset) === undefined) return undefined;
    // A cache hit (this refreshes its place in the LRU order), so no promise.
    const table = loadL2(s, tableOffset, l1Index);
    if (table instanceof Promise) return undefined;
    return inPlace(core, l1Index, table, tableOffset, offset, data);
  } catch {
    // Corrupt metadata: the locked path meets it again and reports it.
    return undefined;
  }
}

/**
 * The data write of a write into private, allocated, non-zero units of
 * one table, as an in-flight write; undefined if any cluster is not
 * such. Runs without yielding, with the table's lock held or free.
 */
function inPlace(core: Qcow2Image, l1Index: number, table: Uint8Array, tableOffset: number, offset: number, data: Uint8Array): Promise<void> | undefined {
  const s = core;
  const { map, scheduler } = partsOf(core);
  const cs = s.geom.clusterSize;
  const end = offset + data.length;
  const spans: ClusterSpan[] = [];
  const pieces: { host: number; bytes: Uint8Array }[] = [];
  for (let pos = offset; pos < end;) {
    const guest = pos - (pos % cs);
    const a = pos - guest;
    const b = Math.min(cs, end - guest);
    const e = map.decode(table, (guest / cs) % s.geom.l2Entries, tableOffset);
    if (e.host === undefined || !e.copied || e.compressed) return undefined;
    const mask = unitMask(core, a, b);
    if (((mask & ~e.alloc) | (mask & e.zero)) !== 0) return undefined;
    spans.push({ cluster: guest / cs, a, b });
    pieces.push({ host: e.host + a, bytes: data.subarray(pos - offset, guest + b - offset) });
    pos = guest + b;
  }
  const only = pieces.length === 1 ? pieces[0]! : undefined;
  return scheduler.flights.run(l1Index, spans, only ? () => s.dataStorage.write(only.host, only.bytes) : () => writeRuns(core, pieces));
}

/**
 * One table's share of a write, under its lock. A write that changes no
 * entry (every cluster private, allocated and not a zero cluster) only
 * looks the mapping up here: its data write is returned as the tail and
 * runs after the lock is released (see {@link InFlightWrites}).
 */
async function writeInTable(core: Qcow2Image, l1Index: number, offset: number, data: Uint8Array): Promise<TableTail> {
  const s = core;
  const { map, allocator, scheduler } = partsOf(core);
  const { units, full, unitSize } = unitsOf(core);
  const cs = s.geom.clusterSize;
  // Holding the lock from here without a pause: a write that changes no entry is only a lookup.
  const quick = tryInPlace(core, l1Index, offset, data);
  if (quick) return { after: quick };
  const { table, offset: tableOffset } = await map.tableFor(l1Index);
  const direct = inPlace(core, l1Index, table, tableOffset, offset, data);
  if (direct) return { after: direct };
  interface Plan {
    index: number;
    guest: number;
    host: number | undefined;
    spanStart: number;
    spanEnd: number;
    a: number;
    b: number;
    fill: boolean;
    next: Entry;
    old: Entry;
    fresh: boolean;
  }
  const plans: Plan[] = [];
  let fresh = 0;
  let mapped = false;
  for (let pos = offset; pos < offset + data.length;) {
    const guest = Math.floor(pos / cs) * cs;
    const a = pos - guest;
    const b = Math.min(cs, offset + data.length - guest);
    const index = (guest / cs) % s.geom.l2Entries;
    const old = map.decode(table, index, tableOffset);
    const mask = unitMask(core, a, b);
    const whole = wholeMask(core, a, b);
    const priv = old.host !== undefined && old.copied && !old.compressed;
    let next: Entry;
    let spanStart: number;
    let spanEnd: number;
    let fill: boolean;
    if (priv) {
      next = { ...old, alloc: (old.alloc | mask) >>> 0, zero: (old.zero & ~mask) >>> 0 };
      // Units only partly written that hold no data yet need their old content around the new bytes.
      fill = (mask & ~whole & ~old.alloc) >>> 0 !== 0;
      spanStart = fill ? Math.floor(a / unitSize) * unitSize : a;
      spanEnd = fill ? Math.min(cs, Math.ceil(b / unitSize) * unitSize) : b;
    } else {
      const keep = old.compressed ? full : old.host !== undefined ? old.alloc : 0;
      const alloc = (keep | mask) >>> 0;
      next = { host: undefined, copied: true, compressed: undefined, alloc, zero: (old.compressed ? 0 : old.zero & ~alloc) >>> 0 };
      const first = 31 - Math.clz32((alloc & -alloc) >>> 0);
      const last = 31 - Math.clz32(alloc);
      spanStart = units === 1 ? 0 : first * unitSize;
      spanEnd = units === 1 ? cs : (last + 1) * unitSize;
      fill = spanStart < a || spanEnd > b;
      if (!s.dataFile) fresh++;
    }
    plans.push({ index, guest, host: priv ? old.host : s.dataFile ? guest : undefined, spanStart, spanEnd, a, b, fill, next, old, fresh: !priv });
    if (old.host !== undefined || old.compressed) mapped = true;
    pos = guest + b;
  }
  // Entries that map something change below: data writes in flight to this table finish first
  // (they may target a cluster that is about to be freed, or that a later write overlaps).
  if (mapped) await scheduler.flights.drain(l1Index);
  // Allocate every new cluster of this table at once, so that they lie together in the file.
  // Without subclusters every new cluster is written whole below, so the data write itself grows
  // the file and the refcount update can run alongside it (both land before the barrier).
  const pending = new PendingWrites();
  let freshEnd = 0;
  let freshStart = -1;
  if (fresh) {
    const whole = units === 1;
    let at = whole ? await allocator.allocateForData(fresh, pending) : await allocator.allocate(fresh);
    freshStart = at;
    for (const p of plans)
      if (p.fresh && !s.dataFile) {
        p.host = at;
        at += cs;
      }
    if (whole) freshEnd = at;
  }
  // Build the bytes: new data, with old content around it where a unit is only partly written.
  // The refcount update runs meanwhile; should the building fail, it lands before the error is reported.
  const pieces = await Promise.all(
    plans.map(async (p) => {
      const piece = p.fill ? new Uint8Array(p.spanEnd - p.spanStart) : data.subarray(p.guest + p.a - offset, p.guest + p.b - offset);
      if (p.fill) {
        const within = Math.max(0, Math.min(p.spanEnd, core.active.size - p.guest) - p.spanStart);
        if (within > 0) await readRange(core, core, core.active, p.guest + p.spanStart, piece.subarray(0, within));
        piece.set(data.subarray(p.guest + p.a - offset, p.guest + p.b - offset), p.a - p.spanStart);
      }
      return { host: p.host! + (p.fill ? p.spanStart : p.a), bytes: piece };
    }),
  ).catch(async (error: unknown) => {
    await pending.drain();
    if (freshStart >= 0) await allocator.giveBack(freshStart, fresh * cs);
    throw error;
  });
  pending.add(writeRuns(core, pieces));
  try {
    await pending.settle();
  } catch (error) {
    // The data never reached its clusters and nothing points at them yet: they go back (Allocator.giveBack).
    if (freshStart >= 0) await allocator.giveBack(freshStart, fresh * cs);
    throw error;
  }
  allocator.noteWritten(freshEnd);
  // Point the entries at the data once it is on disk.
  let first = -1;
  let last = -1;
  for (const p of plans) {
    const next = { ...p.next, host: p.host, copied: true };
    const changed = p.fresh || next.alloc !== p.old.alloc || next.zero !== p.old.zero;
    if (!changed) continue;
    map.encode(table, p.index, next);
    if (first < 0) first = p.index;
    last = p.index;
  }
  const stale = plans.filter((p) => p.fresh && (p.old.compressed || (p.old.host !== undefined && !s.dataFile)));
  if (first >= 0) {
    if (stale.length) {
      await scheduler.barrier();
      await map.writeTableRange(tableOffset, table, first, last);
    } else {
      // Nothing to release after it: the entries land after the next barrier, shared with the writes around this one.
      map.queueTableRange(tableOffset, table, first, last);
    }
  }
  if (stale.length) {
    await scheduler.barrier();
    await allocator.releaseEntries(stale.map((p) => p.old));
  }
  return undefined;
}

/** Writes pieces, joining those that are contiguous in the file into one I/O. */
async function writeRuns(core: Qcow2Image, pieces: { host: number; bytes: Uint8Array }[], target: Storage = core.dataStorage): Promise<void> {
  const sorted = pieces.filter((p) => p.bytes.length).sort((x, y) => x.host - y.host);
  // The guarded data storage checks its own writes; compressed data goes to the file directly.
  if (target === core.storage) for (const p of sorted) core.overlap?.check(core.file, p.host, p.bytes.length);
  const writes: Promise<void>[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    let end = sorted[i]!.host + sorted[i]!.bytes.length;
    let size = sorted[i]!.bytes.length;
    while (j < sorted.length && sorted[j]!.host === end && size < 16 * 1024 * 1024) {
      end += sorted[j]!.bytes.length;
      size += sorted[j]!.bytes.length;
      j++;
    }
    writes.push(writeRun(target, sorted.slice(i, j)));
    i = j;
  }
  await Promise.all(writes);
}

// ---- zeroes and discard --------------------------------------------

/**
 * Makes [offset, offset+length) read as zeros (`zero`) or as the backing
 * image / zeros (`discard`). Whole units change entries only; partly
 * covered units are written with zeros unless they already read as asked
 * (see alreadyReads).
 */
export function zeroOrDiscardGuest(core: Qcow2Image, offset: number, length: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
  return partsOf(core).scheduler.perTable(offset, length, (l1Index, start, end) => zeroInTable(core, l1Index, start, end, mode, mayUnmap));
}

/** zeroOrDiscard for use inside {@link exclusive} (it does not wait for the gate that exclusive holds). */
export function zeroOrDiscardExclusive(core: Qcow2Image, offset: number, length: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
  return partsOf(core).scheduler.perTableInner(offset, length, (l1Index, start, end) => zeroInTable(core, l1Index, start, end, mode, mayUnmap));
}

async function zeroInTable(core: Qcow2Image, l1Index: number, start: number, end: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
  const s = core;
  const { map, allocator, scheduler } = partsOf(core);
  const { full, unitSize } = unitsOf(core);
  const cs = s.geom.clusterSize;
  const v3 = s.header.version >= 3;
  const hasBacking = s.backing !== undefined;
  // With a raw data file the data file itself must read as the disk: write real zeros.
  // Version 2 has no zero flag: zeroing over a backing file needs real zeros too.
  if (s.rawDataFile || (mode === 'zero' && !v3 && hasBacking)) {
    await writeZeros(core, l1Index, [[start, end]]);
    return;
  }
  const l2Offset = map.l2OffsetOf(l1Index);
  // Nothing mapped by this table: it already reads as zeros (or as the backing file, for a discard).
  if (l2Offset === 0 && (mode === 'discard' || !hasBacking)) return;
  const { table, offset: tableOffset } = await map.tableFor(l1Index);
  await scheduler.flights.drain(l1Index);
  const partial: Array<[number, number]> = [];
  const stale: Entry[] = [];
  let first = -1;
  let last = -1;
  for (let pos = start; pos < end;) {
    const guest = Math.floor(pos / cs) * cs;
    const a = pos - guest;
    const b = Math.min(cs, end - guest);
    pos = guest + b;
    // In the last cluster of a disk whose size is not a multiple of it, bytes past the end count as covered.
    const whole = wholeMask(core, a, guest + b >= core.active.size ? cs : b);
    const index = (guest / cs) % s.geom.l2Entries;
    const old = map.decode(table, index, tableOffset);
    // Bytes of units only partly covered are written as zeros, unless they already read as asked.
    const part = (from: number, to: number): void => {
      if (!alreadyReads(old, unitMask(core, from, to), mode, hasBacking)) partial.push([guest + from, guest + to]);
    };
    if (whole === 0 || (old.compressed && whole !== full)) {
      part(a, b);
      continue;
    }
    const lo = (31 - Math.clz32((whole & -whole) >>> 0)) * unitSize;
    const hi = (32 - Math.clz32(whole)) * unitSize;
    if (a < lo) part(a, lo);
    if (hi < b) part(hi, b);
    const zeroFlag = mode === 'zero' && v3;
    let next: Entry;
    if (old.compressed) {
      next = { host: undefined, copied: false, compressed: undefined, alloc: 0, zero: zeroFlag ? full : 0 };
      stale.push(old);
    } else {
      const alloc = (old.alloc & ~whole) >>> 0;
      const zero = zeroFlag ? (old.zero | whole) >>> 0 : (old.zero & ~whole) >>> 0;
      next = { ...old, alloc, zero };
      // Keep the host cluster while it holds data, or as a preallocated zero cluster when asked not to unmap.
      const keep = alloc !== 0 || (zeroFlag && !mayUnmap && old.copied) || s.dataFile !== undefined;
      if (old.host !== undefined && !keep) {
        next.host = undefined;
        next.copied = false;
        stale.push(old);
      }
      if (next.alloc === old.alloc && next.zero === old.zero && next.host === old.host) continue;
    }
    map.encode(table, index, next);
    if (first < 0) first = index;
    last = index;
  }
  if (first >= 0) await map.writeTableRange(tableOffset, table, first, last);
  if (stale.length) {
    await scheduler.barrier();
    await allocator.releaseEntries(stale);
  }
  await writeZeros(core, l1Index, partial);
}

/**
 * Whether the units `mask` of a cluster whose entry is `old` already read
 * as a zero (`zero`) or discard (`discard`: zeros or the backing file's
 * bytes) of them asks: all unallocated and not compressed, and for a zero
 * either marked zero or with no backing file below. Such bytes need no
 * write (qemu-img leaves them too); writing them would allocate a cluster
 * to hold zeros.
 */
function alreadyReads(old: Entry, mask: number, mode: 'zero' | 'discard', hasBacking: boolean): boolean {
  if (old.compressed || (old.alloc & mask) !== 0) return false;
  return mode === 'discard' || !hasBacking || (old.zero & mask) >>> 0 === mask;
}

/** Writes real zeros over guest ranges of one table (the caller holds its lock). */
async function writeZeros(core: Qcow2Image, l1Index: number, ranges: Array<[number, number]>): Promise<void> {
  const chunk = 4 * 1024 * 1024;
  for (const [a, b] of ranges) {
    const stop = Math.min(b, core.active.size);
    for (let pos = a; pos < stop; pos += chunk) {
      const tail = await writeInTable(core, l1Index, pos, new Uint8Array(Math.min(chunk, stop - pos)));
      if (tail) await tail.after;
    }
  }
}

// ---- compressed -----------------------------------------------------

/**
 * Stores compressed clusters: `guest` is a cluster offset, `packed` its
 * compressed bytes (shorter than a cluster). Per L2 table: the bytes are
 * packed together and written, then the entries, with one barrier each.
 */
export function writeCompressedClusters(core: Qcow2Image, items: ReadonlyArray<{ guest: number; packed: Uint8Array }>): Promise<void> {
  if (!items.length) return Promise.resolve();
  const first = Math.min(...items.map((i) => i.guest));
  const last = Math.max(...items.map((i) => i.guest));
  return partsOf(core).scheduler.perTable(first, last + 1 - first, (l1Index, start, end) =>
    compressedInTable(
      core,
      l1Index,
      items.filter((i) => i.guest >= start && i.guest < end),
    ),
  );
}

async function compressedInTable(core: Qcow2Image, l1Index: number, items: ReadonlyArray<{ guest: number; packed: Uint8Array }>): Promise<void> {
  if (!items.length) return;
  const s = core;
  const { map, allocator, scheduler } = partsOf(core);
  const cs = s.geom.clusterSize;
  const { table, offset: tableOffset } = await map.tableFor(l1Index);
  await scheduler.flights.drain(l1Index);
  const olds = items.map((i) => map.decode(table, (i.guest / cs) % s.geom.l2Entries, tableOffset));
  const hosts = await allocator.placeCompressed(items.map((i) => i.packed.length));
  try {
    await writeRuns(
      core,
      items.map((i, k) => ({ host: hosts[k]!, bytes: i.packed })),
      s.storage,
    );
    await scheduler.barrier();
  } catch (error) {
    // No entry names the bytes yet: their references go back.
    for (let k = 0; k < items.length; k++) await allocator.giveBack(hosts[k]!, items[k]!.packed.length);
    throw error;
  }
  let lo = Infinity;
  let hi = -1;
  items.forEach((i, k) => {
    const index = (i.guest / cs) % s.geom.l2Entries;
    map.encode(table, index, { host: undefined, copied: false, compressed: { host: hosts[k]!, size: i.packed.length }, alloc: 0, zero: 0 });
    lo = Math.min(lo, index);
    hi = Math.max(hi, index);
  });
  await map.writeTableRange(tableOffset, table, lo, hi);
  const stale = olds.filter((o) => o.compressed || o.host !== undefined);
  if (stale.length) {
    await scheduler.barrier();
    await allocator.releaseEntries(stale);
  }
}
