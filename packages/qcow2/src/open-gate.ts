/**
 * The consistency gate of a writable open: the checks that cost metadata
 * bytes, not data. One pass over the active L1 and L2 tables marks every
 * host cluster in a flag byte (allocated in 1 MiB chunks as clusters are
 * seen); a cluster seen twice is a
 * candidate, refused unless its refcount covers the sharing and no COPIED
 * flag allows writing it in place. Snapshot L1 tables may not be or
 * overlap the active one. `img check -r all` repairs what refcounts and
 * COPIED flags can repair; the gate then lets the image through.
 */
import { corrupt, hex, readU32Be, unsupported } from '@img/block';
import { decodeL2Entry, entryOffset } from './mapping.js';
import { ENTRY_COPIED_HI, ENTRY_COMPRESSED_HI, OFFSET_MASK_HI } from './constants.js';
import type { MappingView } from './reader.js';
import type { Qcow2State } from './state.js';

const FORMAT = 'qcow2';
/** Clusters per flag chunk (64 KiB). */
/** Flag bytes the gate may hold (one per host cluster in use, in chunks): 256 MiB. */
const MAX_FLAG_BYTES = 256 * 1024 * 1024;
const CHUNK_CLUSTERS = 2 ** 16;
/** Largest read of consecutive L2 tables. */
const MAX_READ = 4 * 1024 * 1024;
/** Shared clusters looked at in detail (more than this is refused without looking). */
const MAX_SHARED = 4096;

const META = 1;
const USED = 2;
const COMPRESSED = 4;
const COPIED = 8;

/** A flag byte per host cluster, in 64 KiB chunks allocated on first use (at most MAX_FLAG_BYTES). */
class ClusterFlags {
  #chunks: Array<Uint8Array | undefined> = [];
  bytes = 0;
  constructor(readonly file: string | undefined) {}
  get(c: number): number {
    const k = Math.floor(c / CHUNK_CLUSTERS);
    const chunk = this.#chunks[k];
    return chunk ? chunk[c - k * CHUNK_CLUSTERS]! : 0;
  }
  /** Sets `bits` on cluster `c` and returns the flags it had. */
  add(c: number, bits: number): number {
    const k = Math.floor(c / CHUNK_CLUSTERS);
    let chunk = this.#chunks[k];
    if (!chunk) {
      this.bytes += CHUNK_CLUSTERS;
      if (this.bytes > MAX_FLAG_BYTES) {
        throw unsupported(FORMAT, this.file, `refusing to open for writing: the image uses host clusters too scattered to check within ${MAX_FLAG_BYTES / 2 ** 20} MiB`, { field: 'L2 entry' });
      }
      chunk = this.#chunks[k] = new Uint8Array(CHUNK_CLUSTERS);
    }
    const i = c - k * CHUNK_CLUSTERS;
    const old = chunk[i]!;
    chunk[i] = old | bits;
    return old;
  }
}

/** A host cluster used more than once in the active layer. */
interface Shared {
  cluster: number;
  /** What the second use is ('L2 table', 'data cluster', 'compressed data'). */
  what: string;
  /** Where the entry that makes the second use lies. */
  at: number;
  /** The first use is metadata (header, L1, refcount structures, snapshot tables): never shareable. */
  metadata: boolean;
}

/** What the gate found, if anything: one sentence. */
export interface GateResult {
  problem: string | undefined;
  offset: number;
  /** L2 tables read (for measurements). */
  l2Tables: number;
}

