/**
 * `@img/qcow2` as Node loads it (the package's "node" export condition):
 * the same API as the default entry, with Node's codecs for compressed
 * clusters installed (node:zlib, the native zstd addon, the worker pool),
 * so Node programs keep qemu's exact deflate bytes and the fast paths
 * without importing anything else; and node:crypto's primitives, so
 * encrypted images read.
 */
import { installNodeCodecs } from './codecs.js';
import { installNodeCryptoPrimitives } from './crypto.js';

installNodeCodecs();
installNodeCryptoPrimitives();

export * from '../index.js';
