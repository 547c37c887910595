/**
 * streamQcow2: a complete qcow2 image as a byte stream, with no seeking
 * (stdout, a pipe, an HTTP upload). The source's extents are read first
 * (metadata only); every table is laid out; then header, refcount table
 * and blocks, L1 table, L2 tables and the data clusters are emitted in
 * file order. Only clusters holding data are allocated; zeros and holes
 * stay unallocated (they read as zeros: the image has no backing file),
 * and with `detectZeroes` so do data clusters that hold only zeros.
 * The layout is fixed before the first byte, so the length is known
 * first (createQcow2Stream, qcow2Driver.stream).
 */
import { checkOptionKeys, driverOptions, invalidArg, isAllZero, parseBool, unsupported, writeU64Be, type OptionTable } from '@img/block';
import { writeEntryOffset } from './mapping.js';
import type { Disk, ImageStream } from '@img/block';
import { MAX_L1_TABLE_BYTES, MAX_REFCOUNT_TABLE_BYTES } from './constants.js';
import { encodeEntry } from './l2-entry.js';
import { writeRefcount } from './refcount-entry.js';
import { parseCreateOptions, headerFor, headerCluster, QCOW2_CREATE_OPTIONS, type Qcow2CreateOptions, type Qcow2Layout } from './create.js';

const FORMAT = 'qcow2';

/** Options of {@link streamQcow2}: the create options that make sense for a new stand-alone image. */
export type Qcow2StreamOptions = Omit<Partial<Qcow2CreateOptions>, 'size' | 'backingFile' | 'backingFormat' | 'dataFile' | 'dataFileRaw' | 'dataFileStorage' | 'preallocation' | 'resolver' | 'formats' | 'noBacking'> & {
  /** Largest piece yielded, in bytes (default 4 MiB, at least one cluster). */
  chunkSize?: number;
  /**
   * Read every cluster the extents call data once before the first byte
   * and leave clusters holding only zeros unallocated (they read as zeros).
   * Costs a second read of the data: the layout must be known before the
   * first byte. Default false; `'on'` as a string works too.
   */
  detectZeroes?: boolean | string;
};

/** Keys a stand-alone stream cannot honour: it has no other file and writes no preallocated space. */
const REFUSED = ['backingFile', 'backingFormat', 'dataFile', 'dataFileRaw', 'preallocation'];

/**
 * The options a stream takes: typed key, `-o` name, help (the create
 * options a stand-alone image can have, and detect_zeroes). `chunkSize`
 * has no `-o` name.
 */
export const QCOW2_STREAM_OPTIONS: OptionTable = [...QCOW2_CREATE_OPTIONS.filter((o) => o.key !== 'size' && !REFUSED.includes(o.key)), { key: 'detectZeroes', name: 'detect_zeroes', kind: 'bool', help: 'on: clusters holding only zeros stay unallocated (reads the data twice)' }];

/** Typed keys of Qcow2StreamOptions that have no `-o` name. */
const STREAM_TYPED_ONLY = ['chunkSize'];

/** Refuses what a stand-alone stream cannot be (a value "off" is what a stream is anyway); answers the rest. */
function withoutStandAloneKeys(options: Record<string, unknown>, names: boolean): Record<string, unknown> {
  const rest = { ...options };
  for (const row of QCOW2_CREATE_OPTIONS.filter((o) => REFUSED.includes(o.key))) {
    for (const k of names ? [row.key, row.name] : [row.key]) {
      const v = rest[k];
      delete rest[k];
      if (v === undefined || v === false || v === 'off' || v === 'false') continue;
      throw invalidArg(FORMAT, `${k} cannot be used with a stream: it holds a whole, stand-alone image (write a file instead)`, { field: k });
    }
  }
  return rest;
}

/** What the writer decided before the first byte. */
interface Qcow2StreamPlan {
  l: Qcow2Layout;
  /** Runs [first, end) of guest clusters that are allocated, in guest order. */
  runs: Array<[number, number]>;
  /** L1 indices that get an L2 table, ascending. */
  tableIndex: number[];
  rtClusters: number;
  blocks: number;
  l1Clusters: number;
  l1Entries: number;
  /** Clusters in the image: the stream is `total` clusters long. */
  total: number;
  piece: number;
}

/** Runs of guest clusters holding data, in guest order. */
async function dataRuns(source: Disk, cs: number): Promise<Array<[number, number]>> {
  const runs: Array<[number, number]> = [];
  for await (const e of source.extents()) {
    if (e.kind !== 'data') continue;
    const first = Math.floor(e.offset / cs);
    const end = Math.ceil((e.offset + e.length) / cs);
    const last = runs[runs.length - 1];
    if (last && first <= last[1]) last[1] = Math.max(last[1], end);
    else runs.push([first, end]);
  }
  return runs;
}