/** Runs the gate's checks on an open image (read-only work: nothing is written). */
export async function inspectForWriting(s: Qcow2State, view: MappingView, refcountOf: (cluster: number) => Promise<number>): Promise<GateResult> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const activeEnd = view.l1Offset + h.l1Size * 8;
  for (const sn of s.snapshots) {
    const end = sn.l1TableOffset + sn.l1Size * 8;
    if (sn.l1Size > 0 && h.l1Size > 0 && sn.l1TableOffset < activeEnd && view.l1Offset < end) {
      const how = sn.l1TableOffset === view.l1Offset ? 'is' : 'overlaps';
      return { problem: `the L1 table of snapshot ${sn.id} at ${hex(sn.l1TableOffset)} ${how} the active L1 table at ${hex(view.l1Offset)}`, offset: sn.l1TableOffset, l2Tables: 0 };
    }
  }
  const flags = new ClusterFlags(s.file);
  const fileClusters = Math.ceil(s.fileSize / cs);
  const shared: Shared[] = [];
  let sharedCount = 0;
  const markRange = (offset: number, bytes: number) => {
    for (let c = Math.floor(offset / cs); c * cs < offset + bytes && c < fileClusters; c++) flags.add(c, META);
  };
  markRange(0, cs);
  markRange(view.l1Offset, h.l1Size * 8);
  markRange(h.refcountTableOffset, h.refcountTableClusters * cs);
  const rt = new Uint8Array(h.refcountTableClusters * cs);
  await s.storage.readInto(h.refcountTableOffset, rt);
  for (let i = 0; i < rt.length / 8; i++) {
    const off = entryOffset(readU32Be(rt, i * 8), readU32Be(rt, i * 8 + 4));
    if (off) markRange(off, cs);
  }
  for (const sn of s.snapshots) markRange(sn.l1TableOffset, sn.l1Size * 8);
  const note = (cluster: number, what: string, at: number, metadata: boolean) => {
    sharedCount++;
    if (shared.length < MAX_SHARED) shared.push({ cluster, what, at, metadata });
  };
  const useExclusive = (cluster: number, what: string, at: number, isCopied: boolean) => {
    if (cluster >= fileClusters) return; // past the end of the file: the reader's to report
    const old = flags.add(cluster, isCopied ? USED | COPIED : USED);
    if (old === 0) return;
    if (old & META) note(cluster, what, at, true);
    else if (old & COMPRESSED) note(cluster, 'compressed data', at, false);
    else if (old & USED) note(cluster, what, at, false);
  };

  // L2 tables of the active layer, read in file order, consecutive tables in one read.
  const inUse = Math.min(h.l1Size, Math.ceil(h.size / s.geom.l2Coverage));
  const tables: Array<[number, number]> = [];
  for (let i = 0; i < inUse; i++) {
    const hi = readU32Be(view.l1, i * 8);
    const l2 = entryOffset(hi, readU32Be(view.l1, i * 8 + 4));
    if (!l2 || l2 % cs || l2 < cs || l2 + cs > s.fileSize) continue; // the reader reports these
    useExclusive(l2 / cs, 'L2 table', view.l1Offset + i * 8, (hi & ENTRY_COPIED_HI) !== 0);
    tables.push([l2, i]);
  }
  tables.sort((a, b) => a[0] - b[0]);
  const buf = new Uint8Array(Math.min(MAX_READ, Math.max(cs, tables.length * cs)));
  const dv = new DataView(buf.buffer);
  const cb = s.entryGeom.clusterBits;
  const hiScale = 2 ** (32 - cb);
  const inCluster = (cs - 1) & ~0x1ff;
  const dataFile = s.entryGeom.dataFile;
  for (let t = 0; t < tables.length; ) {
    let n = 1;
    while (t + n < tables.length && (n + 1) * cs <= buf.length && tables[t + n]![0] === tables[t]![0] + n * cs) n++;
    await s.storage.readInto(tables[t]![0], buf.subarray(0, n * cs));
    for (let k = 0; k < n; k++) {
      const l2 = tables[t + k]![0];
      const table = buf.subarray(k * cs, (k + 1) * cs);
      for (let j = 0; j < s.geom.l2Entries; j++) {
        const at = l2 + j * s.geom.l2EntrySize;
        if (!s.entryGeom.extendedL2) {
          // Fast path for standard entries that are not compressed (most of them): no object per entry.
          const hi = dv.getUint32(k * cs + j * 8);
          if ((hi & ENTRY_COMPRESSED_HI) === 0) {
            const lo = dv.getUint32(k * cs + j * 8 + 4);
            // Cluster number from the two halves without a float division; unaligned or zero entries are the reader's.
            if ((lo & inCluster) !== 0 || dataFile) continue;
            const cluster = (hi & OFFSET_MASK_HI) * hiScale + (lo >>> cb);
            if (cluster !== 0) useExclusive(cluster, 'data cluster', at, (hi & ENTRY_COPIED_HI) !== 0);
            continue;
          }
        }
        let e;
        try {
          e = decodeL2Entry(table, j, s.entryGeom, s.file, l2);
        } catch {
          continue; // a bad entry is the reader's to report when it is read
        }
        if (e.type === 'compressed') {
          for (let c = Math.floor(e.host / cs); c * cs < e.host + e.size && c < fileClusters; c++) {
            const was = flags.add(c, COMPRESSED);
            if (was & META) note(c, 'compressed data', at, true);
            else if (was & USED) note(c, 'compressed data', at, false);
          }
        } else if (e.type !== 'unallocated' && e.host !== undefined && !s.entryGeom.dataFile) {
          useExclusive(e.host / cs, 'data cluster', at, e.copied);
        }
      }
    }
    t += n;
  }
  const l2Tables = tables.length;
  if (sharedCount > shared.length) {
    const first = shared[0]!;
    return { problem: `${sharedCount} host clusters are used more than once by the active layer (the first: ${first.what} at ${hex(first.cluster * cs)}, entry at ${hex(first.at)})`, offset: first.at, l2Tables };
  }
  const extra = new Map<number, number>();
  for (const x of shared) extra.set(x.cluster, (extra.get(x.cluster) ?? 0) + 1);
  for (const x of shared) {
    const host = hex(x.cluster * cs);
    if (x.metadata) return { problem: `the ${x.what} at ${host} (entry at ${hex(x.at)}) lies on metadata`, offset: x.at, l2Tables };
    const users = 1 + extra.get(x.cluster)!;
    const refcount = await refcountOf(x.cluster);
    const copied = (flags.get(x.cluster) & COPIED) !== 0;
    if (refcount < users || copied) {
      const as = x.what === 'compressed data' ? 'compressed data spans into a cluster in use' : `${x.what} is used ${users} times`;
      return { problem: `${as} at ${host} (entry at ${hex(x.at)}) with refcount ${refcount}${copied ? ' and the COPIED flag set' : ''}`, offset: x.at, l2Tables };
    }
  }
  return { problem: undefined, offset: 0, l2Tables };
}

/**
 * Refuses a writable open of an image that fails the gate, with the
 * problem named in one sentence (ERR_IMG_CORRUPT).
 */
export async function gateWritableOpen(s: Qcow2State, view: MappingView, refcountOf: (cluster: number) => Promise<number>): Promise<void> {
  const r = await inspectForWriting(s, view, refcountOf);
  if (r.problem) {
    throw corrupt(FORMAT, s.file, `refusing to open for writing: ${r.problem}; img check -r all may repair it, read-only opens still work`, { field: 'L2 entry', offset: r.offset });
  }
}
