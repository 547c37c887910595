/**
 * Where createQcow2 puts a new image's clusters: the two layouts qemu-img
 * create leaves. Pure arithmetic over cluster indexes; create.ts writes
 * the bytes.
 */
import { refcountFixedPoint } from './refcount-entry.js';

/** What a cluster of a new image holds. */
export type CreateClusterRole = { kind: 'header' } | { kind: 'refcount-table'; index: number } | { kind: 'refcount-block'; index: number } | { kind: 'l1'; index: number } | { kind: 'l2'; index: number } | { kind: 'data' } | { kind: 'free' };

/** The cluster positions of a new image (indexes in clusters, not bytes). */
export interface CreatePlan {
  /** Clusters in the file. */
  total: number;
  rtAt: number;
  rtClusters: number;
  refcountBlocks: number;
  refcountBlockAt(index: number): number;
  l1At: number;
  l1Clusters: number;
  l2Tables: number;
  l2At(index: number): number;
  /** First data cluster (guest cluster c sits at dataAt + c) and how many there are. */
  dataAt: number;
  dataClusters: number;
  /** Whether cluster `c` (below `total`) is referenced. */
  used(c: number): boolean;
  /** Cluster ranges [start, end) that hold everything but the data clusters, in file order. */
  metadataRuns: readonly (readonly [number, number])[];
  roleOf(c: number): CreateClusterRole;
}

/** What a layout is computed from. */
export interface CreatePlanInput {
  clusterSize: number;
  refcountOrder: number;
  l1Clusters: number;
  /** L2 tables to preallocate (0 without preallocation). */
  l2Tables: number;
  /** Data clusters to preallocate in the image file (0 without, or with an external data file). */
  dataClusters: number;
}

function refcountsPerBlock(i: CreatePlanInput): number {
  return (i.clusterSize * 8) / 2 ** i.refcountOrder;
}

/**
 * Header, refcount table, refcount blocks, L1 table, L2 tables and data
 * clusters one after another: what qemu-img create leaves without
 * preallocation and with `metadata` (and img with an external data file).
 */
export function packedCreatePlan(i: CreatePlanInput): CreatePlan {
  const cs = i.clusterSize;
  const perBlock = refcountsPerBlock(i);
  // Refcount table and blocks must cover every cluster, themselves included.
  let blocks = 1;
  let rtClusters = 1;
  for (;;) {
    const total = 1 + rtClusters + blocks + i.l1Clusters + i.l2Tables + i.dataClusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needRt = Math.max(1, Math.ceil((needBlocks * 8) / cs));
    if (needBlocks <= blocks && needRt <= rtClusters) break;
    blocks = Math.max(blocks, needBlocks);
    rtClusters = Math.max(rtClusters, needRt);
  }
  const rtAt = 1;
  const blocksAt = rtAt + rtClusters;
  const l1At = blocksAt + blocks;
  const l2At = l1At + i.l1Clusters;
  const dataAt = l2At + i.l2Tables;
  const total = dataAt + i.dataClusters;
  return {
    total,
    rtAt,
    rtClusters,
    refcountBlocks: blocks,
    refcountBlockAt: (b) => blocksAt + b,
    l1At,
    l1Clusters: i.l1Clusters,
    l2Tables: i.l2Tables,
    l2At: (t) => l2At + t,
    dataAt,
    dataClusters: i.dataClusters,
    used: () => true,
    metadataRuns: [[0, dataAt]],
    roleOf(c) {
      if (c === 0) return { kind: 'header' };
      if (c < blocksAt) return { kind: 'refcount-table', index: c - rtAt };
      if (c < l1At) return { kind: 'refcount-block', index: c - blocksAt };
      if (c < l2At) return { kind: 'l1', index: c - l1At };
      if (c < dataAt) return { kind: 'l2', index: c - l2At };
      return c < total ? { kind: 'data' } : { kind: 'free' };
    },
  };
}

/**
 * What qemu-img create leaves with `falloc` and `full` (qcow2 version 3
 * spec, no layout mandated; this is qemu's preallocating truncate of the
 * empty image): the header, the first L2 table where the first refcount
 * table was, the first refcount block, the L1 table; then a new refcount
 * area (further refcount blocks, then the refcount table) sized for the
 * data and every L2 table; then the data clusters in guest order; then the
 * other L2 tables. Undefined where the L1 table alone outgrows the first
 * refcount block (qemu then grows its refcounts on the way, which this does
 * not reproduce), so the caller falls back to the packed layout.
 */
export function truncatedCreatePlan(i: CreatePlanInput): CreatePlan | undefined {
  const cs = i.clusterSize;
  const perBlock = refcountsPerBlock(i);
  const start = 3 + i.l1Clusters;
  if (start > perBlock) return undefined;
  const n = i.dataClusters;
  // qemu sizes the area for the data, every L2 table and one more (a head or tail that is not aligned).
  const blocks = refcountFixedPoint(start + n + i.l2Tables + 1, cs, perBlock).blocks;
  const rtClusters = Math.ceil((blocks * 8) / cs);
  const newBlocksAt = start;
  const rtAt = newBlocksAt + blocks - 1;
  const dataAt = rtAt + rtClusters;
  const tailAt = dataAt + n;
  const total = tailAt + Math.max(0, i.l2Tables - 1);
  const firstL2 = i.l2Tables > 0;
  return {
    total,
    rtAt,
    rtClusters,
    refcountBlocks: blocks,
    refcountBlockAt: (b) => (b === 0 ? 2 : newBlocksAt + b - 1),
    l1At: 3,
    l1Clusters: i.l1Clusters,
    l2Tables: i.l2Tables,
    l2At: (t) => (t === 0 ? 1 : tailAt + t - 1),
    dataAt,
    dataClusters: n,
    used: (c) => c !== 1 || firstL2,
    metadataRuns:
      total > tailAt
        ? [
            [0, dataAt],
            [tailAt, total],
          ]
        : [[0, dataAt]],
    roleOf(c) {
      if (c === 0) return { kind: 'header' };
      if (c === 1) return firstL2 ? { kind: 'l2', index: 0 } : { kind: 'free' };
      if (c === 2) return { kind: 'refcount-block', index: 0 };
      if (c < start) return { kind: 'l1', index: c - 3 };
      if (c < rtAt) return { kind: 'refcount-block', index: c - newBlocksAt + 1 };
      if (c < dataAt) return { kind: 'refcount-table', index: c - rtAt };
      if (c < tailAt) return { kind: 'data' };
      return c < total ? { kind: 'l2', index: c - tailAt + 1 } : { kind: 'free' };
    },
  };
}
