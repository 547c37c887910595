/**
 * The check of an open image (checkState; checkQcow2 in check-qcow2.ts
 * opens the image for it, open.ts repairs with it): qemu-img check for
 * qcow2. Counts the references to every
 * host cluster from all metadata (header, L1/L2 tables of the active
 * layer and of every snapshot, refcount structures, snapshot table,
 * bitmaps), compares them with the stored refcounts and the COPIED flags,
 * and repairs leaks (or everything) on request.
 */
import { corrupt, readOnlyError, unsupported, readU32Be, writeU32Be, hex } from '@img/block';
import type { CheckResult } from '@img/block';
import { entryOffset, setEntryCopied } from './mapping.js';
import type { MappingView } from './mapping-view.js';
import { readRefcount, type Refcounts } from './refcount.js';
import { OVERLAP, overlapKindName } from './overlap.js';
import { captureDataOnMetadata, mayHaveDataOnMetadata, repairSharing } from './check-repair.js';
import { findExtension, parseBitmapsExtension } from './extensions.js';
import { snapshotEntrySize } from './snapshot.js';
import { bitmapRanges } from './bitmaps.js';
import { ENTRY_COPIED_HI, EXT_BITMAPS } from './constants.js';
import type { Qcow2Image } from './core.js';
import { entryHex, forEachL1Entry, forEachL2Entry, forEachL2Table, l1EntryCopied, l1FlagsWithoutOffset, snapshotL1Tables } from './l2-walk.js';

const FORMAT = 'qcow2';
/** Reserved bits 0-8 of a refcount table entry (the low half). */
const REFT_RESERVED_LO = 0x1ff;
/** Largest number of host clusters a check will count (5 bytes each: 320 MiB at most). */
const MAX_CHECK_CLUSTERS = 64 * 1024 * 1024;
/** Largest number of distinct L2 tables (all layers together) a check will count: 24 bytes each, 192 MiB at most. */
const MAX_CHECK_L2_TABLES = 8 * 1024 * 1024;

interface CopiedFix {
  /** Host offset of the 8-byte entry to rewrite. */
  at: number;
  set: boolean;
  /** The host cluster the entry points at. */
  cluster: number;
  /** The entry as stored, in hex (as qemu-img check prints it). */
  raw: string;
  /** For an L1 entry, its index (qemu-img names L1 entries by index, L2 entries by value). */
  l1Index?: number;
  /** The cluster's stored refcount, filled in by the tally (for the message). */
  refcount?: number;
}

/** The line qemu-img check prints for a COPIED flag that disagrees with the refcount (verb: ERROR, or Repairing when fixed). */
function copiedLine(f: CopiedFix, verb: 'ERROR' | 'Repairing'): string {
  const rc = f.refcount ?? (f.set ? 1 : 0);
  return f.l1Index !== undefined ? `${verb} OFLAG_COPIED L2 cluster: l1_index=${f.l1Index} l1_entry=${f.raw} refcount=${rc}` : `${verb} OFLAG_COPIED data cluster: l2_entry=${f.raw} refcount=${rc}`;
}

interface Scan {
  refs: Uint32Array;
  corruptions: number;
  checkErrors: number;
  messages: string[];
  allocated: number;
  fragmented: number;
  compressed: number;
  /** COPIED flags of the active layer that disagree with the stored refcounts (counted in `corruptions`). */
  copiedFixes: CopiedFix[];
  /** File offsets of active L1 entries past the virtual size that point at an L2 table (cleared by repair 'all'). */
  pastSizeL1: number[];
  /**
   * L1 entries (active and snapshots) that qemu-img check follows and this scan does not: entries past the virtual
   * size, and entries of flags without an offset (qemu reads the header cluster as their L2 table, so the clusters its
   * words name count as referenced there). What they reach may look leaked here but is referenced for qemu.
   */
  unfollowedL1: number;
  /** Active L1 and L2 entries with reserved bits set, flags without an offset, or COPIED on a compressed descriptor (counted in `corruptions`; cleared by repair 'all'). */
  reservedBits: ReservedBitsFix[];
  /** Refcount table entries (index, block offset) of blocks inside the file, for the rule that each is used once. */
  refcountBlocks: Array<{ index: number; offset: number }>;
}

