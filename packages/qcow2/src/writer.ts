/**
 * Guest writes: write, writeZeroes, discard and writeCompressed over the
 * active L1/L2 tables, with copy-on-write from the backing image, from
 * compressed clusters and from clusters shared with snapshots.
 *
 * Ordering (crash safety): a cluster's refcount is raised before anything
 * points at it, its data is written and flushed before the L2 entry that
 * maps it, and an old cluster's refcount is lowered only after the new
 * entry is on disk. Work is done per L2 table under that table's lock;
 * refcounts and the L1 table are changed under one metadata lock. A write
 * that changes no entry writes its data after the lock is released, and
 * anything that changes entries first waits for those (in-flight.ts).
 */
import { concatBytes, readU32Be } from '@img/block';
import type { Storage } from '@img/block';
import { l1EntryOffset } from './mapping.js';
import type { Entry } from './l2-entry.js';
import { ENTRY_COPIED_HI } from './constants.js';
import { loadL2 } from './reader.js';
import { TableWriter, type TableTail } from './table-writer.js';
import { PendingWrites } from './pending-writes.js';
// InFlightWrites is named by the TSDoc links below.
// oxlint-disable-next-line no-unused-vars
import type { ClusterSpan, InFlightWrites } from './in-flight.js';

export type { WriterHooks } from './table-writer.js';

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

/**
 * The writer of an image open for writing: guest writes over the tables
 * {@link TableWriter} keeps private.
 */
