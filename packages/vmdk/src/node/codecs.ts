/**
 * Node's codecs for compressed grains: node:zlib (zlib streams at level 6,
 * what qemu writes; level 0 for grains deflate cannot shrink), compressing many grains at once on libuv's thread
 * pool, so on every core. Node-only; installed by Node's entry (root.ts, the
 * `@img/vmdk` Node resolves, and the `@img/vmdk/node` helpers) so that the core modules import
 * nothing from Node.
 */
import { availableParallelism } from 'node:os';
import { looksIncompressible } from '@img/block';
import { inflateBlocks } from '@img/block/node';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import type * as Zlib from 'node:zlib';
import { DEFLATE_LEVEL, GZIP_BAD, GZIP_BAD_CHECK, GZIP_TRUNCATED, type VmdkCodecs } from '../codecs.js';
import { setVmdkCodecs } from '../compression.js';

// node:zlib is loaded when a compressed cluster or grain is first met: it brings Node's streams, which a command
// without compressed data would otherwise load at its start.
const requireBuiltin = createRequire(import.meta.url);
let zlibModule: typeof Zlib | undefined;
const zlib = (): typeof Zlib => (zlibModule ??= requireBuiltin('node:zlib') as typeof Zlib);

function inflateNode(input: Uint8Array, limit: number): Uint8Array {
  // One grain is small: inflating it here costs less than a hop to the thread pool and back.
  // Past `limit`, node:zlib throws ERR_BUFFER_TOO_LARGE, the code the codecs use (TOO_LARGE).
  // The output chunk is one byte longer than the limit: a whole grain then fills it only in
  // part, and node:zlib stops there instead of allocating a second chunk to look for more
  // output (half the garbage per grain; a stream that goes on still fails the limit).
  const out = zlib().inflateSync(input, { maxOutputLength: limit, chunkSize: Math.max(1024, limit + 1) });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

function deflateNode(input: Uint8Array): Uint8Array {
  const out = zlib().deflateSync(input, { level: levelFor(input, DEFLATE_LEVEL), chunkSize: outputChunk(input.length) });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/**
 * The zlib level for a grain: `level`, or 0 (stored blocks, a valid zlib
 * stream every reader inflates) when the grain looks like bytes deflate
 * cannot shrink, which deflate would take as long over as over any other
 * and then store anyway (a 64 KiB random grain: 65,564 bytes at level 6,
 * 65,552 at level 0, about 1.3 ms against 0.15).
 */
function levelFor(grain: Uint8Array, level: number): number {
  return level > 0 && looksIncompressible(grain) ? 0 : level;
}

/** An output chunk that holds a deflated grain of `bytes` whole (zlib's bound plus framing), so the stream is one buffer, not several joined. */
function outputChunk(bytes: number): number {
  return Math.max(1024, bytes + (bytes >> 8) + 64);
}

/**
 * Compressing many grains off the main thread, so that writing a
 * streamOptimized image uses every core while the main thread reads and
 * writes. Each grain is one `deflate` call of node:zlib, which it runs on
 * libuv's thread pool; at most IMG_COMPRESS_THREADS (or two per core, at
 * most 4) run at once (img-convert sets UV_THREADPOOL_SIZE to 8, so file
 * I/O on the same pool still gets threads).
 *
 * Why not worker threads (what this was before): each worker is a V8
 * isolate of its own, about 10 MiB idle, and V8 lets each isolate hold up
 * to some 64 MiB of dead buffers before it collects them; two workers
 * took a streamOptimized write from about 115 MiB of RSS to 210-220 MiB,
 * and kept theirs after the write. On the thread pool the output buffers
 * belong to the main isolate, and nothing outlives the write. Same zlib,
 * same level: the bytes are the same either way.
 */
let running = 0;
const turns: Array<() => void> = [];

/**
 * Grains compressed at once: IMG_COMPRESS_THREADS when set to an integer
 * >= 0 (as qcow2's compression pool reads it; 0 compresses on the main
 * thread), else two per core, at least 2 and at most 4: with one per core
 * a pool thread idles while the main thread takes its result and hands it
 * the next grain (A, 64 MiB, 2 idle cores: 0.83 s with 4 in flight, 0.97 s
 * with 2).
 */
export function poolSize(cores: number): number {
  const env = Number(process.env.IMG_COMPRESS_THREADS);
  if (process.env.IMG_COMPRESS_THREADS !== undefined && process.env.IMG_COMPRESS_THREADS.trim() !== '' && Number.isInteger(env) && env >= 0) return env;
  return Math.max(2, Math.min(4, 2 * cores));
}

/** Runs `job` once fewer than `width` pool jobs of this module are running. */
async function onPool<T>(width: number, job: () => Promise<T>): Promise<T> {
  if (running >= width) await new Promise<void>((resolve) => turns.push(resolve));
  running++;
  try {
    return await job();
  } finally {
    running--;
    turns.shift()?.();
  }
}

function asBytes(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

async function deflateOnPool(grain: Uint8Array, level: number, width: number): Promise<Uint8Array> {
  return onPool(width, () => new Promise<Uint8Array>((resolve, reject) => zlib().deflate(grain, { level: levelFor(grain, level), chunkSize: outputChunk(grain.length) }, (e, b) => (e ? reject(e) : resolve(asBytes(b))))));
}

/**
 * Compresses `data` as consecutive grains of `grainBytes` (the last may be
 * shorter), each one zlib stream, on libuv's thread pool; undefined where
 * IMG_COMPRESS_THREADS is 0 (the caller then compresses here). The grains
 * are read in place while they are compressed: leave `data` unchanged
 * until the promise settles.
 */
export async function deflateGrainsInPool(data: Uint8Array, grainBytes: number, level = DEFLATE_LEVEL): Promise<Uint8Array[] | undefined> {
  const width = poolSize(availableParallelism());
  if (width === 0) return undefined;
  const jobs: Promise<Uint8Array>[] = [];
  for (let at = 0; at < data.length; at += grainBytes) {
    const job = deflateOnPool(data.subarray(at, Math.min(data.length, at + grainBytes)), level, width);
    job.catch(() => undefined); // judged by Promise.all below; handled now so that an early failure is not unhandled
    jobs.push(job);
  }
  return Promise.all(jobs);
}

/** Output pieces of the gzip decoder: node:zlib fills one at a time and, past the readable side's mark, waits to be read before it inflates more. */
const GUNZIP_CHUNK = 64 * 1024;

/** node:zlib's error as one of the codes of VmdkCodecs.gunzip. */
function gzipError(e: unknown): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  const code = (err as { code?: string }).code;
  const kind = code === 'Z_BUF_ERROR' ? GZIP_TRUNCATED : /incorrect (data|length) check/.test(err.message) ? GZIP_BAD_CHECK : GZIP_BAD;
  return Object.assign(new Error(err.message, { cause: err }), { code: kind });
}

/**
 * A gzip file inflated by node:zlib (createGunzip, on libuv's thread pool)
 * as it is read (VmdkCodecs.gunzip): input is written as the decoder
 * drains it, output taken a chunk at a time, so memory stays at a few
 * chunks whatever the ratio; concatenated gzip members are read on, as
 * gzip(1) reads them. Stopping early destroys the decoder and returns the
 * input.
 */
export async function* gunzipNode(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const z = zlib().createGunzip({ chunkSize: GUNZIP_CHUNK });
  const stop = new AbortController();
  const it = input[Symbol.asyncIterator]();
  let inputFailure: { error: unknown } | undefined;
  const feeding = (async () => {
    let ended = false;
    try {
      for (;;) {
        let next: IteratorResult<Uint8Array>;
        try {
          next = await it.next();
        } catch (e) {
          inputFailure = { error: e };
          ended = true;
          z.destroy(e instanceof Error ? e : new Error(String(e)));
          return;
        }
        if (next.done) {
          ended = true;
          z.end();
          return;
        }
        if (stop.signal.aborted) return;
        if (!z.write(next.value)) await once(z, 'drain', { signal: stop.signal });
      }
    } catch {
      // The decoder failed or was stopped: its reader says why.
    } finally {
      if (!ended) await it.return?.().catch(() => undefined);
    }
  })();
  try {
    const out = z[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    for (;;) {
      let r: IteratorResult<Buffer>;
      try {
        r = await out.next();
      } catch (e) {
        if (inputFailure) throw inputFailure.error;
        throw gzipError(e);
      }
      if (r.done) break;
      yield new Uint8Array(r.value.buffer, r.value.byteOffset, r.value.length);
    }
  } finally {
    stop.abort();
    z.destroy();
    await feeding;
  }
}

/** Node's codecs: node:zlib, on this thread for one grain and on libuv's thread pool for many. */
export const nodeCodecs: VmdkCodecs = {
  name: 'node',
  // Inflating stays on this thread: measured on 2 idle cores, a text-like 1 GiB streamOptimized
  // image's grains inflated on the pool took 2.4-3.0 s against 2.1 s here (a hand-off per grain
  // costs more than the inflate it moves).
  inflate: inflateNode,
  // Many grains at once (a span of a streamOptimized image) go to the native helper where it
  // loaded: one pool job per core inflating its share straight into place, with no hand-off or
  // garbage per grain. zlib framing: windowBits 15.
  inflateGrains: (grains) => inflateBlocks(grains, 15),
  deflate: deflateNode,
  deflateGrains: (data, grainBytes) => deflateGrainsInPool(data, grainBytes),
  gunzip: gunzipNode,
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