/** An entry whose bits under `hiMask`/`loMask` (the 32-bit halves) repair 'all' clears. */
interface ReservedBitsFix {
  at: number;
  hiMask: number;
  loMask: number;
  /** The entry is one of the refcount table (the others are L1 and L2 entries). */
  table?: 'refcount';
}

/**
 * Reserved bits of the spec's entries, as qemu-img check counts them
 * (one corruption per entry): L1 entries bits 0-8 and 56-62; standard L2
 * entries bits 1-8 and 56-61 (compressed descriptors use those bits).
 */
const L1_RESERVED_HI = 0x7f000000;
const L1_RESERVED_LO = 0x000001ff;
const L2_RESERVED_HI = 0x3f000000;
const L2_RESERVED_LO = 0x000001fe;

/** Messages kept per check (the counts are always complete). */
const MAX_MESSAGES = 1000;

/** A growable Float64Array (memory follows the entries pushed, 8 bytes each). */
class NumberList {
  items = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.items.length) {
      const next = new Float64Array(this.items.length * 2);
      next.set(this.items);
      this.items = next;
    }
    this.items[this.length++] = v;
  }
  sorted(): Float64Array {
    return this.items.subarray(0, this.length).sort();
  }
}

/**
 * The distinct L2 tables of all layers, sorted, with how many L1 entries
 * point at each (all layers, and the active layer alone). Each layer is
 * merged in as it is read, so memory follows distinct tables, not the
 * sum of every snapshot's L1 entries.
 */
class L2Tables {
  clusters = new Float64Array(0);
  times = new Float64Array(0);
  activeTimes = new Float64Array(0);
  /** Merges one layer's references (cluster numbers, any order). */
  merge(layer: NumberList, active: boolean, file: string | undefined): void {
    const add = layer.sorted();
    const n = this.clusters.length;
    const out = new L2Tables();
    let distinct = 0;
    for (let i = 0; i < add.length; i++) if (i === 0 || add[i] !== add[i - 1]) distinct++;
    const cap = n + distinct;
    out.clusters = new Float64Array(cap);
    out.times = new Float64Array(cap);
    out.activeTimes = new Float64Array(cap);
    let a = 0;
    let b = 0;
    let m = 0;
    while (a < n || b < add.length) {
      const ca = a < n ? this.clusters[a]! : Infinity;
      const cb = b < add.length ? add[b]! : Infinity;
      const c = Math.min(ca, cb);
      out.clusters[m] = c;
      if (ca === c) {
        out.times[m] = this.times[a]!;
        out.activeTimes[m] = this.activeTimes[a]!;
        a++;
      }
      for (; b < add.length && add[b] === c; b++) {
        out.times[m]!++;
        if (active) out.activeTimes[m]!++;
      }
      m++;
    }
    if (m > MAX_CHECK_L2_TABLES) {
      throw unsupported(FORMAT, file, `too many distinct L2 tables to check (${m}, at most ${MAX_CHECK_L2_TABLES})`, { field: 'l1_size' });
    }
    this.clusters = out.clusters.subarray(0, m);
    this.times = out.times.subarray(0, m);
    this.activeTimes = out.activeTimes.subarray(0, m);
  }
}

/** Which clusters have a stored refcount of exactly 1 (a byte per cluster), for the COPIED checks. */
async function storedOnes(s: Qcow2Image, n: number): Promise<Uint8Array> {
  const cs = s.geom.clusterSize;
  const bits = s.geom.refcountBits;
  const perBlock = (cs * 8) / bits;
  const h = s.header;
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  const isOne = new Uint8Array(n);
  const block = new Uint8Array(cs);
  for (let b = 0; b * perBlock < n && (b + 1) * 8 <= rt.length; b++) {
    const off = entryOffset(readU32Be(rt, b * 8), readU32Be(rt, b * 8 + 4));
    if (!off || off % cs || off + cs > s.fileSize) continue;
    await s.storage.readInto(off, block);
    for (let k = 0; k < perBlock && b * perBlock + k < n; k++) if (readRefcount(block, k, bits) === 1) isOne[b * perBlock + k] = 1;
  }
  return isOne;
}

