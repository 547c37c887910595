/**
 * The metadata of a bulk-written image (see bulk-writer.ts): the empty
 * image it starts as, and the commit that makes the copied data part of
 * it at the end.
 *
 * The empty image has qemu-img create's layout (header in cluster 0, the
 * refcount table from cluster 1, then the refcount blocks, then the L1
 * table), so from the first flush on the file is a valid qcow2 image that
 * reads as zeros, as `qemu-img convert`'s target is; qemu's lock probe
 * then sees a qcow2 image. The data and the L2 tables go after it, which
 * leaves that image untouched until the commit.
 *
 * The commit keeps the image valid at every write: data and L2 tables
 * flushed; the refcount blocks (in place, new ones appended), flushed; the
 * refcount table (in place, or a larger copy appended with the header
 * switched to it), flushed, after which the new clusters are only leaks;
 * the L1 table in place in one write, flushed, after which the image holds
 * the conversion; a moved table's old clusters freed last.
 */
import { invalidArg, writeU64Be } from '@img/block';
import type { Storage } from '@img/block';
import { MAX_L1_TABLE_BYTES, MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { encodeDataEntries } from './l2-entry.js';
import { writeEntryOffset, type EntryGeometry } from './mapping.js';
import { writeRefcount } from './refcount-entry.js';
import { headerCluster, headerFor, type Qcow2Layout } from './create.js';

const FORMAT = 'qcow2';
/** Metadata goes out in writes of at most this many bytes (the tables of a 1 TiB image can be 128 MiB). */
const METADATA_PIECE = 4 * 1024 * 1024;
const SECTOR = 512;

/** Where the empty image keeps its tables, in clusters. */
export interface BulkLayout {
  clusterSize: number;
  /** Entries per L2 table. */
  perTable: number;
  l1Entries: number;
  l1At: number;
  l1Clusters: number;
  rtAt: number;
  rtClusters: number;
  blocksAt: number;
  blocks: number;
  /** The first cluster after the empty image: data starts here. */
  end: number;
}

/**
 * The layout of the empty image, or undefined when the tables would pass
 * the spec's bounds (createQcow2 then refuses with its own message). The
 * refcount blocks cover the empty image itself; qemu-img create places
 * one block at cluster 2 and the L1 table from cluster 3, and so do we
 * wherever one block covers the L1 table (small clusters need more).
 */
export function bulkLayout(l: Qcow2Layout): BulkLayout | undefined {
  const cs = 2 ** l.clusterBits;
  const perTable = cs / (l.extendedL2 ? 16 : 8);
  const l1Entries = Math.ceil(l.size / (perTable * cs));
  if (l1Entries * 8 > MAX_L1_TABLE_BYTES) return undefined;
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);
  const perBlock = (cs * 8) / 2 ** l.refcountOrder;
  let blocks = 1;
  let rtClusters = 1;
  for (;;) {
    const total = 1 + rtClusters + blocks + l1Clusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needRt = Math.ceil((needBlocks * 8) / cs);
    if (needBlocks <= blocks && needRt <= rtClusters) break;
    blocks = Math.max(blocks, needBlocks);
    rtClusters = Math.max(rtClusters, needRt);
  }
  if (rtClusters * cs > MAX_REFCOUNT_TABLE_BYTES) return undefined;
  const rtAt = 1;
  const blocksAt = rtAt + rtClusters;
  const l1At = blocksAt + blocks;
  return { clusterSize: cs, perTable, l1Entries, l1At, l1Clusters, rtAt, rtClusters, blocksAt, blocks, end: l1At + l1Clusters };
}

/**
 * Writes the empty image into `storage` (already empty): the refcount
 * table and blocks, flushed, then the header, flushed. The L1 table is the
 * zeros the file is extended with.
 */
