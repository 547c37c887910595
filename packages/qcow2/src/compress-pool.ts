/**
 * Compression off the main thread: a small pool of worker threads that
 * compress runs of clusters for writeCompressed, so that `img-convert -c`
 * uses every core while the main thread reads and writes.
 *
 * Node-only (node:worker_threads, node:os, node:module), like
 * compression.ts. The pool is created on first use, its workers are
 * unref'd whenever they have nothing to do (they never keep a process
 * alive), and where workers cannot be started (another runtime, a
 * failure) every call answers undefined and the caller compresses on its
 * own thread. The workers use the same codecs as compressCluster (deflate
 * with qemu's 4 KiB window at level 6; zstd from node:zlib or libzstd in
 * WebAssembly), so the output is the same byte for byte.
 */
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import type { Worker as NodeWorker } from 'node:worker_threads';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from './constants.js';

/** Below this many clusters a call is compressed on the calling thread (a message round trip costs more). */
export const POOL_MIN_CLUSTERS = 4;

/** The worker's code (CommonJS, run with `eval`: no file to find next to the compiled module). */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const zlib = require('node:zlib');
let zstd;
// libzstd in WebAssembly: one compression context and one pair of buffers for every cluster, instead
// of the package's compress(), which allocates a context (hundreds of KiB, initialised) per call.
// Made once (jobs arrive while the first one waits for it: a second init would replace the module
// under the first one's pointers).
function zstdCompress(clusterSize) {
  if (zlib.zstdCompressSync) return Promise.resolve((b) => zlib.zstdCompressSync(b));
  zstd ??= (async () => {
    const z = require(workerData.zstdWasm);
    await z.init();
    const path = require('node:path');
    const M = require(path.join(path.dirname(workerData.zstdWasm), 'module.js')).Module;
    const cctx = M._ZSTD_createCCtx();
    if (!cctx) throw new Error('zstd: out of memory');
    const buffers = new Map();
    return (b) => {
      let io = buffers.get(b.length);
      if (!io) {
        const bound = M._ZSTD_compressBound(b.length);
        io = { src: M._malloc(b.length), dst: M._malloc(bound), bound };
        if (!io.src || !io.dst) throw new Error('zstd: out of memory');
        buffers.set(b.length, io);
      }
      M.HEAPU8.set(b, io.src);
      const n = M._ZSTD_compress_usingDict(cctx, io.dst, io.bound, io.src, b.length, 0, 0, 3);
      if (M._ZSTD_isError(n)) throw new Error('zstd: compression failed (' + n + ')');
      return M.HEAPU8.slice(io.dst, io.dst + n);
    };
  })();
  return zstd;
}
parentPort.on('message', async (job) => {
  try {
    const input = new Uint8Array(job.buffer, 0, job.length);
    const cs = job.clusterSize;
    const n = Math.ceil(job.length / cs);
    const compress = job.type === 0 ? (b) => zlib.deflateRawSync(b, { level: 6, windowBits: 12 }) : await zstdCompress(cs);
    const sizes = new Int32Array(n);
    const parts = [];
    let total = 0;
    for (let i = 0; i < n; i++) {
      let cluster = input.subarray(i * cs, Math.min(job.length, (i + 1) * cs));
      if (cluster.length < cs) {
        const full = new Uint8Array(cs);
        full.set(cluster);
        cluster = full;
      }
      const out = compress(cluster);
      if (out.length < cs) {
        sizes[i] = out.length;
        parts.push(out);
        total += out.length;
      } else {
        sizes[i] = -1;
      }
    }
    const packed = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      packed.set(p, at);
      at += p.length;
    }
    parentPort.postMessage({ id: job.id, sizes, packed }, [sizes.buffer, packed.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: job.id, error: String(e && e.stack || e) });
  }
});
`;

interface Job {
  resolve: (value: Array<Uint8Array | undefined>) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: NodeWorker;
  pending: Map<number, Job>;
}

class CompressPool {
  #slots: Slot[];
  #nextId = 1;
  broken = false;

  constructor(slots: Slot[]) {
    this.#slots = slots;
    for (const slot of slots) {
      slot.worker.on('message', (m: { id: number; sizes?: Int32Array; packed?: Uint8Array; error?: string }) => this.#done(slot, m));
      slot.worker.on('error', (e) => this.#fail(slot, e));
      slot.worker.on('exit', () => this.#fail(slot, new Error('compression worker exited')));
      slot.worker.unref();
    }
  }

  get size(): number {
    return this.#slots.length;
  }

  #done(slot: Slot, m: { id: number; sizes?: Int32Array; packed?: Uint8Array; error?: string }): void {
    const job = slot.pending.get(m.id);
    if (!job) return;
    slot.pending.delete(m.id);
    if (slot.pending.size === 0) slot.worker.unref();
    if (m.error !== undefined || !m.sizes || !m.packed) {
      job.reject(new Error(`compression worker: ${m.error ?? 'no result'}`));
      return;
    }
    const out: Array<Uint8Array | undefined> = [];
    let at = 0;
    for (const n of m.sizes) {
      if (n < 0) out.push(undefined);
      else {
        out.push(m.packed.subarray(at, at + n));
        at += n;
      }
    }
    job.resolve(out);
  }

  #fail(slot: Slot, e: unknown): void {
    this.broken = true;
    for (const job of slot.pending.values()) job.reject(e);
    slot.pending.clear();
  }

  /** Compresses `data` (whole clusters; the last may be short and is padded) on the least busy worker. */
  run(type: number, data: Uint8Array, clusterSize: number): Promise<Array<Uint8Array | undefined>> {
    const slot = this.#slots.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.#nextId++;
    // A copy the worker owns: the caller's buffer stays the caller's.
    const copy = new Uint8Array(data.length);
    copy.set(data);
    const buffer = copy.buffer;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      // A worker with work keeps the process alive until it answers.
      slot.worker.ref();
      slot.worker.postMessage({ id, type, buffer, length: data.length, clusterSize }, [buffer]);
    });
  }
}

let pool: Promise<CompressPool | undefined> | undefined;

/** How many workers the pool starts: one per core, at most 4 (the main thread mostly waits for I/O). */
export function poolSize(): number {
  const env = Number(process.env.IMG_COMPRESS_THREADS);
  if (Number.isInteger(env) && env >= 0) return env;
  return Math.max(1, Math.min(4, availableParallelism()));
}

async function startPool(): Promise<CompressPool | undefined> {
  const count = poolSize();
  if (count === 0) return undefined;
  try {
    const { Worker } = await import('node:worker_threads');
    let zstdWasm = '';
    try {
      zstdWasm = createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm');
    } catch {
      // zstd in the workers then needs node:zlib's (Node >= 22.15); the caller falls back otherwise.
    }
    const slots: Slot[] = [];
    for (let i = 0; i < count; i++) slots.push({ worker: new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdWasm } }), pending: new Map() });
    return new CompressPool(slots);
  } catch {
    return undefined;
  }
}

/**
 * Compresses whole clusters of `data` in the worker pool: one entry per
 * cluster, the compressed bytes or undefined where they would not be
 * smaller. Answers undefined when the pool is not available (the caller
 * then compresses on its own thread); splits large inputs across workers.
 */
export async function compressInPool(type: number, data: Uint8Array, clusterSize: number): Promise<Array<Uint8Array | undefined> | undefined> {
  if (type !== COMPRESSION_ZLIB && type !== COMPRESSION_ZSTD) return undefined;
  const clusters = Math.ceil(data.length / clusterSize);
  if (clusters < POOL_MIN_CLUSTERS) return undefined;
  pool ??= startPool();
  const p = await pool;
  if (!p || p.broken) return undefined;
  const parts = Math.max(1, Math.min(p.size, Math.floor(clusters / POOL_MIN_CLUSTERS)));
  const per = Math.ceil(clusters / parts);
  const jobs: Array<Promise<Array<Uint8Array | undefined>>> = [];
  for (let c = 0; c < clusters; c += per) jobs.push(p.run(type, data.subarray(c * clusterSize, Math.min(data.length, (c + per) * clusterSize)), clusterSize));
  try {
    return (await Promise.all(jobs)).flat();
  } catch {
    // A worker failed (or zstd is not available there): this call and later ones compress on the calling thread.
    p.broken = true;
    return undefined;
  }
}
