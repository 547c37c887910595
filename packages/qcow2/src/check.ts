/**
 * checkQcow2: qemu-img check for qcow2. Counts the references to every
 * host cluster from all metadata (header, L1/L2 tables of the active
 * layer and of every snapshot, refcount structures, snapshot table,
 * bitmaps), compares them with the stored refcounts and the COPIED flags,
 * and repairs leaks (or everything) on request.
 */
import { ImageError, ERROR_CODES, readU32Be, writeU32Be, hex } from '@img/block';
import type { CheckOptions, CheckResult, Storage } from '@img/block';
import { l1EntryOffset, decodeL2Entry, entryOffset } from './mapping.js';
import { loadL2, type MappingView } from './reader.js';
import { readRefcount } from './refcount.js';
import { findExtension, parseBitmapsExtension } from './extensions.js';
import { snapshotEntrySize } from './snapshot.js';
import { bitmapRanges } from './bitmaps.js';
import { EXT_BITMAPS, ENTRY_COPIED_HI, INCOMPAT_DIRTY, INCOMPAT_CORRUPT } from './constants.js';
import { openQcow2 } from './open.js';
import { writeHeader, type Qcow2State } from './state.js';
import { stateOf } from './image.js';

const FORMAT = 'qcow2';
/** Largest number of host clusters a check will count (5 bytes each: 320 MiB at most). */
const MAX_CHECK_CLUSTERS = 64 * 1024 * 1024;

interface CopiedFix {
  /** Host offset of the 8-byte entry to rewrite. */
  at: number;
  set: boolean;
}

interface Scan {
  refs: Uint32Array;
  corruptions: number;
  checkErrors: number;
  messages: string[];
  allocated: number;
  fragmented: number;
  compressed: number;
  /** Active L1/L2 entries with a COPIED flag to check: where, which cluster, flags (1: set, 2: implicit refcount 1). */
  copied: { at: number[]; cluster: number[]; flags: number[] };
}

async function scan(s: Qcow2State, view: MappingView): Promise<Scan> {
  const cs = s.geom.clusterSize;
  const nClusters = Math.ceil(s.fileSize / cs);
  if (nClusters > MAX_CHECK_CLUSTERS) {
    throw new ImageError(ERROR_CODES.UNSUPPORTED, `${FORMAT}: ${s.file}: file too large to check (${nClusters} clusters)`, { data: { format: FORMAT, file: s.file } });
  }
  const r: Scan = { refs: new Uint32Array(nClusters), corruptions: 0, checkErrors: 0, messages: [], allocated: 0, fragmented: 0, compressed: 0, copied: { at: [], cluster: [], flags: [] } };
  const ref = (offset: number, bytes: number, what: string) => {
    if (bytes <= 0) return;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + bytes - 1) / cs);
    for (let c = first; c <= last; c++) {
      if (c >= nClusters) {
        r.corruptions++;
        r.messages.push(`ERROR ${what} at ${hex(c * cs)} lies past the end of the file`);
        continue;
      }
      if (r.refs[c]! < 0xffffffff) r.refs[c]!++;
    }
  };
  const copied = (at: number, cluster: number, isSet: boolean, implicit: boolean) => {
    r.copied.at.push(at);
    r.copied.cluster.push(cluster);
    r.copied.flags.push((isSet ? 1 : 0) | (implicit ? 2 : 0));
  };
  const h = s.header;
  ref(0, cs, 'header');
  ref(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  const rtBytes = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rtBytes);
  for (let i = 0; i < rtBytes.length / 8; i++) {
    const off = entryOffset(readU32Be(rtBytes, i * 8), readU32Be(rtBytes, i * 8 + 4));
    if (off) ref(off, cs, 'refcount block');
  }
  if (h.nbSnapshots) ref(h.snapshotsOffset, s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0), 'snapshot table');
  // Bitmaps: directory, bitmap tables and their data clusters.
  const bm = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  if (bm) for (const r of await bitmapRanges(s.storage, bm, s.fileSize, cs)) ref(r.offset, r.bytes, r.what);

  const walk = async (l1: Uint8Array, l1Offset: number, l1Size: number, active: boolean) => {
    ref(l1Offset, l1Size * 8, 'L1 table');
    for (let i = 0; i < l1Size; i++) {
      let l2Offset: number;
      try {
        l2Offset = l1EntryOffset(l1, i, cs, s.file, l1Offset);
      } catch (e) {
        r.corruptions++;
        r.messages.push(`ERROR ${(e as Error).message}`);
        continue;
      }
      if (!l2Offset) continue;
      ref(l2Offset, cs, 'L2 table');
      if (active) copied(l1Offset + i * 8, l2Offset / cs, (readU32Be(l1, i * 8) & ENTRY_COPIED_HI) !== 0, false);
      let table: Uint8Array;
      try {
        table = await loadL2(s, l2Offset, i);
      } catch (e) {
        r.corruptions++;
        r.messages.push(`ERROR ${(e as Error).message}`);
        continue;
      }
      // Fragmentation is counted within each L2 table, as qemu-img check does.
      let nextContiguous = 0;
      for (let j = 0; j < s.geom.l2Entries; j++) {
        let e;
        try {
          e = decodeL2Entry(table, j, s.entryGeom, s.file, l2Offset);
        } catch (err) {
          r.corruptions++;
          r.messages.push(`ERROR ${(err as Error).message}`);
          continue;
        }
        const at = l2Offset + j * s.geom.l2EntrySize;
        if (e.type === 'compressed') {
          ref(e.host, e.size, 'compressed cluster');
          if (active) {
            r.allocated++;
            r.compressed++;
            r.fragmented++;
          }
        } else if ((e.type === 'normal' || e.type === 'zero' || e.type === 'subclusters') && e.host !== undefined) {
          if (!s.entryGeom.dataFile) ref(e.host, cs, 'data cluster');
          if (active) {
            r.allocated++;
            if (nextContiguous && e.host !== nextContiguous) r.fragmented++;
            nextContiguous = e.host + cs;
            copied(at, e.host / cs, e.copied, s.entryGeom.dataFile);
          }
        }
      }
    }
  };
  await walk(view.l1, view.l1Offset, h.l1Size, true);
  for (const sn of s.snapshots) {
    const l1 = new Uint8Array(sn.l1Size * 8);
    await s.storage.readInto(sn.l1TableOffset, l1);
    await walk(l1, sn.l1TableOffset, sn.l1Size, false);
  }
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
}