export async function writeEmptyImage(storage: Storage, l: Qcow2Layout, b: BulkLayout): Promise<void> {
  const cs = b.clusterSize;
  const tables = new Uint8Array((b.rtClusters + b.blocks) * cs);
  fillRefcountTable(tables, b.blocks, (k) => (b.blocksAt + k) * cs);
  fillRefcountBlocks(tables.subarray(b.rtClusters * cs), 0, b.blocks, b.end, l.refcountOrder, cs, 1);
  await storage.write(b.rtAt * cs, tables);
  await storage.truncate(b.end * cs);
  await storage.flush();
  await writeHeader(storage, l, b, b.rtAt, b.rtClusters);
  await storage.flush();
}

/**
 * Makes the data part of the image. Host clusters `[b.end, dataEnd)` hold
 * data (every one of them in use); `tables` maps each L1 index in use to
 * the host cluster of each entry of its L2 table (0: unallocated), and
 * `used` (where given) the entries of each that may hold one, as (first,
 * count) pairs (SlotMap.used): the others are not looked at. The L2
 * tables go after the data, new refcount blocks (and a moved refcount
 * table) after them; see the module comment for the order.
 */
export async function commitBulkImage(storage: Storage, l: Qcow2Layout, b: BulkLayout, tables: ReadonlyMap<number, Float64Array>, dataEnd: number, used?: ReadonlyMap<number, readonly number[]>): Promise<void> {
  const cs = b.clusterSize;
  const bits = 2 ** l.refcountOrder;
  const perBlock = (cs * 8) / bits;
  const order = [...tables.keys()].sort((x, y) => x - y);
  const l2At = dataEnd;
  const afterL2 = l2At + order.length;
  // New refcount blocks (and a new table where the old one is too small) count themselves: grow until they cover every cluster.
  let blocks = b.blocks;
  let rtClusters = 0;
  for (;;) {
    const total = afterL2 + (blocks - b.blocks) + rtClusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needRt = Math.ceil((needBlocks * 8) / cs);
    const wantRt = needRt > b.rtClusters ? needRt : 0;
    if (needBlocks <= blocks && wantRt <= rtClusters) break;
    blocks = Math.max(blocks, needBlocks);
    rtClusters = Math.max(rtClusters, wantRt);
  }
  if (rtClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw invalidArg(FORMAT, `${storage.name}: the image would need a refcount table over 8 MiB (${dataEnd} clusters of data); use a larger cluster_size`, { file: storage.name, field: 'cluster_size' });
  }
  const newBlocksAt = afterL2;
  const moved = rtClusters > 0;
  const rtAt = moved ? newBlocksAt + (blocks - b.blocks) : b.rtAt;
  const total = moved ? rtAt + rtClusters : newBlocksAt + (blocks - b.blocks);
  const blockAt = (k: number) => (k < b.blocks ? b.blocksAt + k : newBlocksAt + k - b.blocks);

  // 1. The L2 tables after the data; both only become reachable through the L1 table.
  const g: EntryGeometry = { clusterBits: l.clusterBits, clusterSize: cs, extendedL2: l.extendedL2, zeroFlag: l.version >= 3 && !l.extendedL2, dataFile: false };
  const perPiece = Math.max(1, Math.floor(METADATA_PIECE / cs));
  for (let k = 0; k < order.length; k += perPiece) {
    const group = order.slice(k, k + perPiece);
    const buf = new Uint8Array(group.length * cs);
    group.forEach((t, j) => encodeDataEntries(buf.subarray(j * cs, (j + 1) * cs), tables.get(t)!, g, used?.get(t)));
    await storage.write((l2At + k) * cs, buf);
  }
  await storage.flush();

  // 2. Refcount blocks: every cluster of the file is in use once (the old table too, until nothing points at it).
  await writeBlocks(storage, 0, b.blocks, b.blocksAt, total, l.refcountOrder, cs, 1);
  await writeBlocks(storage, b.blocks, blocks, newBlocksAt, total, l.refcountOrder, cs, 1);
  // The file ends at its last cluster: blocks the copy allocated ahead of the data and nothing used go back.
  await storage.truncate(total * cs);
  await storage.flush();

  // 3. The refcount table: in place, or a copy that holds every block with the header switched to it.
  const rt = new Uint8Array((moved ? rtClusters : b.rtClusters) * cs);
  fillRefcountTable(rt, blocks, (k) => blockAt(k) * cs);
  await storage.write(rtAt * cs, rt);
  await storage.flush();
  if (moved) {
    await writeHeader(storage, l, b, rtAt, rtClusters);
    await storage.flush();
  }

  // 4. The L1 table in place, one write over the entries in use: the image now holds the data.
  if (order.length) {
    const first = Math.floor((order[0]! * 8) / SECTOR) * SECTOR;
    const end = Math.ceil(((order[order.length - 1]! + 1) * 8) / SECTOR) * SECTOR;
    const l1 = new Uint8Array(end - first);
    order.forEach((t, k) => writeEntryOffset(l1, t * 8 - first, (l2At + k) * cs, true));
    await storage.write(b.l1At * cs + first, l1);
    await storage.flush();
  }

  // 5. The old table's clusters are free once nothing points at them.
  if (moved) {
    const oldEnd = b.rtAt + b.rtClusters;
    const firstBlock = Math.floor(b.rtAt / perBlock);
    const lastBlock = Math.floor((oldEnd - 1) / perBlock);
    await writeBlocks(storage, firstBlock, lastBlock + 1, b.blocksAt + firstBlock, total, l.refcountOrder, cs, (c) => (c >= b.rtAt && c < oldEnd ? 0 : 1));
    await storage.flush();
  }
}