/**
 * Counts references to every host cluster. Memory follows metadata bytes,
 * not references: each distinct L2 table is read once and its entries
 * counted with the number of L1 entries that point at it.
 */
async function scan(s: Qcow2Image, view: MappingView): Promise<Scan> {
  const cs = s.geom.clusterSize;
  const nClusters = Math.ceil(s.fileSize / cs);
  if (nClusters > MAX_CHECK_CLUSTERS) {
    throw unsupported(FORMAT, s.file, `file too large to check (${nClusters} clusters, at most ${MAX_CHECK_CLUSTERS})`, { field: 'file size', actual: s.fileSize });
  }
  const r: Scan = { refs: new Uint32Array(nClusters), corruptions: 0, checkErrors: 0, messages: [], allocated: 0, fragmented: 0, compressed: 0, copiedFixes: [], pastSizeL1: [], unfollowedL1: 0, reservedBits: [], refcountBlocks: [] };
  const say = (m: string) => {
    if (r.messages.length < MAX_MESSAGES) r.messages.push(m);
  };
  const ref = (offset: number, bytes: number, what: string, times = 1) => {
    if (bytes <= 0) return;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + bytes - 1) / cs);
    for (let c = first; c <= last; c++) {
      if (c >= nClusters) {
        r.corruptions++;
        say(`ERROR ${what} at ${hex(c * cs)} lies past the end of the file`);
        continue;
      }
      r.refs[c] = Math.min(0xffffffff, r.refs[c]! + times);
    }
  };
  const isOne = await storedOnes(s, nClusters);
  // COPIED must be set exactly when the refcount is 1 (implicit: external data file clusters are never shared).
  // Reported by the tally after the refcounts, in qemu-img check's order.
  const copied = (at: number, cluster: number, isSet: boolean, implicit: boolean, raw: () => string, l1Index?: number) => {
    // A cluster past the end of the file is reported as such; its stored refcount is not read (only the file's
    // clusters are), so its COPIED flag is not judged either: repair all would otherwise flip it against a refcount
    // it never saw (qemu-img check judges it against that refcount and then counts the flip as a corruption).
    if (!implicit && cluster >= nClusters) return;
    const one = implicit || isOne[cluster] === 1;
    if (one === isSet) return;
    r.corruptions++;
    r.copiedFixes.push({ at, set: one, cluster, raw: raw(), l1Index, refcount: implicit ? 1 : undefined });
  };
  const h = s.header;
  ref(0, cs, 'header');
  ref(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  const rtBytes = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rtBytes);
  for (let i = 0; i < rtBytes.length / 8; i++) {
    const off = entryOffset(readU32Be(rtBytes, i * 8), readU32Be(rtBytes, i * 8 + 4));
    if (off) ref(off, cs, 'refcount block');
    if (off && off % cs === 0 && off + cs <= s.fileSize) r.refcountBlocks.push({ index: i, offset: off });
    // Bits 0-8 are reserved (spec: "Refcount table"); qemu-img check counts an entry that sets any.
    if ((readU32Be(rtBytes, i * 8 + 4) & REFT_RESERVED_LO) !== 0) {
      r.corruptions++;
      say(`ERROR refcount table entry ${i} at ${hex(h.refcountTableOffset + i * 8)} has reserved bits set: ${entryHex(rtBytes, i * 8)}`);
      r.reservedBits.push({ at: h.refcountTableOffset + i * 8, hiMask: 0, loMask: REFT_RESERVED_LO, table: 'refcount' });
    }
  }
  if (h.nbSnapshots)
    ref(
      h.snapshotsOffset,
      s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0),
      'snapshot table',
    );
  // Bitmaps: directory, bitmap tables and their data clusters.
  const bm = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  if (bm) for (const b of await bitmapRanges(s.storage, bm, s.fileSize, cs)) ref(b.offset, b.bytes, b.what);

  // L1 tables of every layer, merged into the distinct L2 tables as each is read.
  const tables = new L2Tables();
  const readL1Refs = (l1: Uint8Array, l1Offset: number, l1Size: number, active: boolean, layer: string, size: number | undefined) => {
    const inUse = size === undefined ? l1Size : Math.ceil(size / s.geom.l2Coverage);
    ref(l1Offset, l1Size * 8, 'L1 table');
    const keys = new NumberList();
    const t = { l1, offset: l1Offset, entries: l1Size };
    // qemu-img check follows an entry of flags without an offset to a "table" at 0 (the header) and counts reserved bits.
    for (let i = 0; i < Math.min(l1Size, l1.length / 8); i++) {
      const hi = readU32Be(l1, i * 8);
      const lo = readU32Be(l1, i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const noOffset = l1FlagsWithoutOffset(l1, i);
      if (!noOffset && (hi & L1_RESERVED_HI) === 0 && (lo & L1_RESERVED_LO) === 0) continue;
      r.corruptions++;
      say(`ERROR ${layer} L1 entry ${i} at ${hex(l1Offset + i * 8)} ${noOffset ? 'has flags but no L2 table offset' : 'has reserved bits set'}: ${entryHex(l1, i * 8)}`);
      if (active) r.reservedBits.push(noOffset ? { at: l1Offset + i * 8, hiMask: 0xffffffff, loMask: 0xffffffff } : { at: l1Offset + i * 8, hiMask: L1_RESERVED_HI, loMask: L1_RESERVED_LO });
      if (noOffset) r.unfollowedL1++;
    }
    forEachL1Entry(
      t,
      cs,
      s.file,
      (l2Offset, i) => {
        if (i >= inUse) {
          // Past the virtual size nothing reads it: reported, not followed (its clusters then show as leaked).
          r.corruptions++;
          say(`ERROR ${layer} L1 entry ${i} at ${hex(l1Offset + i * 8)} points at an L2 table (${hex(l2Offset)}) past the virtual size`);
          if (active) r.pastSizeL1.push(l1Offset + i * 8);
          r.unfollowedL1++;
          return;
        }
        ref(l2Offset, cs, 'L2 table');
        if (active) copied(l1Offset + i * 8, l2Offset / cs, l1EntryCopied(t, i), false, () => entryHex(l1, i * 8), i);
        keys.push(l2Offset / cs);
      },
      (e) => {
        r.corruptions++;
        say(`ERROR ${e.message}`);
      },
    );
    tables.merge(keys, active, s.file);
  };
  readL1Refs(view.l1, view.l1Offset, h.l1Size, true, 'active', h.size);
  for (const t of await snapshotL1Tables(s)) readL1Refs(t.l1, t.offset, t.entries, false, `snapshot ${t.snapshot!.id}`, t.snapshot!.diskSize);

  // Each distinct L2 table in the order the merge left them; the ones outside the file are reported where they come.
  const n = tables.clusters.length;
  let reported = 0;
  const reportUpTo = (end: number) => {
    for (; reported < end; reported++) {
      const l2Offset = tables.clusters[reported]! * cs;
      const activeTimes = tables.activeTimes[reported]!;
      // Counted through its refcount (too low, or COPIED wrong) as qemu-img check counts it; named here.
      if (activeTimes > 1) say(`Warning: L2 table at ${hex(l2Offset)} is shared by ${activeTimes} entries of the active L1 table`);
      if (l2Offset < cs || l2Offset + cs > s.fileSize) {
        r.corruptions += tables.times[reported]!;
        say(`ERROR L2 table at ${hex(l2Offset)} overlaps the header or lies past the end of the file`);
      }
    }
  };
  const inFile: number[] = [];
  const indexOf: number[] = [];
  for (let t = 0; t < n; t++) {
    const l2Offset = tables.clusters[t]! * cs;
    if (l2Offset < cs || l2Offset + cs > s.fileSize) continue;
    inFile.push(l2Offset);
    indexOf.push(t);
  }
  await forEachL2Table(s, inFile, (table, l2Offset, k) => {
    const t = indexOf[k]!;
    reportUpTo(t + 1);
    const times = tables.times[t]!;
    const activeTimes = tables.activeTimes[t]!;
    // Fragmentation is counted within each L2 table, as qemu-img check does.
    let nextContiguous = 0;
    forEachL2Entry(
      s,
      table,
      l2Offset,
      (e, _j, at) => {
        if (e.type !== 'compressed' && ((readU32Be(table, at - l2Offset) & L2_RESERVED_HI) !== 0 || (readU32Be(table, at - l2Offset + 4) & L2_RESERVED_LO) !== 0)) {
          r.corruptions += times;
          say(`ERROR L2 entry at ${hex(at)} has reserved bits set: ${entryHex(table, at - l2Offset)}`);
          if (activeTimes) r.reservedBits.push({ at, hiMask: L2_RESERVED_HI, loMask: L2_RESERVED_LO });
        }
        if (e.type === 'compressed' && (readU32Be(table, at - l2Offset) & ENTRY_COPIED_HI) !== 0) {
          r.corruptions += times;
          say(`ERROR L2 entry at ${hex(at)} is compressed with the COPIED flag set (never allowed): ${entryHex(table, at - l2Offset)}`);
          if (activeTimes) r.reservedBits.push({ at, hiMask: ENTRY_COPIED_HI, loMask: 0 });
        }
        if (e.type === 'compressed') {
          ref(e.host, e.size, 'compressed cluster', times);
          r.allocated += activeTimes;
          r.compressed += activeTimes;
          r.fragmented += activeTimes;
        } else if (e.type !== 'unallocated' && e.host !== undefined) {
          if (!s.entryGeom.dataFile) ref(e.host, cs, 'data cluster', times);
          if (activeTimes) {
            r.allocated += activeTimes;
            if (nextContiguous && e.host !== nextContiguous) r.fragmented += activeTimes;
            nextContiguous = e.host + cs;
            copied(at, e.host / cs, e.copied, s.entryGeom.dataFile, () => entryHex(table, at - l2Offset));
          }
        }
      },
      (err) => {
        r.corruptions += times;
        say(`ERROR ${err.message}`);
      },
    );
  });
  reportUpTo(n);
  return r;
}

