/**
 * Compressed grains (VMDK 5.0 technote: compressAlgorithm 1, "DEFLATE"):
 * each grain is one zlib stream (RFC 1950 framing around RFC 1951 data),
 * which is what VMware, open-vmdk and qemu write and read.
 *
 * This is the package's one module that imports from Node (node:zlib), as
 * in @img/qcow2. Inflation is bounded: a grain inflates to at most one
 * grain, and the compressed input is bounded by the caller before it is
 * read, so no allocation depends on a size read from the image beyond that.
 */
import * as zlib from 'node:zlib';
import { corrupt, hex } from '@img/block';

/** Deflate level used for new grains: zlib's default, the speed/size balance qemu also uses. */
export const DEFLATE_LEVEL = 6;

/** Where a compressed grain sits, for messages. */
export interface GrainContext {
  file?: string;
  hostOffset: number;
}

/**
 * Inflates one grain's zlib stream into at most `grainBytes` bytes. A
 * stream that would inflate further (a decompression bomb) or is not valid
 * zlib is ERR_IMG_CORRUPT naming the grain's file offset. The result may be
 * shorter than a grain (the last grain of an extent); the caller zero-fills.
 */
export function inflateGrain(input: Uint8Array, grainBytes: number, ctx: GrainContext): Uint8Array {
  let out: Uint8Array;
  try {
    out = zlib.inflateSync(input, { maxOutputLength: grainBytes, chunkSize: Math.max(1024, grainBytes) });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than one grain (${grainBytes} bytes)` : `is not a valid zlib stream (${(e as Error).message})`;
    throw corrupt('vmdk', ctx.file, `compressed grain at ${hex(ctx.hostOffset)} ${why}`, { field: 'compressed grain', offset: ctx.hostOffset, cause: e });
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** inflateGrain on libuv's thread pool (same bounds, same errors), so that several grains inflate at once. */
export function inflateGrainAsync(input: Uint8Array, grainBytes: number, ctx: GrainContext): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    zlib.inflate(input, { maxOutputLength: grainBytes, chunkSize: Math.max(1024, grainBytes) }, (e, out) => {
      if (!e) return resolve(new Uint8Array(out.buffer, out.byteOffset, out.length));
      const code = (e as { code?: string }).code;
      const why = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than one grain (${grainBytes} bytes)` : `is not a valid zlib stream (${e.message})`;
      reject(corrupt('vmdk', ctx.file, `compressed grain at ${hex(ctx.hostOffset)} ${why}`, { field: 'compressed grain', offset: ctx.hostOffset, cause: e }));
    });
  });
}

/** Compresses one grain as a zlib stream. */
export function deflateGrain(data: Uint8Array, level = DEFLATE_LEVEL): Uint8Array {
  const out = zlib.deflateSync(data, { level });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/**
 * Compressing many grains off the main thread, so that writing a
 * streamOptimized image uses every core while the main thread reads and
 * writes. A small pool of worker threads (one per core, at most 4, as
 * qcow2's compress pool: the main thread mostly waits for I/O, so on two
 * cores two workers keep both busy), created on first use and unref'd while idle (they
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

async function getPool(): Promise<PoolWorker[] | null> {
  if (pool !== undefined) return pool;
  try {
    const [{ Worker }, { availableParallelism }] = await Promise.all([import('node:worker_threads'), import('node:os')]);
    const count = Math.max(1, Math.min(4, availableParallelism()));
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
 * shorter), each one zlib stream; on the worker pool when there is one.
 */
export async function deflateGrains(data: Uint8Array, grainBytes: number, level = DEFLATE_LEVEL): Promise<Uint8Array[]> {
  const workers = data.length > grainBytes ? await getPool() : null;
  if (!workers || workers.length === 0) {
    const out: Uint8Array[] = [];
    for (let at = 0; at < data.length; at += grainBytes) out.push(deflateGrain(data.subarray(at, Math.min(data.length, at + grainBytes)), level));
    return out;
  }
  const owner = workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  const id = nextId++;
  const input = data.slice().buffer;
  return new Promise<Uint8Array[]>((resolve, reject) => {
    waiting.set(id, { resolve, reject, owner });
    if (owner.busy++ === 0) owner.worker.ref();
    owner.worker.postMessage({ id, input, grainBytes, level }, [input]);
  });
}