async function writeHeader(storage: Storage, l: Qcow2Layout, b: BulkLayout, rtAt: number, rtClusters: number): Promise<void> {
  const cs = b.clusterSize;
  const h = headerFor(l, { l1Entries: b.l1Entries, l1Offset: b.l1Entries ? b.l1At * cs : 0, refcountTableOffset: rtAt * cs, refcountTableClusters: rtClusters });
  await storage.write(0, headerCluster(l, h, cs));
}

/** Writes refcount blocks `[from, to)` (contiguous from host cluster `at`) for a file of `total` clusters. */
async function writeBlocks(storage: Storage, from: number, to: number, at: number, total: number, order: number, cs: number, count: number | ((cluster: number) => number)): Promise<void> {
  const perPiece = Math.max(1, Math.floor(METADATA_PIECE / cs));
  for (let k = from; k < to; k += perPiece) {
    const n = Math.min(perPiece, to - k);
    const buf = new Uint8Array(n * cs);
    fillRefcountBlocks(buf, k, k + n, total, order, cs, count);
    await storage.write((at + k - from) * cs, buf);
  }
}

/**
 * Fills `buf` with refcount blocks `[from, to)`: cluster c below `total`
 * counts `count` (or `count(c)`). A constant count of 16-bit refcounts (the
 * default order) is stored without a call per cluster: this code runs once
 * per image, unoptimised, over every cluster of it.
 */
function fillRefcountBlocks(buf: Uint8Array, from: number, to: number, total: number, order: number, cs: number, count: number | ((cluster: number) => number)): void {
  const bits = 2 ** order;
  const perBlock = (cs * 8) / bits;
  const first = from * perBlock;
  const end = Math.min(total, to * perBlock);
  if (typeof count === 'number' && bits === 16) {
    for (let i = 0; i < end - first; i++) {
      buf[2 * i] = count >>> 8;
      buf[2 * i + 1] = count & 0xff;
    }
    return;
  }
  for (let c = first; c < end; c++) writeRefcount(buf, c - first, bits, typeof count === 'number' ? count : count(c));
}

function fillRefcountTable(buf: Uint8Array, blocks: number, offsetOf: (k: number) => number): void {
  for (let k = 0; k < blocks; k++) writeU64Be(buf, k * 8, offsetOf(k));
}
