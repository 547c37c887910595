/**
 * Bounded deflate through the web platform's `DecompressionStream` and
 * `CompressionStream`, shared by the formats whose compressed units are
 * deflate streams (qcow2 clusters: raw deflate; VMDK grains: zlib). Nothing
 * here needs Node. The formats keep their own rules (what is corrupt, what
 * a unit may inflate to); this only turns bytes into bytes.
 */

/** Error code of a codec whose output would pass the limit it was given (node:zlib's, so both behave alike). */
export const CODEC_TOO_LARGE = 'ERR_BUFFER_TOO_LARGE';

/** A batch inflate's status for one block (`inflateBlocks` in `@img/block/node`, a format's many-at-once codec): the stream ended inside its output. */
export const INFLATE_OK = 0;
/** A batch inflate's status: not a valid stream in the framing asked for. */
export const INFLATE_BAD = -1;
/** A batch inflate's status: the stream inflates to more than its output's length. */
export const INFLATE_TOO_LARGE = -2;
/** A batch inflate's status: the input ends inside the stream. */
export const INFLATE_TRUNCATED = -3;

/** Error code of a codec the platform lacks (an old browser without DecompressionStream). */
export const CODEC_UNAVAILABLE = 'ERR_CODEC_UNAVAILABLE';

/** The two deflate framings the formats store: RFC 1951 alone, or inside RFC 1950's zlib wrapper. */
export type WebDeflateFormat = 'deflate-raw' | 'deflate';

/** Compressed bytes handed to the decompressor per write: bounds what one write can inflate to (deflate expands at most ~1032:1). */
const INFLATE_SLICE = 4096;

/** The smallest chunk a DecompressionStream is assumed to emit (all but the last of a write; Chromium's and Node's are 16 KiB or more). */
const MIN_CHUNK = 1024;

function tooLarge(what: string): Error {
  return Object.assign(new RangeError(what), { code: CODEC_TOO_LARGE });
}

function platformStream<T>(make: () => T, what: string, format: WebDeflateFormat): T {
  try {
    return make();
  } catch (e) {
    throw Object.assign(new Error(`this platform has no ${what}("${format}")`, { cause: e }), { code: CODEC_UNAVAILABLE });
  }
}

/**
 * Inflates the deflate stream at the start of `input`, stopping with a
 * {@link CODEC_TOO_LARGE} error rather than produce more than `limit`
 * bytes.
 *
 * A compressed unit is read in whole sectors, so its stream is usually
 * followed by other bytes, and a DecompressionStream errors on them in the
 * same write that yields the stream's last output. An error discards chunks
 * still queued on the readable side but not chunks already handed to a read
 * request, so reads are requested well ahead (enough for `limit` bytes in
 * chunks of MIN_CHUNK) and the answer is judged by what arrived: a whole
 * unit (`limit` bytes) stands whatever followed it, as zlib's one-shot
 * decoders (qemu's) accept it.
 *
 * @example
 * ```ts
 * const cluster = await inflateWebBounded('deflate-raw', stored, 65536);
 * ```
 */
export async function inflateWebBounded(format: WebDeflateFormat, input: Uint8Array, limit: number): Promise<Uint8Array> {
  const ds = platformStream(() => new DecompressionStream(format), 'DecompressionStream', format);
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
  // Done early (too large) or closed: outstanding reads end as the stream is cancelled or finishes.
  if (over || failure === undefined) await reader.cancel().catch(() => undefined);
  while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
  writer.abort().catch(() => undefined);
  if (over) throw tooLarge(`${format} stream inflates past ${limit} bytes`);
  if (failure !== undefined && n < limit) throw failure instanceof Error ? failure : new Error(String(failure));
  return out.subarray(0, n);
}

/**
 * One deflate stream of `input` through a CompressionStream, at the
 * platform's level and window.
 *
 * @example
 * ```ts
 * const grain = await deflateWeb('deflate', bytes);
 * ```
 */
export async function deflateWeb(format: WebDeflateFormat, input: Uint8Array): Promise<Uint8Array> {
  const cs = platformStream(() => new CompressionStream(format), 'CompressionStream', format);
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
