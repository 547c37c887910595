/**
 * Compression off the main thread: a small pool of worker threads that
 * compress runs of clusters for writeCompressed, so that `img-convert -c`
 * uses every core while the main thread reads and writes.
 *
 * Node-only (node:worker_threads, node:os), like the codecs in codecs.ts. The pool
 * is created on first use, its workers are unref'd whenever they have
 * nothing to do (they never keep a process alive), and where workers
 * cannot be started (another runtime, a failure) every call answers
 * undefined and the caller compresses on its own thread. The workers use
 * the same codecs, chosen in the same order, as compressCluster (deflate
 * with qemu's 4 KiB window at level 6; zstd from node:zlib, the native
 * addon or libzstd in WebAssembly), and the same guess at clusters deflate
 * cannot shrink, so the output is the same byte for byte.
 *
 * Memory is bounded, not left to the garbage collector: a call is cut
 * into jobs of at most JOB_BYTES, each worker holds at most DEPTH of them,
 * the rest wait as views of the caller's data (no copy), and a job's
 * input buffer travels to the worker and back (transferred both ways) to
 * be reused for the next job. A worker packs its results into one buffer
 * that it transfers, and collects its young garbage after each job (the
 * codecs' per-cluster output buffers would otherwise pile up to tens of
 * MiB per worker before V8 looked at them).
 */
import { availableParallelism } from 'node:os';
import type { Worker as NodeWorker } from 'node:worker_threads';
import { looksIncompressible } from '@img/block';
import { ZSTD_LEVEL } from '../codecs.js';
import { copyZstdFrame } from '../compression.js';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from '../constants.js';
import { SpareBuffers } from './spare-buffers.js';
import { zstdModulePaths } from './zstd-native.js';

/** Below this many clusters a call is compressed on the calling thread (a message round trip costs more). */
export const POOL_MIN_CLUSTERS = 4;

/** The most input bytes in one job (at least one cluster): small enough to bound memory, large enough that messages are rare. */
export const JOB_BYTES = 1 << 20;

/** Jobs handed to one worker at once: one it compresses and one waiting, so it never idles for a round trip. */
const DEPTH = 2;

