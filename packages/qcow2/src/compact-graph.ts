/**
 * The reference graph of a qcow2 file, as compactQcow2 needs it: every
 * host object (a run of clusters that one thing owns: a data cluster, a
 * run of host clusters holding compressed data, an L2 table, a refcount
 * block, the refcount table, the active and snapshot L1 tables, the
 * snapshot table, the bitmap directory, bitmap tables and bitmap data
 * clusters) with every place that points at it (a "site": a 64-bit field
 * in another object or in the header cluster), and the refcounts of the
 * file held in memory so that a move can update them sector by sector.
 *
 * Every field that points at a cluster keeps the host offset in its low
 * bits, aligned to at least 512 bytes (spec: L1/L2 entries, refcount table
 * entries, compressed cluster descriptors, bitmap table entries, and the
 * header's and directories' offsets), so moving an object by `delta` bytes
 * is the same 64-bit addition at each of its sites, whatever the flags
 * around the offset are.
 */
import { corrupt, hex, readOnlyError, readU32Be, readU64Be, unsafe, unsupported, writeU32Be, type Storage } from '@img/block';
import { type Qcow2Header } from './header.js';
import { readHeaderCluster } from './header-check.js';
import { extensionDataOffset, parseBitmapsExtension, parseExtensions } from './extensions.js';
import { readRefcount, writeRefcount } from './refcount-entry.js';
import { readSnapshotTable, snapshotEntrySize } from './snapshot.js';
import { entryHex, forEachL2Entry, forEachL2Table, l1FlagsWithoutOffset, l2TableOffsets } from './l2-walk.js';
import { entryOffset } from './mapping.js';
import { EXT_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTENDED_L2, KNOWN_INCOMPAT_MASK, MAX_BITMAP_DIRECTORY_SIZE, MAX_BITMAPS, MAX_L1_TABLE_BYTES, MAX_REFCOUNT_TABLE_BYTES } from './constants.js';

const FORMAT = 'qcow2';
const TWO32 = 0x1_0000_0000;

/** Refcount blocks are written back in pieces of this many bytes (a sector: written whole or not at all). */
const REFCOUNT_PIECE = 512;

/** What a host object is, in the spec's words. */
export type HostObjectKind = 'data' | 'compressed' | 'l2' | 'refcount-block' | 'refcount-table' | 'l1' | 'snapshot-table' | 'snapshot-l1' | 'bitmap-directory' | 'bitmap-table' | 'bitmap-data';

/** A 64-bit field that points at an object: at `pos` bytes into `holder` (undefined: the header cluster). */
export interface Site {
  holder: HostObject | undefined;
  pos: number;
}

/** A run of clusters one thing owns, and the fields that point at it. */
export interface HostObject {
  kind: HostObjectKind;
  /** Where it is now (a cluster boundary). */
  at: number;
  clusters: number;
  sites: Site[];
  /** A refcount block's entries (kept in memory; written through sector by sector). */
  bytes?: Uint8Array;
}

/** The file's objects and refcounts. */
export interface Qcow2Graph {
  file: string;
  header: Qcow2Header;
  clusterSize: number;
  fileSize: number;
  /** Every object but the header cluster, in no particular order. */
  objects: HostObject[];
  refcountTable: HostObject;
  /** The refcount block of each refcount table entry (undefined where the entry is 0). */
  refcountBlocks: Array<HostObject | undefined>;
  refcountBits: number;
  /** Refcount entries per refcount block. */
  entriesPerBlock: number;
  /** The object that owns each cluster of the file (index 0: the header cluster, never set). */
  owner: Array<HostObject | undefined>;
}

/** Reads the 64-bit field at `at` as hi/lo words, adds `delta` (a multiple of 512, maybe negative), writes it back. */
export function addToField(buf: Uint8Array, at: number, delta: number): void {
  const hi = readU32Be(buf, at);
  const lo = readU32Be(buf, at + 4);
  const dLo = delta % TWO32;
  const dHi = (delta - dLo) / TWO32;
  let sum = lo + dLo;
  let carry = 0;
  if (sum >= TWO32) {
    sum -= TWO32;
    carry = 1;
  } else if (sum < 0) {
    sum += TWO32;
    carry = -1;
  }
  writeU32Be(buf, at, (hi + dHi + carry) >>> 0);
  writeU32Be(buf, at + 4, sum >>> 0);
}

