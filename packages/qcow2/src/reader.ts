/**
 * Guest reads: the mapping's segments (segments.ts) read with one I/O per
 * contiguous host run, unallocated ranges from the backing image,
 * compressed clusters decompressed.
 */
import { corrupt, hex } from '@img/block';
import type { Disk, Extent, Storage } from '@img/block';
import { decompressCluster, inflateClustersInto, qcow2Codecs, type ClusterJob } from './compression.js';
import { COMPRESSION_ZLIB } from './constants.js';
import type { MappingView, ReaderState, Segment } from './mapping-view.js';
import { segments } from './segments.js';
import { readDecrypted } from './encryption.js';

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
  /** Buffers for a run of compressed clusters read at once (SPAN_BYTES plus two clusters); without it, each cluster is read on its own. */
  spans?: BufferPool;
}

/** Compressed bytes read at once for whole clusters inflated together: qemu writes consecutive clusters' streams one after another. */
export const SPAN_BYTES = 1 << 20;

/** A whole compressed cluster waiting to be read and inflated with its neighbours in the file. */
interface PendingCluster {
  host: number;
  csize: number;
  out: Uint8Array;
}

/**
 * Reads the compressed streams of `batch` (ascending and close in the file)
 * with one read, and inflates them all at once into their places
 * (inflateClustersInto: the native helper on every core, else one by one).
 */
async function readCompressedRun(state: ReaderState, spans: BufferPool, batch: PendingCluster[]): Promise<void> {
  const first = batch[0]!.host;
  const end = Math.max(...batch.map((c) => c.host + c.csize));
  const buffer = spans.acquire();
  try {
    const span = buffer.subarray(0, end - first);
    await readHost(state.storage, first, span);
    const jobs: ClusterJob[] = batch.map((c) => ({ input: span.subarray(c.host - first, c.host - first + c.csize), out: c.out, ctx: { file: state.file, hostOffset: c.host } }));
    await inflateClustersInto(jobs, state.geom.clusterSize);
  } finally {
    spans.release(buffer);
  }
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
  // Whole deflate clusters gather into runs read and inflated together, where the codecs take many at once.
  const cs = state.geom.clusterSize;
  const spans = caches.spans && state.compressionType === COMPRESSION_ZLIB && qcow2Codecs().inflateRawMany ? caches.spans : undefined;
  let run: PendingCluster[] = [];
  const flushRun = () => {
    if (run.length === 0) return;
    const batch = run;
    run = [];
    track(batch.length === 1 ? loadInto(state, caches, batch[0]!) : readCompressedRun(state, spans!, batch));
  };
  try {
    for await (const seg of segments(state, view, offset, offset + target.length)) {
      const sub = target.subarray(seg.offset - offset, seg.offset - offset + seg.length);
      if (spans && seg.kind === 'compressed' && seg.offset === seg.clusterOffset && seg.length === cs && seg.host! < state.fileSize) {
        const host = seg.host!;
        const head = run[0];
        const last = run[run.length - 1];
        if (head && last && (host <= last.host || host + seg.csize! - head.host > SPAN_BYTES + cs)) flushRun();
        run.push({ host, csize: seg.csize!, out: sub });
        continue;
      }
      flushRun();
      switch (seg.kind) {
        case 'zero':
          sub.fill(0);
          break;
        case 'hole':
          track(readBacking(state.backing, seg.offset, sub));
          break;
        case 'data':
          track(state.encryption ? readDecrypted(state.encryption, state.dataStorage, seg.host!, seg.offset, sub, state.file) : readHost(state.dataStorage, seg.host!, sub));
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
    flushRun();
  } finally {
    await Promise.all(io);
  }
  if (failure) throw failure.error;
}

/** One whole compressed cluster read and inflated on its own, through the cache like any other. */
async function loadInto(state: ReaderState, caches: ReadCaches, c: PendingCluster): Promise<void> {
  const cluster = await caches.decompressed.get(c.host, () => loadCompressed(state, caches.pool, c.host, c.csize));
  c.out.set(cluster.subarray(0, c.out.length));
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
