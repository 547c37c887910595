/**
 * The check of an open image (checkState; checkQcow2 in check-qcow2.ts
 * opens the image for it, open.ts repairs with it): qemu-img check for
 * qcow2. Compares the references check-scan.ts counts for every host
 * cluster with the stored refcounts and the COPIED flags, and repairs
 * leaks (or everything) on request.
 */
import { corrupt, readOnlyError, readU32Be, writeU32Be, hex } from '@img/block';
import type { CheckResult } from '@img/block';
import { setEntryCopied } from './mapping.js';
import type { MappingView } from './mapping-view.js';
import { readRefcount, refcountTableEntryOffset } from './refcount-entry.js';
import type { Refcounts } from './refcount.js';
import { OVERLAP, overlapKindName } from './overlap.js';
import { captureDataOnMetadata, mayHaveDataOnMetadata, repairSharing } from './check-repair.js';
import type { Qcow2Image } from './core.js';
import { copiedLine, MAX_MESSAGES, scan, type CopiedFix, type ReservedBitsFix, type Scan } from './check-scan.js';
import { completeSnapshotTable, incompleteLine, incompleteSnapshots } from './check-snapshots.js';

const FORMAT = 'qcow2';

interface Tally {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  messages: string[];
  imageEnd: number;
  scan: Scan;
  mismatched: Array<{ cluster: number; stored: number; computed: number }>;
  copiedFixes: CopiedFix[];
  /**
   * Refcount table entries whose range lies past the end of the file and whose block is used more than once, unaligned
   * or outside the file: repair 'all' clears them (nothing of the file lies in their range).
   */
  sharedBlocksPastEnd: number[];
  /** Snapshot table entries qemu-img check calls incomplete (check-snapshots.ts); repair 'all' completes them. */
  incomplete: number[];
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
  const incomplete = incompleteSnapshots(s);
  // As qemu-img check: the snapshot table's lines come first.
  const messages = [...incomplete.slice(0, MAX_MESSAGES).map((i) => incompleteLine(i, 'ERROR')), ...sc.messages].slice(0, MAX_MESSAGES);
  const t: Tally = { corruptions: sc.corruptions + incomplete.length, leaks: 0, checkErrors: sc.checkErrors, messages, imageEnd: 0, scan: sc, mismatched: [], copiedFixes: [], sharedBlocksPastEnd: [], incomplete };
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
  // Every entry of the table is judged, also those for ranges past the end of the file (as qemu-img check does).
  for (let b = 0; b * perBlock < n || (b + 1) * 8 <= rt.length; b++) {
    let off = (b + 1) * 8 <= rt.length ? refcountTableEntryOffset(readU32Be(rt, b * 8), readU32Be(rt, b * 8 + 4)) : 0;
    if (off && (off % cs || off + cs > s.fileSize)) {
      t.corruptions++;
      say(`ERROR refcount block ${b} at ${hex(off)} is unaligned or lies past the end of the file`);
      off = 0;
      if (b * perBlock >= n) t.sharedBlocksPastEnd.push(h.refcountTableOffset + b * 8);
    }
    if (b * perBlock >= n) continue;
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
  for (const f of sc.copiedFixes) {
    if (t.messages.length >= MAX_MESSAGES) break;
    say(copiedLine(f, 'ERROR'));
  }
  return t;
}

/**
 * Refuses repair 'leaks' when the refcount structures need rebuilding,
 * which only repair 'all' does (qemu-img check -r leaks stops with "need
 * to rebuild refcount structures", exit status 1, and changes nothing): a
 * refcount table entry with reserved bits set, or a refcount block used
 * more than once (it is also other metadata, or another block), or a
 * cluster in use whose refcount is 0. A leak repair went on and replaced
 * such a block, whose every cluster then counted once: seed 1003 case 997
 * went from 44 to 47 corruptions; next to a cluster of refcount 0 it
 * lowered another's refcount that qemu-img check counts as used (seed 1007
 * case 549: 46 corruptions, then 47).
 */
function refuseLeakRepairNeedingRebuild(s: Qcow2Image, t: Tally): void {
  const cs = s.geom.clusterSize;
  const reserved = t.scan.reservedBits.find((f) => f.table === 'refcount');
  const shared = t.scan.refcountBlocks.find((b) => t.scan.refs[b.offset / cs]! > 1);
  const unCounted = t.mismatched.find((m) => m.stored === 0 && m.computed > 0);
  const why = reserved
    ? { text: `refcount table entry at ${hex(reserved.at)} has reserved bits set`, offset: reserved.at, field: 'refcount table entry' }
    : shared
      ? { text: `refcount block ${shared.index} at ${hex(shared.offset)} is used ${t.scan.refs[shared.offset / cs]} times`, offset: s.header.refcountTableOffset + shared.index * 8, field: 'refcount table entry' }
      : unCounted
        ? { text: `cluster ${unCounted.cluster} at ${hex(unCounted.cluster * cs)} is in use (${unCounted.computed} references) but its refcount is 0`, offset: unCounted.cluster * cs, field: 'refcount' }
        : undefined;
  if (!why) return;
  throw corrupt(FORMAT, s.file, `cannot repair leaks: ${why.text}, so the refcount structures need rebuilding, which only check -r all does; nothing was changed`, { field: why.field, offset: why.offset });
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

/** The most clusters past the end of the file whose refcounts a repair looks at. */
const MAX_PAST_END_CLUSTERS = 1 << 20;

/**
 * Sets to 0 the refcounts of clusters past the end of the file that nothing
 * references, and returns how many. qemu-img check compares the refcounts
 * of the file's clusters only, so such a refcount is no leak while the file
 * is short; but every allocation then grows the file over it, and qemu-img
 * check reports the leak (qcow2 fuzz seed 1124 case 123: check -r all
 * dropped the references past the end of a cut-short file, and the
 * snapshot that followed grew the file over two of their clusters). A
 * repair that cannot tell what is referenced past the end (too many such
 * references, or too long a stretch) leaves them.
 */
async function clearRefcountsPastEnd(rc: Refcounts, sc: Scan): Promise<number> {
  const end = sc.refs.length;
  const last = await rc.lastInUse();
  // A block not trusted yet answers for its range without its bytes: nothing past the end is changed through it.
  if (last < end || sc.pastEndRefsOverflow || last - end >= MAX_PAST_END_CLUSTERS || rc.untrustedBlocks.length) return 0;
  let cleared = 0;
  for (let c = end; c <= last; c++) {
    if (sc.pastEndRefs.has(c)) continue;
    if ((await rc.get(c)) === 0) continue;
    await rc.set(c, 0);
    cleared++;
  }
  return cleared;
}

/** Repairs allocate (refcount blocks, copies): the tally counts clusters up to the file's new end. */
async function noteGrowth(s: Qcow2Image): Promise<void> {
  s.noteFileEnd(await s.storage.size());
}

/**
 * Rewrites the COPIED flags the tally found wrong (after the refcounts are
 * exact): the entries of one cluster (an L2 table, a cluster of the L1
 * table) in one read and one write of the span from its first fixed entry
 * to its last, in which only those flags change. One write per entry took
 * 183 s for the 1 M entries of a 64 GiB image with preallocated metadata.
 */
async function fixCopied(s: Qcow2Image, view: MappingView, fixes: CopiedFix[]): Promise<void> {
  const cs = s.geom.clusterSize;
  const sorted = [...fixes].sort((a, b) => a.at - b.at);
  for (let i = 0; i < sorted.length;) {
    const cluster = Math.floor(sorted[i]!.at / cs);
    let j = i;
    while (j + 1 < sorted.length && Math.floor(sorted[j + 1]!.at / cs) === cluster) j++;
    const from = sorted[i]!.at;
    const span = new Uint8Array(sorted[j]!.at + 8 - from);
    await s.storage.readInto(from, span);
    for (let k = i; k <= j; k++) setEntryCopied(span, sorted[k]!.at - from, sorted[k]!.set);
    // Only flags of L1 or L2 entries change: never a write on other metadata.
    s.overlap?.check(s.file, from, span.length, OVERLAP.ACTIVE_L1 | OVERLAP.L2);
    await s.storage.write(from, span);
    // The L1 entries among them, in the view's copy of the table too.
    const l1End = view.l1Offset + view.l1.length;
    const lo = Math.max(from, view.l1Offset);
    const hi = Math.min(from + span.length, l1End);
    if (lo < hi) view.l1.set(span.subarray(lo - from, hi - from), lo - view.l1Offset);
    i = j + 1;
  }
  s.cache.clear();
}

/**
 * Clears reserved bits of active L1 and L2 entries (readers ignore them, so
 * no guest view changes, shared tables included) and L1 entries holding
 * flags but no offset (they map nothing), the snapshots' too. An entry in an L2 table that lies
 * on other metadata is left: that table's L1 entry is dropped later
 * (repairSharing), and the overlap guard would stop the repair half-way,
 * after the fixes before it (seed 1003 case 162: the refcount table entry's
 * bit cleared, then an L2 table on the bitmap table refused).
 */
async function clearReservedBits(s: Qcow2Image, view: MappingView, fixes: readonly ReservedBitsFix[]): Promise<void> {
  const cs = s.geom.clusterSize;
  const entry = new Uint8Array(8);
  for (const f of fixes) {
    const allowed = f.table === 'refcount' ? OVERLAP.REFCOUNT_TABLE : f.table === 'snapshot-l1' ? OVERLAP.SNAPSHOT_L1 : OVERLAP.ACTIVE_L1 | OVERLAP.L2;
    if (((s.overlap?.kindsAt(Math.floor(f.at / cs)) ?? 0) & ~allowed) !== 0) continue;
    await s.storage.readInto(f.at, entry);
    writeU32Be(entry, 0, (readU32Be(entry, 0) & ~f.hiMask) >>> 0);
    writeU32Be(entry, 4, (readU32Be(entry, 4) & ~f.loMask) >>> 0);
    s.overlap?.check(s.file, f.at, 8, allowed);
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
  const snapshotLines: string[] = [];
  let copiedRepaired = 0;
  if (repair === 'leaks') refuseLeakRepairNeedingRebuild(s, t);
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
      if (t.incomplete.length) {
        // Last, as qemu-img check -r all: the refcounts are exact, so the new table takes free clusters only.
        snapshotLines.push(...t.incomplete.slice(0, MAX_MESSAGES).map((i) => incompleteLine(i, 'Repairing')));
        await completeSnapshotTable(s, rc);
        await noteGrowth(s);
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
    const pastEnd = await clearRefcountsPastEnd(rc, t.scan);
    if (pastEnd) {
      await s.storage.flush();
      repaired.push(`Repaired: ${pastEnd} refcount${pastEnd === 1 ? '' : 's'} of clusters past the end of the file that nothing uses set to 0 (the file would have grown over them as leaks)`);
    }
    // As qemu-img check -r: the first pass's refcount lines as a check prints them, then one line per refcount it repairs.
    const found = before.mismatched.slice(0, MAX_MESSAGES);
    const fixed = found.filter((m) => repair === 'all' || m.stored > m.computed);
    repaired.unshift(...snapshotLines, ...found.map((m) => `${m.stored < m.computed ? 'ERROR' : 'Leaked'} cluster ${m.cluster} refcount=${m.stored} reference=${m.computed}`), ...fixed.map((m) => `Repairing cluster ${m.cluster} refcount=${m.stored} reference=${m.computed}`));
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
