/**
 * Guest reads and extents: walks L1/L2 into runs ("segments") of one kind,
 * reads contiguous host runs with one I/O each, falls through to the
 * backing image for unallocated ranges and decompresses compressed clusters.
 */
import { corrupt, hex } from '@img/block';
import type { Disk, Extent, Storage } from '@img/block';
import { decodeL2Entry, l1EntryOffset, type EntryGeometry } from './mapping.js';
import { decompressCluster } from './compression.js';
import type { L2Cache } from './l2-cache.js';
import type { Qcow2Geometry } from './header.js';

const FORMAT = 'qcow2';

/** A run of guest bytes that one rule decides. */
export interface Segment {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole' | 'compressed';
  /**
   * data: host offset of `offset`; zero, hole: host offset where the cluster has one (preallocated zero
   * cluster, unallocated subcluster of an allocated cluster); compressed: start of the compressed bytes.
   */
  host?: number;
  /** compressed: bytes that may hold the compressed data. */
  csize?: number;
  /** compressed: guest offset of the cluster. */
  clusterOffset?: number;
}

/** What the reader needs of an open image. */
export interface ReaderState {
  readonly storage: Storage;
  readonly file: string;
  readonly geom: Qcow2Geometry;
  readonly entryGeom: EntryGeometry;
  readonly cache: L2Cache;
  readonly compressionType: number;
  /** Storage guest clusters live in (the image, or its external data file). */
  readonly dataStorage: Storage;
  /** Raw external data file (data_file_raw): the data file must read as the disk, so zeroes are written for real. */
  readonly rawDataFile: boolean;
  backing: Disk | undefined;
  fileSize: number;
}

/** The L1 table a disk view reads through (the active one or a snapshot's). */
export interface MappingView {
  l1: Uint8Array;
  l1Offset: number;
  size: number;
}

/** Loads the L2 table at `offset` (through the cache), checking it lies inside the file. */
export function loadL2(state: ReaderState, offset: number, l1Index: number): Promise<Uint8Array> | Uint8Array {
  return state.cache.get(offset, async () => {
    const cs = state.geom.clusterSize;
    if (offset + cs > state.fileSize) {
      throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} (L1 entry ${l1Index}) lies past the end of the file`, { field: 'L1 entry', offset, actual: offset });
    }
    if (offset < cs) {
      throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} (L1 entry ${l1Index}) overlaps the header`, { field: 'L1 entry', offset });
    }
    const table = new Uint8Array(cs);
    const n = await state.storage.readInto(offset, table);
    if (n < cs) throw corrupt(FORMAT, state.file, `L2 table at ${hex(offset)} is cut short by the end of the file`, { field: 'L2 table', offset });
    return table;
  });
}

function canMerge(a: Segment, b: Segment): boolean {
  if (a.kind !== b.kind || a.kind === 'compressed' || a.offset + a.length !== b.offset) return false;
  if (a.host === undefined && b.host === undefined) return true;
  return a.host !== undefined && b.host !== undefined && a.host + a.length === b.host;
}

/**
 * Segments covering `[start, end)` of a view, maximally merged. Reads
 * only L1/L2 metadata.
 */
export async function* segments(state: ReaderState, view: MappingView, start: number, end: number): AsyncGenerator<Segment> {
  const { clusterSize: cs, l2Coverage, l2Entries, subclusterSize: scs } = state.geom;
  let pending: Segment | undefined;
  const out: Segment[] = [];
  const push = (s: Segment) => {
    if (pending && canMerge(pending, s)) pending.length += s.length;
    else {
      if (pending) out.push(pending);
      pending = s;
    }
  };
  let pos = start;
  while (pos < end) {
    const l1Index = Math.floor(pos / l2Coverage);
    const l1End = Math.min(end, (l1Index + 1) * l2Coverage);
    const l2Offset = l1EntryOffset(view.l1, l1Index, cs, state.file, view.l1Offset);
    if (l2Offset === 0) {
      push({ offset: pos, length: l1End - pos, kind: 'hole' });
      pos = l1End;
    } else {
      const table = await loadL2(state, l2Offset, l1Index);
      while (pos < l1End) {
        const cluster = Math.floor(pos / cs);
        const cStart = cluster * cs;
        const cEnd = Math.min(l1End, cStart + cs);
        const entry = decodeL2Entry(table, cluster % l2Entries, state.entryGeom, state.file, l2Offset);
        switch (entry.type) {
          case 'unallocated':
            push({ offset: pos, length: cEnd - pos, kind: 'hole' });
            break;
          case 'zero':
            push({ offset: pos, length: cEnd - pos, kind: 'zero', host: entry.host === undefined ? undefined : entry.host + (pos - cStart) });
            break;
          case 'normal':
            push({ offset: pos, length: cEnd - pos, kind: 'data', host: entry.host + (pos - cStart) });
            break;
          case 'compressed':
            if (pending) out.push(pending);
            pending = undefined;
            out.push({ offset: pos, length: cEnd - pos, kind: 'compressed', host: entry.host, csize: entry.size, clusterOffset: cStart });
            break;
          case 'subclusters': {
            let p = pos;
            while (p < cEnd) {
              const sc = Math.floor((p - cStart) / scs);
              const scEnd = Math.min(cEnd, cStart + (sc + 1) * scs);
              const bit = 2 ** sc;
              const host = entry.host === undefined ? undefined : entry.host + (p - cStart);
              if (Math.floor(entry.alloc / bit) % 2) push({ offset: p, length: scEnd - p, kind: 'data', host });
              else if (Math.floor(entry.zero / bit) % 2) push({ offset: p, length: scEnd - p, kind: 'zero', host });
              // qemu-img map reports the host offset of unallocated subclusters too.
              else push({ offset: p, length: scEnd - p, kind: 'hole', host });
              p = scEnd;
            }
            break;
          }
        }
        pos = cEnd;
      }
    }
    if (out.length) {
      yield* out;
      out.length = 0;
    }
  }
  if (pending) yield pending;
}