interface Tally {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  messages: string[];
  imageEnd: number;
  scan: Scan;
  mismatched: Array<{ cluster: number; stored: number; computed: number }>;
  copiedFixes: CopiedFix[];
  /** Refcount table entries of blocks used more than once whose range lies past the end of the file. */
  sharedBlocksPastEnd: number[];
}

/**
 * Compares stored refcounts with the counted references, block by block
 * (no array of stored refcounts: only whether each is exactly one, a byte
 * per cluster, for the COPIED checks).
 */
async function tally(s: Qcow2Image, view: MappingView): Promise<Tally> {
  const sc = await scan(s, view);
  const n = sc.refs.length;
  const cs = s.geom.clusterSize;
  const bits = s.geom.refcountBits;
  const perBlock = (cs * 8) / bits;
  const h = s.header;
  const t: Tally = { corruptions: sc.corruptions, leaks: 0, checkErrors: sc.checkErrors, messages: sc.messages, imageEnd: 0, scan: sc, mismatched: [], copiedFixes: [], sharedBlocksPastEnd: [] };
  const say = (m: string) => {
    if (t.messages.length < MAX_MESSAGES) t.messages.push(m);
  };
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  const block = new Uint8Array(cs);
  // The stored refcounts of the clusters whose COPIED flag is wrong, for their messages.
  const wanted = new Map<number, CopiedFix[]>();
  for (const f of sc.copiedFixes.slice(0, MAX_MESSAGES)) {
    if (f.refcount !== undefined) continue;
    const list = wanted.get(f.cluster);
    if (list) list.push(f);
    else wanted.set(f.cluster, [f]);
  }
  for (let b = 0; b * perBlock < n; b++) {
    let off = (b + 1) * 8 <= rt.length ? entryOffset(readU32Be(rt, b * 8), readU32Be(rt, b * 8 + 4)) : 0;
    if (off && (off % cs || off + cs > s.fileSize)) {
      t.corruptions++;
      say(`ERROR refcount block ${b} at ${hex(off)} is unaligned or lies past the end of the file`);
      off = 0;
    }
    if (off) await s.storage.readInto(off, block);
    for (let k = 0; k < perBlock && b * perBlock + k < n; k++) {
      const c = b * perBlock + k;
      const st = off ? readRefcount(block, k, bits) : 0;
      if (wanted.size !== 0) for (const f of wanted.get(c) ?? []) f.refcount = st;
      const computed = sc.refs[c]!;
      if (st > 0 || computed > 0) t.imageEnd = (c + 1) * cs;
      if (st === computed) continue;
      t.mismatched.push({ cluster: c, stored: st, computed });
      if (st < computed) {
        t.corruptions++;
        say(`ERROR cluster ${c} refcount=${st} reference=${computed}`);
      } else {
        t.leaks++;
        say(`Leaked cluster ${c} refcount=${st} reference=${computed}`);
      }
    }
  }
  // A refcount block must be used once (qemu-img check counts one that is also another block or other metadata).
  for (const b of sc.refcountBlocks) {
    const uses = sc.refs[b.offset / cs]!;
    if (uses <= 1) continue;
    t.corruptions++;
    say(`ERROR refcount block ${b.index} at ${hex(b.offset)} is used ${uses} times (refcount table entry at ${hex(h.refcountTableOffset + b.index * 8)})`);
    // Nothing of the file lies in its range: repair 'all' clears the entry (else the block stays, reported).
    if (b.index * perBlock >= n) t.sharedBlocksPastEnd.push(h.refcountTableOffset + b.index * 8);
  }
  t.copiedFixes = sc.copiedFixes;
  for (const f of sc.copiedFixes) say(copiedLine(f, 'ERROR'));
  return t;
}

