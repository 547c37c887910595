/**
 * zstd clusters compressed by @img/block's native helper (the system's
 * libzstd on libuv's thread pool), where it is there: no copy of the data
 * to a worker, no buffer per cluster. The frames are libzstd's one-shot
 * ones at qemu's level, as the worker pool's. Node-only.
 */
import { availableParallelism } from 'node:os';
import { compressZstdClusters, nativeZstdAvailable } from '@img/block/node';
import { ZSTD_LEVEL, type CompressedClusters } from '../codecs.js';
import { SpareBuffers } from './spare-buffers.js';

/** The most input bytes in one call to the helper: calls spread over the pool's threads, and memory stays bounded. */
const PART_BYTES = 1 << 20;

/** Output buffers kept for reuse: the results of a few calls still being written. */
const spares = new SpareBuffers(24, PART_BYTES);
let running = 0;
let broken = false;

/** Whether zstd clusters go to the native helper: it found a libzstd, and IMG_ZSTD=wasm (tests, comparisons) is not set. */
export function nativeZstdInUse(): boolean {
  return !broken && process.env.IMG_ZSTD !== 'wasm' && nativeZstdAvailable();
}

/**
 * Compresses the whole clusters of `data` (the last may be short and is
 * padded): one entry per cluster, its frame or undefined where it would
 * not be smaller. Answers undefined where the helper cannot (the caller
 * uses the worker pool); a libzstd failure also turns this path off for
 * the process. The frames are views of reused buffers: hand them back
 * with {@link releaseNativeZstd} once written.
 */
export async function compressZstdNative(data: Uint8Array, clusterSize: number): Promise<CompressedClusters | undefined> {
  if (!nativeZstdInUse() || data.length === 0) return undefined;
  spares.busy();
  const clusters = Math.ceil(data.length / clusterSize);
  const perPart = Math.max(1, Math.floor(PART_BYTES / clusterSize));
  // At least one part per core where there are enough clusters, so one call alone uses every core.
  const parts = Math.max(Math.ceil(clusters / perPart), Math.min(availableParallelism(), clusters));
  const per = Math.ceil(clusters / parts);
  const calls: Array<Promise<{ sizes: Int32Array; buffer: ArrayBuffer }>> = [];
  running++;
  try {
    for (let c = 0; c < clusters; c += per) {
      const n = Math.min(per, clusters - c);
      const out = spares.take(n * clusterSize);
      const sizes = new Int32Array(n);
      const input = data.subarray(c * clusterSize, Math.min(data.length, (c + n) * clusterSize));
      calls.push(compressZstdClusters(input, clusterSize, ZSTD_LEVEL, new Uint8Array(out), sizes)!.then(() => ({ sizes, buffer: out })));
    }
    const settled = await Promise.allSettled(calls);
    const done = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (done.length < settled.length) {
      broken = true;
      return undefined;
    }
    const result: CompressedClusters = [];
    for (const { sizes, buffer: b } of done) {
      let at = 0;
      for (const k of sizes) {
        if (k < 0) result.push(undefined);
        else {
          result.push(new Uint8Array(b, at, k));
          at += k;
        }
      }
    }
    spares.lend(
      result,
      done.map((d) => d.buffer),
    );
    return result;
  } finally {
    if (--running === 0) spares.idle();
  }
}

/** Takes back the buffers behind a {@link compressZstdNative} answer, once its frames are written; anything else is ignored. */
export function releaseNativeZstd(result: CompressedClusters | undefined): void {
  spares.release(result);
}
