/**
 * The web platform's codecs for compressed clusters: deflate through
 * `DecompressionStream`/`CompressionStream('deflate-raw')` (asynchronous),
 * zstd decoded by the pure-JS fzstd and encoded by libzstd in WebAssembly
 * (`@bokuweb/zstd-wasm`, whose `browser` build a bundler picks). Nothing
 * here needs Node; Node itself uses node:zlib's codecs (node/codecs.ts),
 * which are faster and write qemu's exact deflate bytes.
 */
import { Decompress as FzstdDecompress } from 'fzstd';
import { inflateWebBounded, deflateWeb } from '@img/block';
import { TOO_LARGE, ZSTD_LEVEL, type Qcow2Codecs, type ZstdEncoderKind } from './codecs.js';

/** Raw inflate through a DecompressionStream, stopping past `limit` bytes; a whole cluster stands whatever follows it in the sectors read, as qemu judges it. */
export function inflateRawWeb(input: Uint8Array, limit: number): Promise<Uint8Array> {
  return inflateWebBounded('deflate-raw', input, limit);
}

/**
 * Raw deflate through a CompressionStream (the platform's level and
 * window: qemu's decoder inflates a whole cluster in one call, so a
 * distance up to 32 KiB back reads from its output buffer, not its 4 KiB
 * window).
 */
export function deflateRawWeb(input: Uint8Array): Promise<Uint8Array> {
  return deflateWeb('deflate-raw', input);
}

function tooLarge(what: string): Error {
  return Object.assign(new RangeError(what), { code: TOO_LARGE });
}

/**
 * One zstd frame through fzstd's streaming decoder, block by block, so
 * that a frame of many tiny blocks that each expand to 128 KiB stops at
 * `limit` bytes instead of being decoded whole.
 */
export function fzstdBounded(frame: Uint8Array, limit: number): Uint8Array {
  const out = new Uint8Array(limit);
  let n = 0;
  const d = new FzstdDecompress((chunk) => {
    if (n + chunk.length > limit) throw tooLarge('zstd frame decodes past one cluster');
    out.set(chunk, n);
    n += chunk.length;
  });
  d.push(frame, true);
  return out.subarray(0, n);
}

interface ZstdWasm {
  init(): Promise<void>;
  compress(input: Uint8Array, level?: number): Uint8Array;
}

let wasmEncoder: Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> | undefined;

/** libzstd in WebAssembly, loaded once on first use (its one-shot compress writes qemu's single-segment frames). */
export function wasmZstdEncoder(): Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> {
  wasmEncoder ??= (async () => {
    const mod = (await import('@bokuweb/zstd-wasm')) as unknown as ZstdWasm & { default?: ZstdWasm };
    const z = mod.default ?? mod;
    await z.init();
    return { kind: 'wasm' as const, compress: (input: Uint8Array) => z.compress(input, ZSTD_LEVEL) };
  })();
  // A failed load is not cached: the next call tries again.
  wasmEncoder.catch(() => (wasmEncoder = undefined));
  return wasmEncoder;
}

/** The web platform's codecs: the default wherever `@img/qcow2` is not loaded through Node's entry. */
export const webCodecs: Qcow2Codecs = {
  name: 'web',
  inflateRaw: inflateRawWeb,
  deflateRaw: deflateRawWeb,
  zstdDecompress: fzstdBounded,
  zstdEncoder: wasmZstdEncoder,
};
