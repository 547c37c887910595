/**
 * @img/qcow2/node: what only Node has. Node's codecs for compressed
 * clusters (installed already when Node loads `@img/qcow2`; a bundle that
 * took the package's default entry calls {@link installNodeCodecs}), and
 * the worker pool that compresses many clusters on every core.
 */
export { nodeCodecs, installNodeCodecs } from './codecs.js';
export { nodeCryptoPrimitives, installNodeCryptoPrimitives } from './crypto.js';
export { zstdModulePaths } from './zstd-native.js';
export { compressInPool, releasePooled, poolSize, POOL_MIN_CLUSTERS, JOB_BYTES } from './compress-pool.js';