/** Rounds of refcount repairs: a repair that rebuilds a refcount block changes what the next tally counts. */
const MAX_REFCOUNT_ROUNDS = 4;

/**
 * Sets stored refcounts to the counted references of `t` (only those that
 * are too high for 'leaks'). Values past the refcount width are set to the
 * largest it holds (the copy-on-repair pass brings such counts down).
 * Answers whether anything changed.
 */
async function setRefcounts(rc: Refcounts, t: Tally, repair: 'leaks' | 'all'): Promise<boolean> {
  let changed = false;
  for (const m of t.mismatched) {
    if (m.stored <= m.computed && repair !== 'all') continue;
    // Tables that L1 entries past the virtual size point at (and their clusters), and clusters that the header cluster
    // names when an L1 entry of flags without an offset makes qemu-img check read it as an L2 table, look leaked, but
    // qemu-img check follows those entries: freeing them would leave references to free clusters. Nothing is lowered
    // while any are left (repair 'all' clears active ones first).
    if (m.stored > m.computed && t.scan.unfollowedL1 > 0) continue;
    const value = Math.min(m.computed, rc.maxRefcount);
    if (value === m.stored) continue;
    await rc.set(m.cluster, value);
    changed = true;
  }
  return changed;
}

/**
 * Sets refcounts and tallies again until nothing is left to set: a repair
 * that rebuilds a refcount block (which then counts every cluster of its
 * range as used) changes what the next round finds.
 */