/** Recycles the buffers compressed reads use, so a stream of them does not churn memory. */
export class BufferPool {
  readonly bufferSize: number;
  #free: Uint8Array[] = [];
  #max: number;

  constructor(bufferSize: number, max = 8) {
    this.bufferSize = bufferSize;
    this.#max = max;
  }

  acquire(): Uint8Array {
    return this.#free.pop() ?? new Uint8Array(this.bufferSize);
  }

  release(buf: Uint8Array): void {
    if (this.#free.length < this.#max) this.#free.push(buf);
  }
}

/** Decompressed clusters, keyed by host offset: sequential small reads decompress each cluster once. */
export class DecompressedCache {
  #entries = new Map<number, Promise<Uint8Array>>();
  #capacity: number;

  constructor(capacity = 4) {
    this.#capacity = capacity;
  }

  get(host: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    const hit = this.#entries.get(host);
    if (hit) return hit;
    const p = load();
    this.#entries.set(host, p);
    p.catch(() => this.#entries.delete(host));
    while (this.#entries.size > this.#capacity) this.#entries.delete(this.#entries.keys().next().value as number);
    return p;
  }

  clear(): void {
    this.#entries.clear();
  }
}

/** Reads host bytes into `target`; bytes past the end of the file read as zeros. */
export async function readHost(storage: Storage, host: number, target: Uint8Array): Promise<void> {
  const n = await storage.readInto(host, target);
  if (n < target.length) target.fill(0, n);
}

/** Reads guest bytes that this layer does not hold: from the backing image, zeros past its end. */
export async function readBacking(backing: Disk | undefined, offset: number, target: Uint8Array): Promise<void> {
  if (!backing) {
    target.fill(0);
    return;
  }
  const part = Math.max(0, Math.min(target.length, backing.size - offset));
  if (part > 0) await backing.readInto(offset, part === target.length ? target : target.subarray(0, part));
  if (part < target.length) target.fill(0, part);
}

/** Loads and decompresses the cluster a compressed segment points to. */
export async function loadCompressed(state: ReaderState, pool: BufferPool, host: number, csize: number): Promise<Uint8Array> {
  if (host >= state.fileSize) {
    throw corrupt(FORMAT, state.file, `compressed cluster at ${hex(host)} lies past the end of the file`, { field: 'L2 entry', offset: host });
  }
  const input = pool.acquire();
  try {
    const view = input.subarray(0, csize);
    await readHost(state.storage, host, view);
    // Awaited inside the try: an asynchronous codec still reads `input` until it settles.
    return await decompressCluster(state.compressionType, view, state.geom.clusterSize, { file: state.file, hostOffset: host });
  } finally {
    pool.release(input);
  }
}

/** Reads an L1 table of `entries` entries at `offset`. */
export async function readL1(storage: Storage, offset: number, entries: number): Promise<Uint8Array> {
  const l1 = new Uint8Array(entries * 8);
  if (entries) await readHost(storage, offset, l1);
  return l1;
}

/** What readRange needs besides the reader state. */
export interface ReadCaches {
  pool: BufferPool;
  decompressed: DecompressedCache;
}

/**
 * Reads `target.length` guest bytes of a view at `offset` (inside the
 * view): one host I/O per merged segment, all in flight together.
 */
export async function readRange(state: ReaderState, caches: ReadCaches, view: MappingView, offset: number, target: Uint8Array): Promise<void> {
  // Each I/O gets its handler as it starts: one can fail while the mapping
  // is still being walked (an L2 table read in between), and a rejection
  // nobody listens to yet would end the process. The walk's own error wins;
  // either way nothing is left writing into `target` after this returns.
  const io: Promise<void>[] = [];
  let failure: { error: unknown } | undefined;
  const track = (p: Promise<void>) => {
    io.push(p.catch((error: unknown) => void (failure ??= { error })));
  };
  try {
    for await (const seg of segments(state, view, offset, offset + target.length)) {
      const sub = target.subarray(seg.offset - offset, seg.offset - offset + seg.length);
      switch (seg.kind) {
        case 'zero':
          sub.fill(0);
          break;
        case 'hole':
          track(readBacking(state.backing, seg.offset, sub));
          break;
        case 'data':
          track(readHost(state.dataStorage, seg.host!, sub));
          break;
        case 'compressed': {
          const host = seg.host!;
          const within = seg.offset - seg.clusterOffset!;
          track(
            caches.decompressed
              .get(host, () => loadCompressed(state, caches.pool, host, seg.csize!))
              .then((cluster) => {
                sub.set(cluster.subarray(within, within + sub.length));
              }),
          );
          break;
        }
      }
    }
  } finally {
    await Promise.all(io);
  }
  if (failure) throw failure.error;
}

/** Turns a segment into an extent of depth 0. */
export function segmentExtent(seg: Segment, hostOffsets: boolean, fileName: string): Extent {
  const kind = seg.kind === 'compressed' ? 'data' : seg.kind;
  const e: Extent = { offset: seg.offset, length: seg.length, kind, depth: 0 };
  if (hostOffsets && seg.host !== undefined && seg.kind !== 'compressed') {
    e.hostOffset = seg.host;
    e.file = fileName;
  }
  return e;
}
