/**
 * The web platform's codecs for compressed grains: zlib streams through
 * `DecompressionStream`/`CompressionStream('deflate')`. Nothing here needs
 * Node; Node itself uses node:zlib (node/codecs.ts), which is faster and
 * compresses on a worker pool.
 */
import { CODEC_UNAVAILABLE, TOO_LARGE, type VmdkCodecs } from './codecs.js';

/** Compressed bytes handed to the decompressor per write: bounds what one write can inflate to (deflate expands at most ~1032:1). */
const INFLATE_SLICE = 4096;
/** The smallest chunk a DecompressionStream is assumed to emit (all but the last of a write). */
const MIN_CHUNK = 1024;

function tooLarge(what: string): Error {
  return Object.assign(new RangeError(what), { code: TOO_LARGE });
}

/** A platform stream for zlib, or an error with code CODEC_UNAVAILABLE where there is none. */
function zlibStream<T>(make: () => T, what: string): T {
  try {
    return make();
  } catch (e) {
    throw Object.assign(new Error(`this platform has no ${what}("deflate")`, { cause: e }), { code: CODEC_UNAVAILABLE });
  }
}

/**
 * Inflates a zlib stream through a DecompressionStream, stopping past
 * `limit` bytes. Bytes after the stream's end (a grain read without a
 * marker comes with whatever follows it) make the stream error in the same
 * write that yields its last output; an error discards queued chunks but
 * not those already handed to a read request, so reads are requested well
 * ahead and a whole grain stands whatever followed it, as zlib's
 * uncompress() (qemu's decoder) ignores trailing bytes.
 */
export async function inflateWeb(input: Uint8Array, limit: number): Promise<Uint8Array> {
  const ds = zlibStream(() => new DecompressionStream('deflate'), 'DecompressionStream');
  const writer = ds.writable.getWriter();
  const reader = ds.readable.getReader();
  const out = new Uint8Array(limit);
  let n = 0;
  let over = false;
  let ended = false;
  let failure: unknown;
  const inFlight = new Set<Promise<void>>();
  const request = (): void => {
    const p: Promise<void> = reader.read().then(
      (r) => {
        inFlight.delete(p);
        if (r.done) {
          ended = true;
          return;
        }
        if (over || n + r.value.length > limit) {
          // Stop the stream: a write waiting for room would wait for ever.
          over = true;
          reader.cancel().catch(() => undefined);
          return;
        }
        out.set(r.value, n);
        n += r.value.length;
        if (failure === undefined) request();
      },
      (e: unknown) => {
        inFlight.delete(p);
        failure ??= e;
      },
    );
    inFlight.add(p);
  };
  for (let i = Math.ceil(limit / MIN_CHUNK) + 16; i > 0; i--) request();
  try {
    for (let at = 0; at < input.length && !over && !ended && failure === undefined; at += INFLATE_SLICE) await writer.write(input.subarray(at, at + INFLATE_SLICE));
    if (!over && failure === undefined) await writer.close();
  } catch (e) {
    failure ??= e;
  }
  if (over || failure === undefined) await reader.cancel().catch(() => undefined);
  while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
  writer.abort().catch(() => undefined);
  if (over) throw tooLarge(`zlib stream inflates past ${limit} bytes`);
  if (failure !== undefined && n < limit) throw failure instanceof Error ? failure : new Error(String(failure));
  return out.subarray(0, n);
}

/** One zlib stream of `input` through a CompressionStream (the platform's level). */
export async function deflateWeb(input: Uint8Array): Promise<Uint8Array> {
  const cs = zlibStream(() => new CompressionStream('deflate'), 'CompressionStream');
  const writer = cs.writable.getWriter();
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reading = (async () => {
    const reader = cs.readable.getReader();
    for (;;) {
      const r = await reader.read();
      if (r.done) return;
      chunks.push(r.value);
      total += r.value.length;
    }
  })();
  await Promise.all([writer.write(input), writer.close(), reading]);
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** The web platform's codecs. */
export const webCodecs: VmdkCodecs = {
  name: 'web',
  inflate: inflateWeb,
  deflate: deflateWeb,
};
