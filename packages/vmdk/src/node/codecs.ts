/**
 * Node's codecs for compressed grains: node:zlib (zlib streams at level 6,
 * what qemu writes), and a worker pool that compresses many grains on
 * every core. Node-only; installed by Node's entry (root.ts, the
 * `@img/vmdk` Node resolves, and the `@img/vmdk/node` helpers) so that the core modules import
 * nothing from Node.
 */
import * as zlib from 'node:zlib';
import { DEFLATE_LEVEL, type VmdkCodecs } from '../codecs.js';
import { setVmdkCodecs } from '../compression.js';

function inflateNode(input: Uint8Array, limit: number): Uint8Array {
  // One grain is small: inflating it here costs less than a hop to the thread pool and back.
  // Past `limit`, node:zlib throws ERR_BUFFER_TOO_LARGE, the code the codecs use (TOO_LARGE).
  const out = zlib.inflateSync(input, { maxOutputLength: limit, chunkSize: Math.max(1024, limit) });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

function deflateNode(input: Uint8Array): Uint8Array {
  const out = zlib.deflateSync(input, { level: DEFLATE_LEVEL });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/**
 * Compressing many grains off the main thread, so that writing a
 * streamOptimized image uses every core while the main thread reads and
 * writes. A small pool of worker threads (IMG_COMPRESS_THREADS, or one per core, at most 4: the
 * main thread mostly waits for I/O, so on two cores two workers keep both busy), created on first use and unref'd while idle (they
 * never keep a process alive); where workers cannot start, grains are
 * compressed here. The workers run the same zlib at the same level, so the
 * bytes are the same either way.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
parentPort.on('message', ({ id, input, grainBytes, level }) => {
  const data = new Uint8Array(input);
  const parts = [];
  const sizes = [];
  let total = 0;
  for (let at = 0; at < data.length; at += grainBytes) {
    const out = zlib.deflateSync(data.subarray(at, Math.min(data.length, at + grainBytes)), { level });
    parts.push(out);
    sizes.push(out.length);
    total += out.length;
  }
  const packed = new Uint8Array(total);
  let pos = 0;
  for (const p of parts) { packed.set(p, pos); pos += p.length; }
  parentPort.postMessage({ id, packed: packed.buffer, sizes }, [packed.buffer]);
});
`;

interface PoolWorker {
  worker: import('node:worker_threads').Worker;
  busy: number;
}

let pool: PoolWorker[] | undefined | null;
let nextId = 0;
const waiting = new Map<number, { resolve: (v: Uint8Array[]) => void; reject: (e: unknown) => void; owner: PoolWorker }>();

/**
 * Workers in the pool: IMG_COMPRESS_THREADS when set to an integer >= 0
 * (as qcow2's compression pool reads it; 0 compresses on the main thread),
 * else one per core, at most 4.
 */
export function poolSize(cores: number): number {
  const env = Number(process.env.IMG_COMPRESS_THREADS);
  if (process.env.IMG_COMPRESS_THREADS !== undefined && process.env.IMG_COMPRESS_THREADS.trim() !== '' && Number.isInteger(env) && env >= 0) return env;
  return Math.max(1, Math.min(4, cores));
}

async function getPool(): Promise<PoolWorker[] | null> {
  if (pool !== undefined) return pool;
  try {
    const [{ Worker }, { availableParallelism }] = await Promise.all([import('node:worker_threads'), import('node:os')]);
    const count = poolSize(availableParallelism());
    if (count === 0) {
      pool = null;
      return pool;
    }
    pool = [];
    for (let i = 0; i < count; i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true });
      const entry: PoolWorker = { worker, busy: 0 };
      worker.on('message', (m: { id: number; packed: ArrayBuffer; sizes: number[] }) => {
        const w = waiting.get(m.id);
        if (!w) return;
        waiting.delete(m.id);
        if (--entry.busy === 0) worker.unref();
        const packed = new Uint8Array(m.packed);
        const out: Uint8Array[] = [];
        let at = 0;
        for (const n of m.sizes) {
          out.push(packed.subarray(at, at + n));
          at += n;
        }
        w.resolve(out);
      });
      worker.on('error', (e) => {
        for (const [id, w] of waiting) {
          if (w.owner !== entry) continue;
          waiting.delete(id);
          w.reject(e);
        }
        pool = pool?.filter((p) => p !== entry) ?? null;
      });
      worker.unref();
      pool.push(entry);
    }
  } catch {
    pool = null;
  }
  return pool;
}

/**
 * Compresses `data` as consecutive grains of `grainBytes` (the last may be
 * shorter), each one zlib stream, on the worker pool; undefined where
 * there is none (the caller then compresses here).
 */
export async function deflateGrainsInPool(data: Uint8Array, grainBytes: number, level = DEFLATE_LEVEL): Promise<Uint8Array[] | undefined> {
  const workers = await getPool();
  if (!workers || workers.length === 0) return undefined;
  const owner = workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  const id = nextId++;
  const input = data.slice().buffer;
  return new Promise<Uint8Array[]>((resolve, reject) => {
    waiting.set(id, { resolve, reject, owner });
    if (owner.busy++ === 0) owner.worker.ref();
    owner.worker.postMessage({ id, input, grainBytes, level }, [input]);
  });
}

/** Node's codecs: node:zlib, and the worker pool for many grains. */
export const nodeCodecs: VmdkCodecs = {
  name: 'node',
  inflate: inflateNode,
  deflate: deflateNode,
  deflateGrains: (data, grainBytes) => deflateGrainsInPool(data, grainBytes),
};

/**
 * Makes compressed grains use Node's codecs in this realm. `@img/vmdk`
 * and `@img/vmdk/node` do it when Node loads them; a bundle for Node that
 * resolved the package's default entry calls it once. Answers the codecs
 * it replaced.
 */
export function installNodeCodecs(): VmdkCodecs {
  return setVmdkCodecs(nodeCodecs);
}
