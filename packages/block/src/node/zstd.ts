/**
 * Whole clusters compressed with zstd by the native helper
 * (native/zstd.c): the system's libzstd, found at run time, on libuv's
 * thread pool, each frame straight into an output buffer. The zstd
 * writers (`qemu-img convert -c -o compression_type=zstd`) use it where
 * it is there and their JavaScript encoders where it is not.
 */
import { nativeExports, nativeStatus } from './native-loader.js';

type ZstdClusters = (input: Uint8Array, clusterSize: number, level: number, output: Uint8Array, sizes: Int32Array) => Promise<number>;

let native: ZstdClusters | null | undefined;

function zstdFn(): ZstdClusters | undefined {
  // nativeStatus() decides (the helper, a libzstd, IMG_NATIVE_ZSTD), so `img doctor` says what runs.
  native ??= nativeStatus().features.zstd ? (nativeExports()!.zstdClusters as ZstdClusters) : null;
  return native ?? undefined;
}

/** Whether {@link compressZstdClusters} can run here: the native helper is loaded and found a libzstd. */
export function nativeZstdAvailable(): boolean {
  return zstdFn() !== undefined;
}

/**
 * Compresses `input`, cut into clusters of `clusterSize` bytes (a short
 * last one as if padded with zeros to a whole cluster), one zstd frame per
 * cluster at `level`, on one of libuv's pool threads. Frames smaller than
 * a cluster are packed from the start of `output` and `sizes[i]` holds
 * cluster i's length, or -1 where its frame would not be smaller (nothing
 * written for it). Resolves to the bytes written. `sizes` has one entry
 * per cluster and `output` room for as many whole clusters; leave all
 * three alone until the promise settles. Answers undefined, having done
 * nothing, where the native helper or libzstd is missing.
 *
 * @example
 * ```ts
 * import { compressZstdClusters } from '@img/block/node';
 * const input = new Uint8Array(4 * 65536).fill(7);
 * const sizes = new Int32Array(4);
 * const output = new Uint8Array(input.length);
 * const bytes = await compressZstdClusters(input, 65536, 3, output, sizes);
 * if (bytes === undefined) console.log('no native zstd here');
 * ```
 */
export function compressZstdClusters(input: Uint8Array, clusterSize: number, level: number, output: Uint8Array, sizes: Int32Array): Promise<number> | undefined {
  const fn = zstdFn();
  return fn ? fn(input, clusterSize, level, output, sizes) : undefined;
}
