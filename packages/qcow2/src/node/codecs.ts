/**
 * Node's codecs for compressed clusters: node:zlib for deflate (qemu's
 * 4 KiB window and level 6, byte for byte what qemu writes) and for zstd
 * where the platform has it (Node >= 22.15); elsewhere zstd decodes with
 * the pure-JS fzstd and encodes with, in order, the optional native addon
 * `@toondepauw/node-zstd` (prebuilt libzstd for the common platforms, no
 * install script) and libzstd in WebAssembly (`@bokuweb/zstd-wasm`). Many
 * zstd clusters at once go to the system's libzstd through @img/block's
 * native helper where it found one (native-zstd.ts), the rest to the
 * worker pool (compress-pool.ts).
 *
 * Node-only; installed by Node's entry (root.ts) so that the core modules
 * import nothing from Node.
 */
import { createRequire } from 'node:module';
import type * as Zlib from 'node:zlib';
import { inflateBlocks } from '@img/block/node';
import type { CompressedClusters, Qcow2Codecs, ZstdEncoderKind } from '../codecs.js';
import { setQcow2Codecs } from '../compression.js';
import { fzstdBounded, wasmZstdEncoder } from '../web-codecs.js';
import { COMPRESSION_ZSTD } from '../constants.js';
import { compressInPool, releasePooled } from './compress-pool.js';
import { compressZstdNative, releaseNativeZstd } from './native-zstd.js';
import { loadNativeZstd, zstdModulePaths } from './zstd-native.js';

// node:zlib is loaded when a compressed cluster or grain is first met: it brings Node's streams, which a command
// without compressed data would otherwise load at its start.
const requireBuiltin = createRequire(import.meta.url);
let zlibModule: typeof Zlib | undefined;
const zlib = (): typeof Zlib => (zlibModule ??= requireBuiltin('node:zlib') as typeof Zlib);

type ZstdSync = (input: Uint8Array, options?: { maxOutputLength?: number }) => Uint8Array;
/** node:zlib's zstd functions, where the platform has them (Node >= 22.15). */
const nodeZstd = () => zlib() as unknown as { zstdDecompressSync?: ZstdSync; zstdCompressSync?: (input: Uint8Array) => Uint8Array };

function inflateRawNode(input: Uint8Array, limit: number): Uint8Array {
  // A stream cut short yields what it holds (Z_SYNC_FLUSH); past `limit`, node:zlib throws ERR_BUFFER_TOO_LARGE.
  return zlib().inflateRawSync(input, {
    finishFlush: zlib().constants.Z_SYNC_FLUSH,
    maxOutputLength: limit,
    chunkSize: Math.max(64, limit),
  });
}

function deflateRawNode(input: Uint8Array): Uint8Array {
  return zlib().deflateRawSync(input, { level: 6, windowBits: 12 });
}

function zstdDecompressNode(frame: Uint8Array, limit: number): Uint8Array {
  // Past the limit node:zlib throws ERR_BUFFER_TOO_LARGE, the code the codecs use (TOO_LARGE).
  const decompress = nodeZstd().zstdDecompressSync;
  return decompress ? decompress(frame, { maxOutputLength: limit }) : fzstdBounded(frame, limit);
}

let zstdEncoder: Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> | undefined;

/** node:zlib's zstd encoder where the platform has one, else the native addon where it loads, else libzstd in WebAssembly. */
function nodeZstdEncoder(): Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> {
  zstdEncoder ??= (async () => {
    const compress = nodeZstd().zstdCompressSync;
    if (compress) return { kind: 'node:zlib' as const, compress };
    const native = loadNativeZstd(zstdModulePaths().native);
    if (native) return { kind: 'native' as const, compress: native };
    return wasmZstdEncoder();
  })();
  return zstdEncoder;
}

/** Many clusters at once: zstd through the native helper's libzstd where it has one, else (and deflate always) the worker pool. */
async function compressClustersNode(type: number, data: Uint8Array, clusterSize: number): Promise<CompressedClusters | undefined> {
  return (type === COMPRESSION_ZSTD ? await compressZstdNative(data, clusterSize) : undefined) ?? compressInPool(type, data, clusterSize);
}

function releaseClustersNode(result: CompressedClusters | undefined): void {
  releaseNativeZstd(result);
  releasePooled(result);
}

/** Node's codecs: node:zlib, the native zstd addon or WebAssembly, and the worker pool for many clusters. */
export const nodeCodecs: Qcow2Codecs = {
  name: 'node',
  inflateRaw: inflateRawNode,
  // Runs of whole clusters go to the native helper where it loaded: one pool job per core,
  // inflating straight into place (windowBits -15, as node:zlib's default inflates any window).
  inflateRawMany: (blocks) => inflateBlocks(blocks, -15),
  deflateRaw: deflateRawNode,
  zstdDecompress: zstdDecompressNode,
  zstdEncoder: nodeZstdEncoder,
  compressClusters: compressClustersNode,
  releaseClusters: releaseClustersNode,
};

/**
 * Makes compressed clusters use Node's codecs in this realm. `@img/qcow2`
 * does it when Node loads it; a bundle for Node that resolved the
 * package's default entry calls it once. Answers the codecs it replaced.
 */
export function installNodeCodecs(): Qcow2Codecs {
  return setQcow2Codecs(nodeCodecs);
}