/** The runs without the clusters that hold only zeros (reads every run once, `piece` bytes at a time). */
async function withoutZeroClusters(source: Disk, runs: Array<[number, number]>, cs: number, piece: number): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const push = (c: number) => {
    const last = out[out.length - 1];
    if (last && last[1] === c) last[1] = c + 1;
    else out.push([c, c + 1]);
  };
  const buf = new Uint8Array(piece);
  for (const [a, b] of runs) {
    for (let c = a; c < b;) {
      const n = Math.min(b - c, piece / cs);
      const inDisk = Math.max(0, Math.min(n * cs, source.size - c * cs));
      const view = buf.subarray(0, inDisk);
      await source.readInto(c * cs, view);
      for (let k = 0; k < n; k++) if (!isAllZero(view.subarray(k * cs, Math.min(inDisk, (k + 1) * cs)))) push(c + k);
      c += n;
    }
  }
  return out;
}

/**
 * Reads typed keys (values may be `-o` strings such as '64k' or 'on') into
 * Qcow2StreamOptions, refusing what a stand-alone stream cannot be and
 * keys no stream takes (the error lists those it takes).
 */
export function qcow2StreamOptionsFrom(options: Record<string, unknown> = {}): Qcow2StreamOptions {
  const rest = withoutStandAloneKeys(options, false);
  checkOptionKeys(FORMAT, QCOW2_STREAM_OPTIONS, rest, STREAM_TYPED_ONLY, 'stream option');
  const { detectZeroes, ...other } = rest;
  const out = { ...other } as Qcow2StreamOptions;
  if (detectZeroes !== undefined) out.detectZeroes = parseBool(detectZeroes as string | boolean, 'detectZeroes');
  return out;
}

/** qcow2Driver.stream's options: typed keys or `-o` names (`cluster_size`, `detect_zeroes`), as the other drivers take them. */
export function qcow2DriverStreamOptions(options: Record<string, unknown> = {}): Qcow2StreamOptions {
  const rest = withoutStandAloneKeys(options, true);
  return qcow2StreamOptionsFrom(driverOptions(FORMAT, QCOW2_STREAM_OPTIONS, rest, { extra: STREAM_TYPED_ONLY, what: 'stream option' }));
}

async function planQcow2Stream(source: Disk, options: Qcow2StreamOptions): Promise<Qcow2StreamPlan> {
  const { chunkSize, detectZeroes, ...rest } = qcow2StreamOptionsFrom(options as Record<string, unknown>);
  const l = parseCreateOptions({ ...rest, size: source.size } as Qcow2CreateOptions);
  if (l.encrypt) throw unsupported(FORMAT, undefined, 'an encrypted image cannot be written as a stream: write it to a file', { field: 'encrypt.format' });
  if (l.size !== source.size) throw invalidArg(FORMAT, `the source size ${source.size} is not a multiple of 512`, { field: 'size' });
  const cs = 2 ** l.clusterBits;
  const es = l.extendedL2 ? 16 : 8;
  const l2Entries = cs / es;
  const piece = Math.max(cs, Math.floor((chunkSize ?? 4 * 1024 * 1024) / cs) * cs);
  let runs = await dataRuns(source, cs);
  if (detectZeroes === true) runs = await withoutZeroClusters(source, runs, cs, piece);
  const dataClusters = runs.reduce((n, [a, b]) => n + b - a, 0);
  // Tables: one per L1 entry that maps any data.
  const tableIndex: number[] = [];
  for (const [a, b] of runs) {
    for (let t = Math.floor(a / l2Entries); t <= Math.floor((b - 1) / l2Entries); t++) if (tableIndex[tableIndex.length - 1] !== t) tableIndex.push(t);
  }
  const l1Entries = Math.ceil(l.size / (l2Entries * cs));
  if (l1Entries * 8 > MAX_L1_TABLE_BYTES) throw invalidArg(FORMAT, `size ${l.size} needs an L1 table over 32 MiB with ${cs}-byte clusters`, { field: 'size' });
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);
  const perBlock = (cs * 8) / 2 ** l.refcountOrder;
  let blocks = 1;
  let rtClusters = 1;
  for (;;) {
    const total = 1 + rtClusters + blocks + l1Clusters + tableIndex.length + dataClusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needRt = Math.ceil((needBlocks * 8) / cs);
    if (needBlocks <= blocks && needRt <= rtClusters) break;
    blocks = Math.max(blocks, needBlocks);
    rtClusters = Math.max(rtClusters, needRt);
  }
  if (rtClusters * cs > MAX_REFCOUNT_TABLE_BYTES) throw invalidArg(FORMAT, 'the refcount table would exceed 8 MiB', { field: 'size' });
  const total = 1 + rtClusters + blocks + l1Clusters + tableIndex.length + dataClusters;
  return { l, runs, tableIndex, rtClusters, blocks, l1Clusters, l1Entries, total, piece };
}