async function fixRefcounts(s: Qcow2Image, view: MappingView, rc: Refcounts, t: Tally, repair: 'leaks' | 'all'): Promise<Tally> {
  for (let round = 0; round < MAX_REFCOUNT_ROUNDS; round++) {
    if (!(await setRefcounts(rc, t, repair))) break;
    await s.storage.flush();
    await noteGrowth(s);
    t = await tally(s, view);
  }
  return t;
}

/** Repairs allocate (refcount blocks, copies): the tally counts clusters up to the file's new end. */
async function noteGrowth(s: Qcow2Image): Promise<void> {
  s.noteFileEnd(await s.storage.size());
}

/** Rewrites the COPIED flags the tally found wrong (after the refcounts are exact). */
async function fixCopied(s: Qcow2Image, view: MappingView, fixes: CopiedFix[]): Promise<void> {
  const entry = new Uint8Array(8);
  for (const f of fixes) {
    await s.storage.readInto(f.at, entry);
    setEntryCopied(entry, 0, f.set);
    // Only the flag of an L1 or L2 entry changes: never a write on other metadata.
    s.overlap?.check(s.file, f.at, 4, OVERLAP.ACTIVE_L1 | OVERLAP.L2);
    await s.storage.write(f.at, entry.subarray(0, 4));
    if (f.at >= view.l1Offset && f.at < view.l1Offset + view.l1.length) view.l1.set(entry.subarray(0, 4), f.at - view.l1Offset);
  }
  s.cache.clear();
}

/**
 * Clears reserved bits of active L1 and L2 entries (readers ignore them, so
 * no guest view changes, shared tables included) and L1 entries holding
 * flags but no offset (they map nothing).
 */