/** Messages kept per check (the counts are always complete). */
const MAX_MESSAGES = 1000;

/**
 * Compares stored refcounts with the counted references, block by block
 * (no array of stored refcounts: only whether each is exactly one, a byte
 * per cluster, for the COPIED checks).
 */
async function tally(s: Qcow2State, view: MappingView): Promise<Tally> {
  const sc = await scan(s, view);
  const n = sc.refs.length;
  const cs = s.geom.clusterSize;
  const bits = s.geom.refcountBits;
  const perBlock = (cs * 8) / bits;
  const h = s.header;
  const t: Tally = { corruptions: sc.corruptions, leaks: 0, checkErrors: sc.checkErrors, messages: sc.messages, imageEnd: 0, scan: sc, mismatched: [], copiedFixes: [] };
  const say = (m: string) => {
    if (t.messages.length < MAX_MESSAGES) t.messages.push(m);
  };
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  const isOne = new Uint8Array(n);
  const block = new Uint8Array(cs);
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
      const computed = sc.refs[c]!;
      if (st === 1) isOne[c] = 1;
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
  const { at, cluster, flags } = sc.copied;
  for (let i = 0; i < at.length; i++) {
    const implicit = (flags[i]! & 2) !== 0;
    const c = cluster[i]!;
    const one = implicit || (c < n && isOne[c] === 1);
    if (one === ((flags[i]! & 1) !== 0)) continue;
    t.corruptions++;
    say(`ERROR OFLAG_COPIED entry at ${hex(at[i]!)}: refcount is ${one ? '' : 'not '}1`);
    t.copiedFixes.push({ at: at[i]!, set: one });
  }
  return t;
}

/** Checks an open image (and repairs it when `repair` is given and the image is writable). */
export async function checkState(s: Qcow2State, view: MappingView, repair?: 'leaks' | 'all'): Promise<CheckResult> {
  let t = await tally(s, view);
  let corruptionsFixed = 0;
  let leaksFixed = 0;
  if (repair && (t.leaks || (repair === 'all' && t.corruptions))) {
    const rc = s.writer?.refcounts;
    if (!rc) throw new ImageError(ERROR_CODES.READ_ONLY, `${FORMAT}: ${s.file}: repairing needs the image open for writing`, { data: { format: FORMAT, file: s.file } });
    for (const m of t.mismatched) {
      if (m.stored > m.computed || repair === 'all') await rc.set(m.cluster, m.computed);
    }
    if (repair === 'all') {
      // COPIED flags follow the refcounts as they are after the refcount repairs.
      const entry = new Uint8Array(8);
      for (const f of (await tally(s, view)).copiedFixes) {
        await s.storage.readInto(f.at, entry);
        const hi = readU32Be(entry, 0);
        writeU32Be(entry, 0, (f.set ? hi | ENTRY_COPIED_HI : hi & ~ENTRY_COPIED_HI) >>> 0);
        await s.storage.write(f.at, entry.subarray(0, 4));
        if (f.at >= view.l1Offset && f.at < view.l1Offset + view.l1.length) view.l1.set(entry.subarray(0, 4), f.at - view.l1Offset);
      }
      s.cache.clear();
    }
    await s.storage.flush();
    const before = t;
    t = await tally(s, view);
    corruptionsFixed = Math.max(0, before.corruptions - t.corruptions);
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
    messages: t.messages,
    imageEndOffset: t.imageEnd,
    totalClusters: Math.ceil(s.header.size / cs),
    allocatedClusters: t.scan.allocated,
    fragmentedClusters: t.scan.fragmented,
    compressedClusters: t.scan.compressed,
  };
}

/**
 * Checks the image in `storage` the way `qemu-img check` does: leaks
 * (allocated clusters nothing refers to), corruptions (refcounts too low,
 * wrong COPIED flags, tables out of bounds), and the allocation figures.
 * With `repair` ('leaks' or 'all') the storage must be writable.
 */
export async function checkQcow2(storage: Storage, options: CheckOptions = {}): Promise<CheckResult> {
  const disk = await openQcow2(storage, {
    readOnly: !options.repair,
    noBacking: true,
    noDataFile: true,
    checkOnly: true,
    resolver: options.resolver,
    formats: options.formats,
  });
  try {
    const { state, view } = stateOf(disk);
    const result = await checkState(state, view, options.repair);
    // A repaired image is consistent again: the dirty and corrupt bits go (as qemu-img check -r does).
    const h = state.header;
    const flags = (1n << BigInt(INCOMPAT_DIRTY)) | (1n << BigInt(INCOMPAT_CORRUPT));
    if (options.repair && result.corruptions === 0 && (h.incompatibleFeatures & flags) !== 0n && (options.repair === 'all' || result.leaks === 0)) {
      h.incompatibleFeatures &= ~flags;
      await writeHeader(state);
      await storage.flush();
    }
    return result;
  } finally {
    await disk.close();
  }
}