async function* emit(source: Disk, plan: Qcow2StreamPlan): AsyncGenerator<Uint8Array> {
  const { l, runs, tableIndex, rtClusters, blocks, l1Clusters, l1Entries, total, piece } = plan;
  const cs = 2 ** l.clusterBits;
  const l2Entries = cs / (l.extendedL2 ? 16 : 8);
  const perBlock = (cs * 8) / 2 ** l.refcountOrder;
  const rtAt = 1;
  const blocksAt = rtAt + rtClusters;
  const l1At = blocksAt + blocks;
  const l2At = l1At + l1Clusters;
  const dataAt = l2At + tableIndex.length;
  const h = headerFor(l, { l1Entries, l1Offset: l1Entries ? l1At * cs : 0, refcountTableOffset: rtAt * cs, refcountTableClusters: rtClusters });

  yield headerCluster(l, h, cs);
  const rt = new Uint8Array(rtClusters * cs);
  for (let b = 0; b < blocks; b++) {
    const off = (blocksAt + b) * cs;
    writeU64Be(rt, b * 8, off);
  }
  yield rt;
  for (let b = 0; b < blocks; b++) {
    const block = new Uint8Array(cs);
    for (let c = b * perBlock; c < Math.min(total, (b + 1) * perBlock); c++) writeRefcount(block, c - b * perBlock, 2 ** l.refcountOrder, 1);
    yield block;
  }
  if (l1Clusters) {
    const l1 = new Uint8Array(l1Clusters * cs);
    tableIndex.forEach((t, k) => {
      const off = (l2At + k) * cs;
      writeEntryOffset(l1, t * 8, off, true);
    });
    yield l1;
  }
  // L2 tables: the data clusters get consecutive host clusters in guest order.
  const g = { clusterBits: l.clusterBits, clusterSize: cs, extendedL2: l.extendedL2, zeroFlag: l.version >= 3 && !l.extendedL2, dataFile: false };
  let host = dataAt;
  let r = 0;
  for (const t of tableIndex) {
    const table = new Uint8Array(cs);
    const lo = t * l2Entries;
    const hi = lo + l2Entries;
    while (r < runs.length && runs[r]![1] <= lo) r++;
    for (let k = r; k < runs.length && runs[k]![0] < hi; k++) {
      for (let c = Math.max(lo, runs[k]![0]); c < Math.min(hi, runs[k]![1]); c++) {
        encodeEntry(table, c - lo, { host: host++ * cs, copied: true, compressed: undefined, alloc: l.extendedL2 ? 0xffffffff : 1, zero: 0 }, g);
      }
    }
    yield table;
  }
  // Data, read in large pieces; the tail of the last cluster past the disk end is zeros.
  for (const [a, b] of runs) {
    for (let c = a; c < b;) {
      const n = Math.min(b - c, piece / cs);
      const buf = new Uint8Array(n * cs);
      const inDisk = Math.min(buf.length, source.size - c * cs);
      await source.readInto(c * cs, buf.subarray(0, inDisk));
      yield buf;
      c += n;
    }
  }
}

/**
 * A qcow2 image holding `source`'s content as an ImageStream: the layout
 * is computed from the source's extents (and, with `detectZeroes`, its
 * data) before the first byte, so `length` can be sent ahead (an HTTP
 * Content-Length). The source must not change while the stream is read.
 *
 * @example
 * ```ts
 * const { length, chunks } = await createQcow2Stream(disk, { clusterSize: '64k', detectZeroes: 'on' });
 * res.setHeader('Content-Length', length);
 * for await (const c of chunks) res.write(c);
 * ```
 */
export async function createQcow2Stream(source: Disk, options: Qcow2StreamOptions = {}): Promise<ImageStream> {
  const plan = await planQcow2Stream(source, options);
  return { length: plan.total * 2 ** plan.l.clusterBits, chunks: emit(source, plan) };
}

/**
 * Yields the bytes of a qcow2 image holding `source`'s content.
 *
 * @example
 * ```ts
 * for await (const chunk of streamQcow2(disk, { clusterSize: '64k' })) process.stdout.write(chunk);
 * ```
 */
export async function* streamQcow2(source: Disk, options: Qcow2StreamOptions = {}): AsyncGenerator<Uint8Array> {
  yield* emit(source, await planQcow2Stream(source, options));
}
