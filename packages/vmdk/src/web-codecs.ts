/**
 * The web platform's codecs for compressed grains: zlib streams through
 * `DecompressionStream`/`CompressionStream('deflate')`. Nothing here needs
 * Node; Node itself uses node:zlib (node/codecs.ts), which is faster and
 * compresses on a worker pool.
 */
import { inflateWebBounded, deflateWeb } from '@img/block';
import type { VmdkCodecs } from './codecs.js';

/** Inflates a zlib stream through a DecompressionStream, stopping past `limit` bytes; a whole grain stands whatever follows it, as zlib's uncompress() (qemu's decoder) ignores trailing bytes. */
export function inflateWeb(input: Uint8Array, limit: number): Promise<Uint8Array> {
  return inflateWebBounded('deflate', input, limit);
}

/** One zlib stream of `input` through a CompressionStream (the platform's level). */
export function deflateWebZlib(input: Uint8Array): Promise<Uint8Array> {
  return deflateWeb('deflate', input);
}

/** The web platform's codecs. */
export const webCodecs: VmdkCodecs = {
  name: 'web',
  inflate: inflateWeb,
  deflate: deflateWebZlib,
};