/** The worker's code (CommonJS, run with `eval`: no file to find next to the compiled module, or in a bundle). */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const zlib = require('node:zlib');
const copyZstdFrame = ${copyZstdFrame.toString()};
const looksIncompressible = ${looksIncompressible.toString()};
const LEVEL = ${ZSTD_LEVEL};
// A scavenge after each job frees the codecs' per-cluster buffers at once. 'gc' exists only with
// --expose-gc: set it just long enough to fetch the function from a fresh context, then unset it.
let collect;
try {
  const v8 = require('node:v8');
  v8.setFlagsFromString('--expose-gc');
  collect = require('node:vm').runInNewContext('gc');
  v8.setFlagsFromString('--no-expose-gc');
} catch {
  collect = undefined;
}
let scratch = new Uint8Array(0);
let padded;
// Each codec writes one cluster's compressed bytes into out at 'at' and answers how many, or -1 when
// they would not be smaller than the cluster.
function deflate(cluster, out, at) {
  if (looksIncompressible(cluster)) return -1;
  const z = zlib.deflateRawSync(cluster, { level: 6, windowBits: 12, chunkSize: cluster.length });
  if (z.length >= cluster.length) return -1;
  out.set(z, at);
  return z.length;
}
let zstd;
function zstdCodec() {
  zstd ??= (async () => {
    const frame = (encode) => (cluster, out, at) => {
      const z = encode(cluster);
      if (z.length >= cluster.length) return -1;
      // The copy may grow a header by up to 3 bytes (scratch has room): it must still be smaller than the cluster.
      const n = copyZstdFrame(z, cluster.length, out, at);
      return n < cluster.length ? n : -1;
    };
    if (zlib.zstdCompressSync) return frame((b) => zlib.zstdCompressSync(b));
    // The native addon (its platform binaries, then its own loader), in the calling thread's order.
    for (const path of workerData.native) {
      try {
        const encoder = new (require(path).Encoder)(LEVEL);
        return frame((b) => encoder.encodeSync(b));
      } catch {
        // Not loadable here: the next candidate, and libzstd in WebAssembly after the last.
      }
    }
    // libzstd in WebAssembly: one compression context and one pair of buffers for every cluster,
    // instead of the package's compress(), which allocates a context (hundreds of KiB, initialised)
    // per call. Made once (jobs arrive while the first one waits for it: a second init would replace
    // the module under the first one's pointers).
    const z = require(workerData.wasm);
    await z.init();
    const path = require('node:path');
    const M = require(path.join(path.dirname(workerData.wasm), 'module.js')).Module;
    const cctx = M._ZSTD_createCCtx();
    if (!cctx) throw new Error('zstd: out of memory');
    const buffers = new Map();
    return (cluster, out, at) => {
      let io = buffers.get(cluster.length);
      if (!io) {
        const bound = M._ZSTD_compressBound(cluster.length);
        io = { src: M._malloc(cluster.length), dst: M._malloc(bound), bound };
        if (!io.src || !io.dst) throw new Error('zstd: out of memory');
        buffers.set(cluster.length, io);
      }
      M.HEAPU8.set(cluster, io.src);
      const n = M._ZSTD_compress_usingDict(cctx, io.dst, io.bound, io.src, cluster.length, 0, 0, LEVEL);
      if (M._ZSTD_isError(n)) throw new Error('zstd: compression failed (' + n + ')');
      if (n >= cluster.length) return -1;
      out.set(M.HEAPU8.subarray(io.dst, io.dst + n), at);
      return n;
    };
  })();
  return zstd;
}
async function compressJob(job) {
  try {
    const input = new Uint8Array(job.buffer, 0, job.length);
    const cs = job.clusterSize;
    const n = Math.ceil(job.length / cs);
    const compress = job.type === 0 ? deflate : await zstdCodec();
    if (scratch.length < n * cs + 8) scratch = new Uint8Array(n * cs + 8);
    const sizes = new Int32Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      let cluster = input.subarray(i * cs, Math.min(job.length, (i + 1) * cs));
      if (cluster.length < cs) {
        if (!padded || padded.length !== cs) padded = new Uint8Array(cs);
        padded.fill(0);
        padded.set(cluster);
        cluster = padded;
      }
      const k = compress(cluster, scratch, total);
      sizes[i] = k;
      if (k > 0) total += k;
    }
    // Back in the job's own buffer (it holds n clusters, the results are smaller): nothing allocated
    // here outlives the job, so this thread's malloc arena does not fragment around buffers that the
    // calling thread frees whenever its garbage collector gets to them.
    new Uint8Array(job.buffer, 0, total).set(scratch.subarray(0, total));
    parentPort.postMessage({ id: job.id, sizes, total, buffer: job.buffer }, [sizes.buffer, job.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: job.id, error: String((e && e.stack) || e), buffer: job.buffer }, [job.buffer]);
  }
  if (collect) collect({ type: 'minor' });
}
// One job per turn of the event loop: the native addon frees its output buffers from finalizers
// that run as immediates, which never get a turn while queued messages keep arriving.
const queue = [];
let busy = false;
function next() {
  const job = queue.shift();
  if (!job) {
    busy = false;
    return;
  }
  compressJob(job).then(() => setImmediate(next));
}
parentPort.on('message', (job) => {
  queue.push(job);
  if (!busy) {
    busy = true;
    next();
  }
});
`;

type Result = Array<Uint8Array | undefined>;

/** One job's answer: the clusters' results, views of `buffer`. */
interface JobResult {
  clusters: Result;
  buffer: ArrayBuffer;
}

/** Buffers kept for reuse: a few jobs in flight and the results of a few calls still being written. */
const FREE_BUFFERS = 24;

interface Job {
  type: number;
  /** The caller's bytes, not copied until the job is handed to a worker. */
  data: Uint8Array;
  clusterSize: number;
  resolve: (value: JobResult) => void;
  reject: (e: unknown) => void;
}

interface Reply {
  id: number;
  sizes?: Int32Array;
  total?: number;
  buffer?: ArrayBuffer;
  error?: string;
}

interface Slot {
  worker: NodeWorker;
  running: Map<number, Job>;
}

class CompressPool {
  #slots: Slot[];
  #queue: Job[] = [];
  /** Job buffers to reuse: back from a worker with an error, or released by the caller once written. */
  readonly spares = new SpareBuffers(FREE_BUFFERS, JOB_BYTES);
  #nextId = 1;
  broken = false;

  constructor(slots: Slot[]) {
    this.#slots = slots;
    for (const slot of slots) {
      slot.worker.on('message', (m: Reply) => this.#done(slot, m));
      slot.worker.on('error', (e) => this.#fail(e));
      slot.worker.on('exit', () => this.#fail(new Error('compression worker exited')));
      slot.worker.unref();
    }
  }

  get size(): number {
    return this.#slots.length;
  }

  #done(slot: Slot, m: Reply): void {
    const job = slot.running.get(m.id);
    const failed = m.error !== undefined || !m.sizes || !m.buffer || m.total === undefined;
    if (failed && m.buffer) this.release([m.buffer]);
    if (!job) return;
    slot.running.delete(m.id);
    this.#pump();
    if (slot.running.size === 0) slot.worker.unref();
    if (failed) {
      job.reject(new Error(`compression worker: ${m.error ?? 'no result'}`));
      return;
    }
    // The results stay in the job's buffer (no copy); it is reused once the caller releases it.
    const clusters: Result = [];
    let at = 0;
    for (const n of m.sizes!) {
      if (n < 0) clusters.push(undefined);
      else {
        clusters.push(new Uint8Array(m.buffer!, at, n));
        at += n;
      }
    }
    job.resolve({ clusters, buffer: m.buffer! });
    this.#idle();
  }

  #fail(e: unknown): void {
    this.broken = true;
    for (const slot of this.#slots) {
      for (const job of slot.running.values()) job.reject(e);
      slot.running.clear();
    }
    for (const job of this.#queue.splice(0)) job.reject(e);
  }

  /** Takes back job buffers whose results are no longer needed. */
  release(buffers: readonly ArrayBuffer[]): void {
    this.spares.give(buffers);
    this.#idle();
  }

  /** With nothing to do, the spare buffers go after a while (a long-lived process does not keep them). */
  #idle(): void {
    if (this.#queue.length === 0 && this.#slots.every((s) => s.running.size === 0)) this.spares.idle();
  }

  /** Hands queued jobs to workers with room, least busy first; the input is copied only now. */
  #pump(): void {
    while (this.#queue.length > 0 && !this.broken) {
      const slot = this.#slots.reduce((a, b) => (b.running.size < a.running.size ? b : a));
      if (slot.running.size >= DEPTH) return;
      const job = this.#queue.shift()!;
      const id = this.#nextId++;
      // Room for whole clusters: the worker writes its results back into this buffer.
      const room = Math.ceil(job.data.length / job.clusterSize) * job.clusterSize;
      const buffer = this.spares.take(room);
      new Uint8Array(buffer, 0, job.data.length).set(job.data);
      slot.running.set(id, job);
      // A worker with work keeps the process alive until it answers.
      slot.worker.ref();
      slot.worker.postMessage({ id, type: job.type, buffer, length: job.data.length, clusterSize: job.clusterSize }, [buffer]);
    }
  }

  /** Compresses `data` (whole clusters; the last may be short and is padded) on the next free worker. */
  run(type: number, data: Uint8Array, clusterSize: number): Promise<JobResult> {
    this.spares.busy();
    return new Promise((resolve, reject) => {
      if (this.broken) return reject(new Error('compression pool is broken'));
      this.#queue.push({ type, data, clusterSize, resolve, reject });
      this.#pump();
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
    // Resolved here, from this module's place (the worker's eval'd code has none); '' where absent:
    // zstd in the workers then needs node:zlib's (Node >= 22.15), and the caller falls back otherwise.
    const workerData = zstdModulePaths();
    const slots: Slot[] = [];
    for (let i = 0; i < count; i++) slots.push({ worker: new Worker(WORKER_SOURCE, { eval: true, workerData }), running: new Map() });
    return new CompressPool(slots);
  } catch {
    return undefined;
  }
}

/** The pool once started, whose spare buffers releasePooled hands answers back to. */
let started: CompressPool | undefined;

/**
 * Compresses whole clusters of `data` in the worker pool: one entry per
 * cluster, the compressed bytes or undefined where they would not be
 * smaller. Answers undefined when the pool is not available (the caller
 * then compresses on its own thread); cuts large inputs into jobs that
 * every worker takes from. The bytes are views of the pool's buffers: a
 * caller that is done with them (written) hands them back with
 * {@link releasePooled}; one that does not leaves them to the garbage
 * collector.
 */
export async function compressInPool(type: number, data: Uint8Array, clusterSize: number): Promise<Result | undefined> {
  if (type !== COMPRESSION_ZLIB && type !== COMPRESSION_ZSTD) return undefined;
  const clusters = Math.ceil(data.length / clusterSize);
  if (clusters < POOL_MIN_CLUSTERS) return undefined;
  pool ??= startPool();
  const p = await pool;
  started = p;
  if (!p || p.broken) return undefined;
  const perJob = Math.max(1, Math.floor(JOB_BYTES / clusterSize));
  // At least one job per worker where there are enough clusters, so one call alone keeps every core busy.
  const jobs = Math.max(Math.ceil(clusters / perJob), Math.min(p.size, Math.floor(clusters / POOL_MIN_CLUSTERS)));
  const per = Math.ceil(clusters / jobs);
  const running: Array<Promise<JobResult>> = [];
  for (let c = 0; c < clusters; c += per) running.push(p.run(type, data.subarray(c * clusterSize, Math.min(data.length, (c + per) * clusterSize)), clusterSize));
  const settled = await Promise.allSettled(running);
  const done = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  if (done.length < settled.length) {
    // A worker failed (or zstd is not available there): this call and later ones compress on the calling thread.
    p.broken = true;
    p.release(done.map((r) => r.buffer));
    return undefined;
  }
  const result = done.flatMap((r) => r.clusters);
  p.spares.lend(
    result,
    done.map((r) => r.buffer),
  );
  return result;
}

/**
 * Hands the buffers behind a compressInPool answer back to the pool, once
 * the caller has written the bytes and holds no view of them. Optional
 * (memory is reused sooner); anything else is ignored.
 */
export function releasePooled(result: Result | undefined): void {
  started?.spares.release(result);
}
