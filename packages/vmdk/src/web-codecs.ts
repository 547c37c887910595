/**
 * The web platform's codecs for compressed grains: zlib streams through
 * `DecompressionStream`/`CompressionStream('deflate')`. Nothing here needs
 * Node; Node itself uses node:zlib (node/codecs.ts), which is faster and
 * compresses on a worker pool.
 */
import { CODEC_UNAVAILABLE, inflateWebBounded, deflateWeb } from '@img/block';
import { GZIP_BAD, GZIP_BAD_CHECK, GZIP_TRUNCATED, type VmdkCodecs } from './codecs.js';

/** Inflates a zlib stream through a DecompressionStream, stopping past `limit` bytes; a whole grain stands whatever follows it, as zlib's uncompress() (qemu's decoder) ignores trailing bytes. */
export function inflateWeb(input: Uint8Array, limit: number): Promise<Uint8Array> {
  return inflateWebBounded('deflate', input, limit);
}

/** One zlib stream of `input` through a CompressionStream (the platform's level). */
export function deflateWebZlib(input: Uint8Array): Promise<Uint8Array> {
  return deflateWeb('deflate', input);
}

/** Gzip input handed to the DecompressionStream per write: one write inflates to at most ~4 MiB (deflate's ratio is at most 1032:1), however much the platform enqueues at once. */
const GUNZIP_SLICE = 4096;

/** The error a gzip decoder gave, with one of the codes of VmdkCodecs.gunzip (zlib's words where the platform's decoder is zlib, as Node's is). */
function gzipError(e: unknown): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  const code = (err as { code?: string }).code;
  const kind = code === 'Z_BUF_ERROR' || /unexpected end/i.test(err.message) ? GZIP_TRUNCATED : /incorrect (data|length) check/i.test(err.message) ? GZIP_BAD_CHECK : GZIP_BAD;
  return Object.assign(new Error(err.message, { cause: err }), { code: kind });
}

/**
 * A gzip file inflated through a DecompressionStream('gzip') as it is read
 * (VmdkCodecs.gunzip). Input is written a slice at a time and only as the
 * output is taken (the readable side's backpressure), so what waits in
 * memory is bounded whatever the ratio; stopping early cancels the input.
 */
export async function* gunzipWeb(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let ds: DecompressionStream;
  try {
    ds = new DecompressionStream('gzip');
  } catch (e) {
    throw Object.assign(new Error('this platform has no DecompressionStream("gzip")', { cause: e }), { code: CODEC_UNAVAILABLE });
  }
  const writer = ds.writable.getWriter();
  const reader = ds.readable.getReader();
  const it = input[Symbol.asyncIterator]();
  let stopped = false;
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
          await writer.abort(e).catch(() => undefined);
          return;
        }
        if (next.done) {
          ended = true;
          await writer.close();
          return;
        }
        for (let at = 0; at < next.value.length; at += GUNZIP_SLICE) {
          if (stopped) return;
          await writer.write(next.value.subarray(at, at + GUNZIP_SLICE));
        }
      }
    } catch {
      // A write or the close failed: the stream errored, and its reader says why.
    } finally {
      if (!ended) await it.return?.().catch(() => undefined);
    }
  })();
  try {
    for (;;) {
      let r: Awaited<ReturnType<typeof reader.read>>;
      try {
        r = await reader.read();
      } catch (e) {
        if (inputFailure) throw inputFailure.error;
        throw gzipError(e);
      }
      if (r.done) break;
      yield r.value;
    }
  } finally {
    stopped = true;
    await reader.cancel().catch(() => undefined);
    await writer.abort().catch(() => undefined);
    await feeding;
  }
}

/** The web platform's codecs. */
export const webCodecs: VmdkCodecs = {
  name: 'web',
  inflate: inflateWeb,
  deflate: deflateWebZlib,
  gunzip: gunzipWeb,
};