async function clearReservedBits(s: Qcow2Image, view: MappingView, fixes: readonly ReservedBitsFix[]): Promise<void> {
  const entry = new Uint8Array(8);
  for (const f of fixes) {
    await s.storage.readInto(f.at, entry);
    writeU32Be(entry, 0, (readU32Be(entry, 0) & ~f.hiMask) >>> 0);
    writeU32Be(entry, 4, (readU32Be(entry, 4) & ~f.loMask) >>> 0);
    s.overlap?.check(s.file, f.at, 8, f.table === 'refcount' ? OVERLAP.REFCOUNT_TABLE : OVERLAP.ACTIVE_L1 | OVERLAP.L2);
    await s.storage.write(f.at, entry);
    if (f.at >= view.l1Offset && f.at < view.l1Offset + view.l1.length) view.l1.set(entry, f.at - view.l1Offset);
  }
  s.cache.clear();
}

/**
 * Repair 'all' rewrites entries of the active L1 table (COPIED flags,
 * reserved bits, entries it drops), and the overlap map lets those writes
 * touch the L1 table, L2 tables (an L1 entry naming its own table) and
 * snapshot L1 tables (copied first) only. An L1 table that lies on other
 * metadata (the snapshot table, refcount structures, bitmaps) would stop
 * the repair half-way, after its refcount changes and before the flags
 * that go with them (seed 1002 case 307): refused before anything is written.
 */
function refuseUnwritableL1(s: Qcow2Image, view: MappingView): void {
  const cs = s.geom.clusterSize;
  const bytes = s.header.l1Size * 8;
  if (!s.overlap || bytes === 0) return;
  const allowed = OVERLAP.ACTIVE_L1 | OVERLAP.L2 | OVERLAP.SNAPSHOT_L1;
  for (let c = Math.floor(view.l1Offset / cs); c * cs < view.l1Offset + bytes; c++) {
    const other = s.overlap.kindsAt(c) & ~allowed;
    if (other) {
      throw corrupt(FORMAT, s.file, `cannot repair: the active L1 table at ${hex(view.l1Offset)} lies on the ${overlapKindName(other)} at ${hex(c * cs)}, which its repair would overwrite; nothing was changed`, { field: 'l1_table_offset', offset: 40, actual: view.l1Offset });
    }
  }
}

/**
 * Checks an open image (and repairs it when `repair` is given and the image
 * is writable). Repair 'all' runs in this order: L1 entries past the
 * virtual size cleared; refcounts raised to cover every reference (so the
 * allocator cannot hand out a cluster in use); shared clusters of the
 * active layer copied (check-repair.ts); refcounts set exactly; COPIED
 * flags set from them.
 */
