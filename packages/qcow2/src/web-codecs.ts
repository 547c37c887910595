/**
 * The web platform's codecs for compressed clusters: deflate through
 * `DecompressionStream`/`CompressionStream('deflate-raw')` (asynchronous),
 * zstd decoded by the pure-JS fzstd and encoded by libzstd in WebAssembly
 * (`@bokuweb/zstd-wasm`, whose `browser` build a bundler picks). Nothing
 * here needs Node; Node itself uses node:zlib's codecs (node/codecs.ts),
 * which are faster and write qemu's exact deflate bytes.
 */
import { Decompress as FzstdDecompress } from 'fzstd';
import { CODEC_UNAVAILABLE, TOO_LARGE, ZSTD_LEVEL, type Qcow2Codecs, type ZstdEncoderKind } from './codecs.js';

/** Compressed bytes handed to the decompressor per write: bounds what one write can inflate to (deflate expands at most ~1032:1). */
const INFLATE_SLICE = 4096;

/** The smallest chunk a DecompressionStream is assumed to emit (all but the last of a write; Chromium's and Node's are 16 KiB or more). */
const MIN_CHUNK = 1024;

function tooLarge(what: string): Error {
  return Object.assign(new RangeError(what), { code: TOO_LARGE });
}

/** A platform stream for raw deflate, or an error with code CODEC_UNAVAILABLE where there is none. */
function deflateStream<T>(make: () => T, what: string): T {
  try {
    return make();
  } catch (e) {
    throw Object.assign(new Error(`this platform has no ${what}("deflate-raw")`, { cause: e }), { code: CODEC_UNAVAILABLE });
  }
}

/**
 * Raw inflate through a DecompressionStream, stopping past `limit` bytes.
 *
 * A qcow2 compressed cluster is read in whole sectors, so its deflate
 * stream is usually followed by other bytes, and a DecompressionStream
 * errors on them ("junk after the end"), in the same write that yields the
 * stream's last output. An error discards chunks still queued in the
 * readable side, but not chunks already handed to a read request: so reads
 * are requested well ahead (enough for `limit` bytes in chunks of
 * MIN_CHUNK), and the answer is judged by what arrived, as qemu judges it:
 * exactly one cluster is a cluster whatever follows.
 */
export async function inflateRawWeb(input: Uint8Array, limit: number): Promise<Uint8Array> {
  const ds = deflateStream(() => new DecompressionStream('deflate-raw'), 'DecompressionStream');
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
        const chunk = r.value;
        if (over || n + chunk.length > limit) {
          // Stop the stream: a write waiting for room would wait for ever.
          over = true;
          reader.cancel().catch(() => undefined);
          return;
        }
        out.set(chunk, n);
        n += chunk.length;
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
    for (let at = 0; at < input.length && !over && !ended && failure === undefined; at += INFLATE_SLICE) {
      await writer.write(input.subarray(at, at + INFLATE_SLICE));
    }
    if (!over && failure === undefined) await writer.close();
  } catch (e) {
    failure ??= e;
  }
  if (over || failure === undefined) {
    // Done early (too large) or closed: outstanding reads end as the stream is cancelled or finishes.
    await reader.cancel().catch(() => undefined);
  }
  while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
  writer.abort().catch(() => undefined);
  if (over) throw tooLarge(`deflate stream inflates past ${limit} bytes`);
  // A full cluster stands whatever the stream did after it (qemu accepts it the same way).
  if (failure !== undefined && n < limit) throw failure instanceof Error ? failure : new Error(String(failure));
  return out.subarray(0, n);
}

/** Reads a byte stream to the end, into one array. */
async function readAll(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = readable.getReader();
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    chunks.push(r.value);
    total += r.value.length;
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Raw deflate through a CompressionStream (the platform's level and
 * window: qemu's decoder inflates a whole cluster in one call, so a
 * distance up to 32 KiB back reads from its output buffer, not its 4 KiB
 * window).
 */
export async function deflateRawWeb(input: Uint8Array): Promise<Uint8Array> {
  const cs = deflateStream(() => new CompressionStream('deflate-raw'), 'CompressionStream');
  const writer = cs.writable.getWriter();
  const reading = readAll(cs.readable);
  await Promise.all([writer.write(input), writer.close()]);
  return reading;
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
