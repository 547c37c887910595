/**
 * Guest reads: the mapping's segments (segments.ts) read with one I/O per
 * contiguous host run, unallocated ranges from the backing image,
 * compressed clusters decompressed.
 */
import { corrupt, hex } from '@img/block';
import type { Disk, Extent, Storage } from '@img/block';
import { decompressCluster } from './compression.js';
import type { MappingView, ReaderState, Segment } from './mapping-view.js';
import { segments } from './segments.js';

const FORMAT = 'qcow2';

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
