/**
 * The consistency gate of a writable open: the checks that cost metadata
 * bytes, not data. One pass over the active L1 and L2 tables marks every
 * host cluster in bitsets (allocated in 64 KiB chunks as clusters are
 * seen, so memory follows the metadata); a cluster seen twice is a
 * candidate, refused unless its refcount covers the sharing and no COPIED
 * flag allows writing it in place. Snapshot L1 tables may not be or
 * overlap the active one. `img check -r all` repairs what refcounts and
 * COPIED flags can repair; the gate then lets the image through.
 */
import { corrupt, hex, readU32Be } from '@img/block';
import { decodeL2Entry, entryOffset } from './mapping.js';
import { ENTRY_COPIED_HI } from './constants.js';
import type { MappingView } from './reader.js';
import type { Qcow2State } from './state.js';

const FORMAT = 'qcow2';
/** Clusters per bitset chunk (64 KiB of bits). */
const CHUNK_BITS = 19;
/** Largest read of consecutive L2 tables. */
const MAX_READ = 4 * 1024 * 1024;
/** Shared clusters looked at in detail (more than this is refused without looking). */
const MAX_SHARED = 4096;

/** A bitset over cluster numbers, chunks allocated on first use. */
class ClusterBits {
  #chunks = new Map<number, Uint8Array>();
  has(c: number): boolean {
    const chunk = this.#chunks.get(Math.floor(c / 2 ** CHUNK_BITS));
    if (!chunk) return false;
    const i = c % 2 ** CHUNK_BITS;
    return (chunk[i >> 3]! & (1 << (i & 7))) !== 0;
  }
  add(c: number): void {
    const k = Math.floor(c / 2 ** CHUNK_BITS);
    let chunk = this.#chunks.get(k);
    if (!chunk) {
      chunk = new Uint8Array(2 ** (CHUNK_BITS - 3));
      this.#chunks.set(k, chunk);
    }
    const i = c % 2 ** CHUNK_BITS;
    chunk[i >> 3]! |= 1 << (i & 7);
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
  const meta = new ClusterBits();
  const used = new ClusterBits();
  const comp = new ClusterBits();
  const copied = new ClusterBits();
  const shared: Shared[] = [];
  let sharedCount = 0;
  const markRange = (offset: number, bytes: number) => {
    for (let c = Math.floor(offset / cs); c * cs < offset + bytes; c++) meta.add(c);
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
    if (meta.has(cluster)) note(cluster, what, at, true);
    else if (comp.has(cluster)) note(cluster, 'compressed data', at, false);
    else if (used.has(cluster)) note(cluster, what, at, false);
    used.add(cluster);
    if (isCopied) copied.add(cluster);
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
  for (let t = 0; t < tables.length; ) {
    let n = 1;
    while (t + n < tables.length && (n + 1) * cs <= buf.length && tables[t + n]![0] === tables[t]![0] + n * cs) n++;
    await s.storage.readInto(tables[t]![0], buf.subarray(0, n * cs));
    for (let k = 0; k < n; k++) {
      const l2 = tables[t + k]![0];
      const table = buf.subarray(k * cs, (k + 1) * cs);
      for (let j = 0; j < s.geom.l2Entries; j++) {
        let e;
        try {
          e = decodeL2Entry(table, j, s.entryGeom, s.file, l2);
        } catch {
          continue; // a bad entry is the reader's to report when it is read
        }
        const at = l2 + j * s.geom.l2EntrySize;
        if (e.type === 'compressed') {
          for (let c = Math.floor(e.host / cs); c * cs < e.host + e.size; c++) {
            if (meta.has(c)) note(c, 'compressed data', at, true);
            else if (used.has(c)) note(c, 'compressed data', at, false);
            comp.add(c);
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
    if (refcount < users || copied.has(x.cluster)) {
      const as = x.what === 'compressed data' ? 'compressed data spans into a cluster in use' : `${x.what} is used ${users} times`;
      return { problem: `${as} at ${host} (entry at ${hex(x.at)}) with refcount ${refcount}${copied.has(x.cluster) ? ' and the COPIED flag set' : ''}`, offset: x.at, l2Tables };
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