export class Qcow2Writer extends TableWriter {
  #mask(a: number, b: number): number {
    if (this.units === 1) return 1;
    const first = Math.floor(a / this.unitSize);
    const last = Math.ceil(b / this.unitSize) - 1;
    let m = 0;
    for (let i = first; i <= last; i++) m |= 1 << i;
    return m >>> 0;
  }

  /** Units wholly inside bytes [a, b). */
  #wholeMask(a: number, b: number): number {
    const first = Math.ceil(a / this.unitSize);
    const end = Math.floor(b / this.unitSize);
    if (this.units === 1) return first === 0 && end === 1 ? 1 : 0;
    let m = 0;
    for (let i = first; i < end; i++) m |= 1 << i;
    return m >>> 0;
  }

  // ---- write ------------------------------------------------------------

  /** Writes `data` at guest `offset`. */
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.perTable(offset, data.length, (l1Index, start, end) => this.#writeInTable(l1Index, start, data.subarray(start - offset, end - offset)));
  }

  /**
   * Starts a write that changes no metadata at once, without queueing for
   * its table's lock: when operations are {@link inOrder}, the write
   * lies in one L2 table that is cached, private and not locked, and every
   * cluster it touches is private, allocated and not a zero cluster. Its
   * data write then runs as one of the {@link InFlightWrites}. Answers
   * undefined when that does not hold (the caller takes {@link write}).
   */
  writeInPlace(offset: number, data: Uint8Array): Promise<void> | undefined {
    const cov = this.s.geom.l2Coverage;
    const l1Index = Math.floor(offset / cov);
    if (!this.inOrder || offset + data.length > (l1Index + 1) * cov || !this.tables.isFree(l1Index)) return undefined;
    return this.#tryInPlace(l1Index, offset, data);
  }

  /** {@link writeInPlace} for a write within table `l1Index`, once nothing but the mapping can stop it. */
  #tryInPlace(l1Index: number, offset: number, data: Uint8Array): Promise<void> | undefined {
    const s = this.s;
    const l1 = this.view.l1;
    if (l1Index * 8 >= l1.length || (readU32Be(l1, l1Index * 8) & ENTRY_COPIED_HI) === 0) return undefined;
    try {
      const tableOffset = l1EntryOffset(l1, l1Index, s.geom.clusterSize, s.file, this.view.l1Offset);
      // Not cached (or still loading): the locked path loads it, and meets a bad table there. Starting
      // the load here would leave a promise that nobody awaits.
      if (s.cache.peek(tableOffset) === undefined) return undefined;
      // A cache hit (this refreshes its place in the LRU order), so no promise.
      const table = loadL2(s, tableOffset, l1Index);
      if (table instanceof Promise) return undefined;
      return this.#inPlace(l1Index, table, tableOffset, offset, data);
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
  #inPlace(l1Index: number, table: Uint8Array, tableOffset: number, offset: number, data: Uint8Array): Promise<void> | undefined {
    const s = this.s;
    const cs = s.geom.clusterSize;
    const end = offset + data.length;
    const spans: ClusterSpan[] = [];
    const pieces: { host: number; bytes: Uint8Array }[] = [];
    for (let pos = offset; pos < end;) {
      const guest = pos - (pos % cs);
      const a = pos - guest;
      const b = Math.min(cs, end - guest);
      const e = this.decode(table, (guest / cs) % s.geom.l2Entries, tableOffset);
      if (e.host === undefined || !e.copied || e.compressed) return undefined;
      const mask = this.#mask(a, b);
      if (((mask & ~e.alloc) | (mask & e.zero)) !== 0) return undefined;
      spans.push({ cluster: guest / cs, a, b });
      pieces.push({ host: e.host + a, bytes: data.subarray(pos - offset, guest + b - offset) });
      pos = guest + b;
    }
    const only = pieces.length === 1 ? pieces[0]! : undefined;
    return this.flights.run(l1Index, spans, only ? () => s.dataStorage.write(only.host, only.bytes) : () => this.#writeRuns(pieces));
  }

  /**
   * One table's share of a write, under its lock. A write that changes no
   * entry (every cluster private, allocated and not a zero cluster) only
   * looks the mapping up here: its data write is returned as the tail and
   * runs after the lock is released (see {@link InFlightWrites}).
   */
  async #writeInTable(l1Index: number, offset: number, data: Uint8Array): Promise<TableTail> {
    const s = this.s;
    const cs = s.geom.clusterSize;
    // Holding the lock from here without a pause: a write that changes no entry is only a lookup.
    const quick = this.#tryInPlace(l1Index, offset, data);
    if (quick) return { after: quick };
    const { table, offset: tableOffset } = await this.tableFor(l1Index);
    const direct = this.#inPlace(l1Index, table, tableOffset, offset, data);
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
      const old = this.decode(table, index, tableOffset);
      const mask = this.#mask(a, b);
      const whole = this.#wholeMask(a, b);
      const priv = old.host !== undefined && old.copied && !old.compressed;
      let next: Entry;
      let spanStart: number;
      let spanEnd: number;
      let fill: boolean;
      if (priv) {
        next = { ...old, alloc: (old.alloc | mask) >>> 0, zero: (old.zero & ~mask) >>> 0 };
        // Units only partly written that hold no data yet need their old content around the new bytes.
        fill = (mask & ~whole & ~old.alloc) >>> 0 !== 0;
        spanStart = fill ? Math.floor(a / this.unitSize) * this.unitSize : a;
        spanEnd = fill ? Math.min(cs, Math.ceil(b / this.unitSize) * this.unitSize) : b;
      } else {
        const keep = old.compressed ? this.full : old.host !== undefined ? old.alloc : 0;
        const alloc = (keep | mask) >>> 0;
        next = { host: undefined, copied: true, compressed: undefined, alloc, zero: (old.compressed ? 0 : old.zero & ~alloc) >>> 0 };
        const first = 31 - Math.clz32((alloc & -alloc) >>> 0);
        const last = 31 - Math.clz32(alloc);
        spanStart = this.units === 1 ? 0 : first * this.unitSize;
        spanEnd = this.units === 1 ? cs : (last + 1) * this.unitSize;
        fill = spanStart < a || spanEnd > b;
        if (!s.dataFile) fresh++;
      }
      plans.push({ index, guest, host: priv ? old.host : s.dataFile ? guest : undefined, spanStart, spanEnd, a, b, fill, next, old, fresh: !priv });
      if (old.host !== undefined || old.compressed) mapped = true;
      pos = guest + b;
    }
    // Entries that map something change below: data writes in flight to this table finish first
    // (they may target a cluster that is about to be freed, or that a later write overlaps).
    if (mapped) await this.flights.drain(l1Index);
    // Allocate every new cluster of this table at once, so that they lie together in the file.
    // Without subclusters every new cluster is written whole below, so the data write itself grows
    // the file and the refcount update can run alongside it (both land before the barrier).
    const pending = new PendingWrites();
    let freshEnd = 0;
    if (fresh) {
      const whole = this.units === 1;
      let at = whole ? await this.allocateForData(fresh, pending) : await this.allocate(fresh);
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
          const within = Math.max(0, Math.min(p.spanEnd, this.view.size - p.guest) - p.spanStart);
          if (within > 0) await this.hooks.read(p.guest + p.spanStart, piece.subarray(0, within));
          piece.set(data.subarray(p.guest + p.a - offset, p.guest + p.b - offset), p.a - p.spanStart);
        }
        return { host: p.host! + (p.fill ? p.spanStart : p.a), bytes: piece };
      }),
    ).catch(async (error: unknown) => {
      await pending.drain();
      throw error;
    });
    pending.add(this.#writeRuns(pieces));
    await pending.settle();
    this.noteWritten(freshEnd);
    // Point the entries at the data once it is on disk.
    let first = -1;
    let last = -1;
    for (const p of plans) {
      const next = { ...p.next, host: p.host, copied: true };
      const changed = p.fresh || next.alloc !== p.old.alloc || next.zero !== p.old.zero;
      if (!changed) continue;
      this.encode(table, p.index, next);
      if (first < 0) first = p.index;
      last = p.index;
    }
    const stale = plans.filter((p) => p.fresh && (p.old.compressed || (p.old.host !== undefined && !s.dataFile)));
    if (first >= 0) {
      await this.hooks.barrier();
      // Nothing to release after it: the entries need not be on disk before the next flush.
      if (stale.length) await this.writeTableRange(tableOffset, table, first, last);
      else this.deferTableRange(tableOffset, table, first, last);
    }
    if (stale.length) {
      await this.hooks.barrier();
      for (const p of stale) await this.releaseEntry(p.old);
    }
    return undefined;
  }

  /** Writes pieces, joining those that are contiguous in the file into one I/O. */
  async #writeRuns(pieces: { host: number; bytes: Uint8Array }[], target: Storage = this.s.dataStorage): Promise<void> {
    const sorted = pieces.filter((p) => p.bytes.length).sort((x, y) => x.host - y.host);
    // The guarded data storage checks its own writes; compressed data goes to the file directly.
    if (target === this.s.storage) for (const p of sorted) this.s.overlap?.check(this.s.file, p.host, p.bytes.length);
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
   * covered units are written with zeros.
   */
  zeroOrDiscard(offset: number, length: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
    return this.perTable(offset, length, (l1Index, start, end) => this.#zeroInTable(l1Index, start, end, mode, mayUnmap));
  }

  /** zeroOrDiscard for use inside {@link exclusive} (it does not wait for the gate that exclusive holds). */
  zeroOrDiscardExclusive(offset: number, length: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
    return this.perTableInner(offset, length, (l1Index, start, end) => this.#zeroInTable(l1Index, start, end, mode, mayUnmap));
  }

  async #zeroInTable(l1Index: number, start: number, end: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
    const s = this.s;
    const cs = s.geom.clusterSize;
    const v3 = s.header.version >= 3;
    const hasBacking = s.backing !== undefined;
    // With a raw data file the data file itself must read as the disk: write real zeros.
    // Version 2 has no zero flag: zeroing over a backing file needs real zeros too.
    if (s.rawDataFile || (mode === 'zero' && !v3 && hasBacking)) {
      await this.#writeZeros(l1Index, [[start, end]]);
      return;
    }
    const l2Offset = l1EntryOffset(this.view.l1, l1Index, cs, s.file, this.view.l1Offset);
    // Nothing mapped by this table: it already reads as zeros (or as the backing file, for a discard).
    if (l2Offset === 0 && (mode === 'discard' || !hasBacking)) return;
    const { table, offset: tableOffset } = await this.tableFor(l1Index);
    await this.flights.drain(l1Index);
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
      const whole = this.#wholeMask(a, guest + b >= this.view.size ? cs : b);
      const index = (guest / cs) % s.geom.l2Entries;
      const old = this.decode(table, index, tableOffset);
      if (whole === 0 || (old.compressed && whole !== this.full)) {
        partial.push([guest + a, guest + b]);
        continue;
      }
      // Bytes outside the whole units are written as zeros.
      const lo = (31 - Math.clz32((whole & -whole) >>> 0)) * this.unitSize;
      const hi = (32 - Math.clz32(whole)) * this.unitSize;
      if (a < lo) partial.push([guest + a, guest + lo]);
      if (hi < b) partial.push([guest + hi, guest + b]);
      const zeroFlag = mode === 'zero' && v3;
      let next: Entry;
      if (old.compressed) {
        next = { host: undefined, copied: false, compressed: undefined, alloc: 0, zero: zeroFlag ? this.full : 0 };
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
      this.encode(table, index, next);
      if (first < 0) first = index;
      last = index;
    }
    if (first >= 0) await this.writeTableRange(tableOffset, table, first, last);
    if (stale.length) {
      await this.hooks.barrier();
      for (const e of stale) await this.releaseEntry(e);
    }
    await this.#writeZeros(l1Index, partial);
  }

  /** Writes real zeros over guest ranges of one table (the caller holds its lock). */
  async #writeZeros(l1Index: number, ranges: Array<[number, number]>): Promise<void> {
    const chunk = 4 * 1024 * 1024;
    for (const [a, b] of ranges) {
      const stop = Math.min(b, this.view.size);
      for (let pos = a; pos < stop; pos += chunk) {
        const tail = await this.#writeInTable(l1Index, pos, new Uint8Array(Math.min(chunk, stop - pos)));
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
  writeCompressedClusters(items: ReadonlyArray<{ guest: number; packed: Uint8Array }>): Promise<void> {
    if (!items.length) return Promise.resolve();
    const first = Math.min(...items.map((i) => i.guest));
    const last = Math.max(...items.map((i) => i.guest));
    return this.perTable(first, last + 1 - first, (l1Index, start, end) =>
      this.#compressedInTable(
        l1Index,
        items.filter((i) => i.guest >= start && i.guest < end),
      ),
    );
  }

  async #compressedInTable(l1Index: number, items: ReadonlyArray<{ guest: number; packed: Uint8Array }>): Promise<void> {
    if (!items.length) return;
    const s = this.s;
    const cs = s.geom.clusterSize;
    const { table, offset: tableOffset } = await this.tableFor(l1Index);
    await this.flights.drain(l1Index);
    const olds = items.map((i) => this.decode(table, (i.guest / cs) % s.geom.l2Entries, tableOffset));
    const hosts = await this.meta.run(async () => {
      const out: number[] = [];
      for (const i of items) out.push(await this.#placeCompressed(i.packed.length));
      return out;
    });
    await this.#writeRuns(
      items.map((i, k) => ({ host: hosts[k]!, bytes: i.packed })),
      s.storage,
    );
    await this.hooks.barrier();
    let lo = Infinity;
    let hi = -1;
    items.forEach((i, k) => {
      const index = (i.guest / cs) % s.geom.l2Entries;
      this.encode(table, index, { host: undefined, copied: false, compressed: { host: hosts[k]!, size: i.packed.length }, alloc: 0, zero: 0 });
      lo = Math.min(lo, index);
      hi = Math.max(hi, index);
    });
    await this.writeTableRange(tableOffset, table, lo, hi);
    const stale = olds.filter((o) => o.compressed || o.host !== undefined);
    if (stale.length) {
      await this.hooks.barrier();
      for (const o of stale) await this.releaseEntry(o);
    }
  }

  /** Finds room for compressed bytes: the tail of the last compressed cluster, or new clusters. Holds the metadata lock. */
  async #placeCompressed(length: number): Promise<number> {
    const cs = this.s.geom.clusterSize;
    const rc = this.rc!;
    const tail = this.ctail;
    const shared = tail ? await rc.get(Math.floor(tail.offset / cs)) : 0;
    // Share the tail cluster only while its refcount can still grow (refcount_bits 1 cannot share).
    if (tail && shared > 0 && shared < rc.maxRefcount) {
      const host = tail.offset;
      if (length <= tail.end - tail.offset) {
        await rc.add(Math.floor(host / cs), 1, 1);
        this.#advanceTail(host + length, tail.end);
        return host;
      }
      // As qemu: the bytes run on into new clusters right after the tail, when those are free, so that
      // compressed clusters pack without a gap (data compressing to more than half a cluster would
      // otherwise take a whole cluster each).
      const more = Math.ceil((length - (tail.end - tail.offset)) / cs);
      if (await rc.allocateAt(tail.end / cs, more)) {
        await rc.add(Math.floor(host / cs), 1, 1);
        await this.growFile();
        this.#advanceTail(host + length, tail.end + more * cs);
        return host;
      }
    }
    const count = Math.ceil(length / cs);
    const host = await rc.allocate(count);
    await this.growFile();
    this.#advanceTail(host + length, host + count * cs);
    return host;
  }

  /**
   * The next compressed cluster starts at the byte after this one, as qemu
   * packs them: descriptors address bytes, and a reader stops at the end of
   * the compressed stream, so the bytes that share its last sector are never
   * taken for its own.
   */
  #advanceTail(used: number, end: number): void {
    this.ctail = used < end ? { offset: used, end } : undefined;
  }
}