export async function checkState(s: Qcow2Image, view: MappingView, repair?: 'leaks' | 'all'): Promise<CheckResult> {
  let t = await tally(s, view);
  let corruptionsFixed = 0;
  let leaksFixed = 0;
  const repaired: string[] = [];
  let copiedRepaired = 0;
  if (repair && (t.leaks || (repair === 'all' && t.corruptions) || (repair === 'leaks' && t.copiedFixes.length))) {
    const rc = s.writer?.allocator.refcounts;
    if (!rc) throw readOnlyError(FORMAT, s.file);
    if (repair === 'all') refuseUnwritableL1(s, view);
    const before = t;
    // What the guest reads from data clusters on metadata, before any repair rewrites some of it.
    const captured = repair === 'all' && mayHaveDataOnMetadata(s, t.scan.refs) ? await captureDataOnMetadata(s, view) : new Map<number, Uint8Array>();
    if (repair === 'all' && t.scan.pastSizeL1.length) {
      // Entries past the virtual size are cleared first: their tables then count as leaks, freed below.
      const zero = new Uint8Array(8);
      for (const at of t.scan.pastSizeL1) {
        s.overlap?.check(s.file, at, 8, OVERLAP.ACTIVE_L1);
        await s.storage.write(at, zero);
        view.l1.set(zero, at - view.l1Offset);
      }
      await s.storage.flush();
      t = await tally(s, view);
    }
    if (repair === 'all' && t.sharedBlocksPastEnd.length) {
      // Their clusters count as used twice; the entries name no cluster of the file, so they go.
      const zero = new Uint8Array(8);
      for (const at of t.sharedBlocksPastEnd) {
        s.overlap?.check(s.file, at, 8, OVERLAP.REFCOUNT_TABLE);
        await s.storage.write(at, zero);
      }
      await s.storage.flush();
      t = await tally(s, view);
    }
    if (repair === 'all' && t.scan.reservedBits.length) {
      await clearReservedBits(s, view, t.scan.reservedBits);
      await s.storage.flush();
      t = await tally(s, view);
    }
    if (repair === 'all') {
      // One round raises every refcount to cover its references (rebuilt blocks count their whole range):
      // the copies below cannot be given a cluster in use. The tally after them sets them exactly.
      await setRefcounts(rc, t, 'all');
      await s.storage.flush();
      await noteGrowth(s);
      const shared = await repairSharing(s, view, rc, captured);
      repaired.push(...shared.messages);
      await s.storage.flush();
      await noteGrowth(s);
      t = await fixRefcounts(s, view, rc, await tally(s, view), 'all');
      if (t.copiedFixes.length) {
        // COPIED flags are judged against the repaired refcounts, as qemu-img check -r all does: only these count as fixed.
        for (const f of t.copiedFixes.slice(0, MAX_MESSAGES)) repaired.push(copiedLine(f, 'Repairing'));
        copiedRepaired = t.copiedFixes.length;
        await fixCopied(s, view, t.copiedFixes);
        await s.storage.flush();
        t = await tally(s, view);
      }
    } else {
      t = await fixRefcounts(s, view, rc, t, repair);
      // As qemu-img check -r leaks: COPIED flags are then set from the refcounts (a leak repair that lowers a shared
      // cluster's refcount to 1 leaves its flag clear, which qemu counts). A flag is set only where the refcount is
      // exactly the references counted (one below them is corruption this repair does not touch); clearing is safe.
      // Entries in a table that lies on other metadata are left (the overlap guard would stop the repair half-way).
      const cs = s.geom.clusterSize;
      const writable = (at: number) => ((s.overlap?.kindsAt(Math.floor(at / cs)) ?? 0) & ~(OVERLAP.ACTIVE_L1 | OVERLAP.L2)) === 0;
      const safe = t.copiedFixes.filter((f) => (!f.set || t.scan.refs[f.cluster] === 1) && writable(f.at));
      if (safe.length) {
        for (const f of safe.slice(0, MAX_MESSAGES)) repaired.push(copiedLine(f, 'Repairing'));
        await fixCopied(s, view, safe);
        await s.storage.flush();
        t = await tally(s, view);
      }
    }
    // As qemu-img check -r: the first pass's refcount lines as a check prints them, then one line per refcount it repairs.
    const found = before.mismatched.slice(0, MAX_MESSAGES);
    const fixed = found.filter((m) => repair === 'all' || m.stored > m.computed);
    repaired.unshift(...found.map((m) => `${m.stored < m.computed ? 'ERROR' : 'Leaked'} cluster ${m.cluster} refcount=${m.stored} reference=${m.computed}`), ...fixed.map((m) => `Repairing cluster ${m.cluster} refcount=${m.stored} reference=${m.computed}`));
    if (repair === 'all') {
      const structural = (x: Tally) => x.corruptions - x.copiedFixes.length;
      corruptionsFixed = Math.max(0, structural(before) - structural(t)) + copiedRepaired;
    } else {
      corruptionsFixed = Math.max(0, before.corruptions - t.corruptions);
    }
    leaksFixed = Math.max(0, before.leaks - t.leaks);
  }
  const cs = s.geom.clusterSize;
  return {
    format: FORMAT,
    corruptions: t.corruptions,
    leaks: t.leaks,
    checkErrors: t.checkErrors,
    corruptionsFixed,
    leaksFixed,
    messages: [...repaired, ...t.messages].slice(0, MAX_MESSAGES),
    imageEndOffset: t.imageEnd,
    totalClusters: Math.ceil(s.header.size / cs),
    allocatedClusters: t.scan.allocated,
    fragmentedClusters: t.scan.fragmented,
    compressedClusters: t.scan.compressed,
  };
}