/** The current file position of a site. */
export function siteOffset(site: Site): number {
  return (site.holder?.at ?? 0) + site.pos;
}

/** The refcount of a cluster (undefined where no refcount block covers it). */
export function refcountOf(g: Qcow2Graph, cluster: number): number | undefined {
  const block = g.refcountBlocks[Math.floor(cluster / g.entriesPerBlock)];
  if (!block?.bytes) return undefined;
  return readRefcount(block.bytes, cluster % g.entriesPerBlock, g.refcountBits);
}

function roundUp8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/**
 * Reads the header, the refcounts and every table of the qcow2 file in
 * `storage` into a graph. Refuses what compaction cannot keep consistent:
 * a dirty image (its refcounts are not exact), one marked corrupt,
 * encryption, unknown incompatible features, any cluster two objects
 * claim, and an L1 entry (a snapshot's too) of flags without an L2 table
 * offset.
 */
export async function readQcow2Graph(storage: Storage): Promise<Qcow2Graph> {
  const file = storage.name;
  // Both callers write: refuse a read-only storage before anything is read.
  if (storage.readOnly) throw readOnlyError(FORMAT, file);
  const fileSize = await storage.size();
  const head = await storage.read(0, Math.min(fileSize, 2 * 1024 * 1024));
  const { header } = readHeaderCluster(head, file);
  const clusterSize = 2 ** header.clusterBits;
  const bit = (n: number) => (header.incompatibleFeatures >> BigInt(n)) & 1n;
  if (header.incompatibleFeatures & ~KNOWN_INCOMPAT_MASK) throw unsupported(FORMAT, file, 'the image has incompatible features this code does not know', { field: 'incompatible_features', offset: 72 });
  if (bit(INCOMPAT_CORRUPT)) throw corrupt(FORMAT, file, 'the image is marked corrupt; repair it first (img check -r all)', { field: 'incompatible_features', offset: 72 });
  if (bit(INCOMPAT_DIRTY)) throw unsafe(FORMAT, file, 'the image is dirty (lazy refcounts not written back); run img check -r all before compacting', { field: 'incompatible_features', offset: 72 });
  if (header.cryptMethod !== 0) throw unsupported(FORMAT, file, 'encrypted images cannot be compacted', { field: 'crypt_method', offset: 32, actual: header.cryptMethod });
  const dataFile = bit(INCOMPAT_DATA_FILE) === 1n;
  const extendedL2 = bit(INCOMPAT_EXTENDED_L2) === 1n;
  const cluster0 = head.subarray(0, Math.min(head.length, clusterSize));
  const extensions = header.version >= 3 || header.headerLength > 72 ? parseExtensions(cluster0, header.headerLength, clusterSize, file) : [];
  const fileClusters = Math.ceil(fileSize / clusterSize);
  const owner: Array<HostObject | undefined> = new Array<HostObject | undefined>(fileClusters);
  const objects: HostObject[] = [];
  const byOffset = new Map<number, HostObject>();

  const check = (offset: number, bytes: number, what: string, site: string, siteOffsetInFile: number) => {
    if (offset % clusterSize !== 0 || offset < clusterSize || offset + bytes > Math.ceil(fileSize / clusterSize) * clusterSize) {
      throw corrupt(FORMAT, file, `${what} at ${hex(offset)} (${site} at ${hex(siteOffsetInFile)}) is unaligned, overlaps the header or lies past the end of the file`, { field: site, offset: siteOffsetInFile, actual: offset });
    }
  };
  /** The object at `offset` (shared objects are found again), its site added. */
  const claim = (kind: HostObjectKind, offset: number, clusters: number, site: Site, siteName: string): HostObject => {
    check(offset, clusters * clusterSize, kind, siteName, siteOffset(site));
    const known = byOffset.get(offset);
    if (known) {
      if (known.kind !== kind || known.clusters !== clusters || (kind !== 'data' && kind !== 'l2')) {
        throw corrupt(FORMAT, file, `cluster ${hex(offset)} is used as ${known.kind} and as ${kind} (${siteName} at ${hex(siteOffset(site))}); run img check`, { field: siteName, offset: siteOffset(site), actual: offset });
      }
      known.sites.push(site);
      return known;
    }
    const obj: HostObject = { kind, at: offset, clusters, sites: [site] };
    for (let c = offset / clusterSize; c < offset / clusterSize + clusters; c++) {
      if (owner[c]) throw corrupt(FORMAT, file, `cluster ${hex(c * clusterSize)} is used as ${owner[c]!.kind} and as ${kind} (${siteName} at ${hex(siteOffset(site))}); run img check`, { field: siteName, offset: siteOffset(site), actual: offset });
      owner[c] = obj;
    }
    byOffset.set(offset, obj);
    objects.push(obj);
    return obj;
  };
  const readObject = async (obj: HostObject, bytes = obj.clusters * clusterSize): Promise<Uint8Array> => {
    const out = new Uint8Array(bytes);
    const n = await storage.readInto(obj.at, out);
    if (n < out.length) out.fill(0, n);
    return out;
  };
  /** The host offset in an 8-byte entry (bits 9-55), 0 for none. */
  const entryHost = (buf: Uint8Array, at: number): number => entryOffset(readU32Be(buf, at), readU32Be(buf, at + 4));

  // Refcounts (spec: "Host cluster management").
  const refcountBits = 2 ** header.refcountOrder;
  const entriesPerBlock = (clusterSize * 8) / refcountBits;
  if (header.refcountTableClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
    throw corrupt(FORMAT, file, `refcount_table_clusters ${header.refcountTableClusters} at 0x38 is too large`, { field: 'refcount_table_clusters', offset: 56, actual: header.refcountTableClusters });
  }
  const refcountTable = claim('refcount-table', header.refcountTableOffset, header.refcountTableClusters, { holder: undefined, pos: 48 }, 'refcount_table_offset');
  const tableBytes = await readObject(refcountTable);
  const refcountBlocks: Array<HostObject | undefined> = new Array<HostObject | undefined>(tableBytes.length / 8);
  for (let i = 0; i < refcountBlocks.length; i++) {
    const offset = entryHost(tableBytes, i * 8);
    if (offset === 0) continue;
    const block = claim('refcount-block', offset, 1, { holder: refcountTable, pos: i * 8 }, 'refcount table entry');
    block.bytes = await readObject(block);
    refcountBlocks[i] = block;
  }

  // L1 and L2 tables, active and of each snapshot.
  const l2Tables: HostObject[] = [];
  const compressedRefs: Array<{ first: number; last: number; site: Site }> = [];
  const l1Bytes = (size: number, field: string, at: number) => {
    if (size * 8 > MAX_L1_TABLE_BYTES) throw corrupt(FORMAT, file, `${field} ${size} at ${hex(at)} is too large`, { field, offset: at, actual: size });
    return Math.max(1, Math.ceil((size * 8) / clusterSize));
  };
  const readL1 = async (kind: 'l1' | 'snapshot-l1', offset: number, size: number, site: Site, field: string) => {
    if (size === 0 && offset === 0) return;
    const l1 = claim(kind, offset, l1Bytes(size, field, siteOffset(site)), site, field);
    const bytes = await readObject(l1, size * 8);
    const l2s = l2TableOffsets({ l1: bytes, offset, entries: size }, clusterSize, file, 'raw');
    for (let i = 0; i < l2s.length; i++) {
      const l2 = l2s[i]!;
      // Flags without an offset map nothing, but qemu-img check reads the header as that L2 table: a leak given back
      // or a cut file turns header words into more corruptions there (fuzz seed 1119 case 103). Writable opens refuse it too.
      if (l2 === 0 && l1FlagsWithoutOffset(bytes, i)) {
        const name = kind === 'l1' ? 'L1 entry' : 'snapshot L1 entry';
        throw corrupt(FORMAT, file, `${name} ${i} at ${hex(offset + i * 8)} has flags (0x${entryHex(bytes, i * 8)}) but no L2 table offset; run img check -r all`, { field: name, offset: offset + i * 8 });
      }
      if (l2 === 0) continue;
      const known = byOffset.get(l2);
      const table = claim('l2', l2, 1, { holder: l1, pos: i * 8 }, 'L1 entry');
      if (!known) l2Tables.push(table);
    }
  };
  await readL1('l1', header.l1TableOffset, header.l1Size, { holder: undefined, pos: 40 }, 'l1_table_offset');
  if (header.nbSnapshots > 0) {
    const snapshots = await readSnapshotTable(storage, header.snapshotsOffset, header.nbSnapshots, fileSize, clusterSize, file);
    const last = snapshots[snapshots.length - 1]!;
    const bytes = last.entryOffset + snapshotEntrySize(last) - header.snapshotsOffset;
    const table = claim('snapshot-table', header.snapshotsOffset, Math.ceil(bytes / clusterSize), { holder: undefined, pos: 64 }, 'snapshots_offset');
    for (const s of snapshots) await readL1('snapshot-l1', s.l1TableOffset, s.l1Size, { holder: table, pos: s.entryOffset - header.snapshotsOffset }, 'snapshot l1_table_offset');
  }
  // Entries through the codec; one that does not decode stops the compaction (moving clusters of a corrupt image would spread the damage).
  const source = { storage, file, entryGeom: { clusterBits: header.clusterBits, clusterSize, extendedL2, zeroFlag: header.version >= 3 && !extendedL2, dataFile } };
  await forEachL2Table(
    source,
    l2Tables.map((t) => t.at),
    (bytes, at, k) => {
      const table = l2Tables[k]!;
      forEachL2Entry(
        source,
        bytes,
        at,
        (e, _j, entryAt) => {
          const site = { holder: table, pos: entryAt - at };
          if (e.type === 'compressed') {
            if (e.host < clusterSize || e.host >= fileSize) {
              throw corrupt(FORMAT, file, `compressed cluster at ${hex(e.host)} (L2 entry at ${hex(entryAt)}) lies outside the file`, { field: 'L2 entry', offset: entryAt, actual: e.host });
            }
            // Sectors past the end of the file are allowed (qemu does not pad the last compressed cluster).
            const last = Math.min(Math.floor((e.host + e.size - 1) / clusterSize), fileClusters - 1);
            compressedRefs.push({ first: Math.floor(e.host / clusterSize), last, site });
          } else if (e.type !== 'unallocated' && e.host !== undefined && !dataFile) {
            // An external data file holds the data clusters: they are not in this file and have no refcount here.
            claim('data', e.host, 1, site, 'L2 entry');
          }
        },
        (error) => {
          throw error;
        },
      );
    },
  );
  // Compressed data: host clusters joined by a compressed cluster that spans them move together.
  compressedRefs.sort((a, b) => a.first - b.first);
  for (let i = 0; i < compressedRefs.length;) {
    const first = compressedRefs[i]!.first;
    let last = compressedRefs[i]!.last;
    const sites: Site[] = [];
    while (i < compressedRefs.length && compressedRefs[i]!.first <= last) {
      last = Math.max(last, compressedRefs[i]!.last);
      sites.push(compressedRefs[i]!.site);
      i++;
    }
    const obj: HostObject = { kind: 'compressed', at: first * clusterSize, clusters: last - first + 1, sites };
    for (let c = first; c <= last; c++) {
      if (owner[c]) throw corrupt(FORMAT, file, `cluster ${hex(c * clusterSize)} is used as ${owner[c]!.kind} and as compressed data; run img check`, { field: 'L2 entry', offset: siteOffset(sites[0]!), actual: c * clusterSize });
      owner[c] = obj;
    }
    objects.push(obj);
  }

  // Bitmaps (spec: "Bitmaps extension", "Bitmap directory", "Bitmap table").
  const bitmapsExt = parseBitmapsExtension(
    extensions.find((e) => e.type === EXT_BITMAPS),
    file,
  );
  if (bitmapsExt && bitmapsExt.nbBitmaps > 0) {
    const extAt = extensionDataOffset(extensions, header.headerLength, EXT_BITMAPS)!;
    const { nbBitmaps, bitmapDirectorySize: size, bitmapDirectoryOffset: offset } = bitmapsExt;
    if (nbBitmaps > MAX_BITMAPS || size > MAX_BITMAP_DIRECTORY_SIZE) throw corrupt(FORMAT, file, `bitmap directory at ${hex(offset)} (${size} bytes, ${nbBitmaps} bitmaps) is out of bounds`, { field: 'bitmap_directory_size', offset: extAt + 8 });
    const dir = claim('bitmap-directory', offset, Math.ceil(size / clusterSize), { holder: undefined, pos: extAt + 16 }, 'bitmap_directory_offset');
    const dirBytes = await readObject(dir, size);
    for (let at = 0, i = 0; i < nbBitmaps; i++) {
      if (at + 24 > dirBytes.length) throw corrupt(FORMAT, file, `bitmap directory entry ${i} runs past the directory`, { field: 'bitmap directory', offset: offset + at });
      const tableOffset = readU64Be(dirBytes, at, { field: 'bitmap_table_offset', format: FORMAT, file }); // 0: bitmap_table_offset
      const tableSize = readU32Be(dirBytes, at + 8); // 8: bitmap_table_size (entries)
      const nameSize = (dirBytes[at + 18]! << 8) | dirBytes[at + 19]!; // 18: name_size
      const extraSize = readU32Be(dirBytes, at + 20); // 20: extra_data_size
      if (tableSize > 0) {
        if (tableSize * 8 > MAX_L1_TABLE_BYTES) throw corrupt(FORMAT, file, `bitmap_table_size ${tableSize} of bitmap ${i} is too large`, { field: 'bitmap_table_size', offset: offset + at + 8 });
        const table = claim('bitmap-table', tableOffset, Math.ceil((tableSize * 8) / clusterSize), { holder: dir, pos: at }, 'bitmap_table_offset');
        const entries = await readObject(table, tableSize * 8);
        for (let j = 0; j < tableSize; j++) {
          const host = entryHost(entries, j * 8);
          if (host !== 0) claim('bitmap-data', host, 1, { holder: table, pos: j * 8 }, 'bitmap table entry');
        }
      }
      at = roundUp8(at + 24 + extraSize + nameSize);
    }
  }

  const g: Qcow2Graph = { file, header, clusterSize, fileSize, objects, refcountTable, refcountBlocks, refcountBits, entriesPerBlock, owner };
  // A referenced cluster without a refcount would be given away by the next allocation: refuse.
  for (const obj of objects) {
    for (let c = obj.at / clusterSize; c < obj.at / clusterSize + obj.clusters; c++) {
      if (!refcountOf(g, c)) {
        throw corrupt(FORMAT, file, `cluster ${hex(c * clusterSize)} (${obj.kind}) is in use but its refcount is 0; run img check -r all`, { field: 'refcount', offset: c * clusterSize });
      }
    }
  }
  return g;
}

/** Sets refcounts in memory and writes each changed piece of a refcount block once, where the block is now. */
export async function setRefcounts(storage: Storage, g: Qcow2Graph, changes: ReadonlyArray<readonly [number, number]>): Promise<void> {
  const dirty = new Map<HostObject, Set<number>>();
  for (const [cluster, value] of changes) {
    const block = g.refcountBlocks[Math.floor(cluster / g.entriesPerBlock)]!;
    const index = cluster % g.entriesPerBlock;
    writeRefcount(block.bytes!, index, g.refcountBits, value);
    let pieces = dirty.get(block);
    if (!pieces) dirty.set(block, (pieces = new Set()));
    pieces.add(Math.floor((index * g.refcountBits) / 8 / REFCOUNT_PIECE));
  }
  for (const [block, pieces] of dirty) {
    for (const p of [...pieces].sort((a, b) => a - b)) {
      await storage.write(block.at + p * REFCOUNT_PIECE, block.bytes!.subarray(p * REFCOUNT_PIECE, (p + 1) * REFCOUNT_PIECE));
    }
  }
}
