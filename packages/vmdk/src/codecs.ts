/**
 * The codecs under compressed grains, as the platform provides them.
 * compression.ts owns the format's rules (a grain inflates to at most one
 * grain, what is corrupt); a `VmdkCodecs` only turns bytes into bytes,
 * zlib streams (RFC 1950) both ways, as the VMDK 5.0 technote's
 * compressAlgorithm 1 stores them. The default is the web platform's
 * (`DecompressionStream`/`CompressionStream('deflate')`, web-codecs.ts),
 * which runs in a browser, a worker, Deno, Bun and Node alike; Node
 * resolves `@img/vmdk` to an entry that installs node:zlib's codecs and the
 * worker pool instead (node/codecs.ts), so no core module imports from Node.
 */
/** The error code a codec answers with when its output would pass the limit it was given. */
export { CODEC_TOO_LARGE as TOO_LARGE } from '@img/block';

/** The error code a codec answers with when the platform lacks what it needs (an old browser's missing DecompressionStream). */
export { CODEC_UNAVAILABLE } from '@img/block';

/** Deflate level of new grains: zlib's default, the speed/size balance qemu also uses. */
export const DEFLATE_LEVEL = 6;

/**
 * Byte codecs for compressed grains. A method may answer with a value or
 * a promise (the web's streams are asynchronous, node:zlib's one-shot
 * calls are not).
 */
export interface VmdkCodecs {
  /** For messages and tests: "web" or "node". */
  readonly name: string;
  /**
   * Inflates the zlib stream at the start of `input` (bytes after its end
   * are ignored). Throws an error with code {@link TOO_LARGE} rather than
   * produce more than `limit` bytes, and never allocates much more than
   * `limit`.
   */
  inflate(input: Uint8Array, limit: number): Uint8Array | Promise<Uint8Array>;
  /** One zlib stream of `input`. */
  deflate(input: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /**
   * Optional: compresses `data` as consecutive grains of `grainBytes` (the
   * last may be shorter) at once, off the calling thread (Node's worker
   * pool); answers undefined where it declines.
   */
  deflateGrains?(data: Uint8Array, grainBytes: number): Promise<Uint8Array[] | undefined>;
  /**
   * Optional: inflates many zlib streams at once, each into its `out` (at
   * most `out.length` bytes), off the calling thread (Node's native
   * helper). Answers, per stream, a status (0: it ended;
   * {@link INFLATE_TOO_LARGE}: it goes on past `out`; {@link INFLATE_TRUNCATED}:
   * its input ends inside it; any other negative: not valid, with zlib's
   * `message`) and the bytes written; or undefined, having done nothing,
   * where it declines (the caller then inflates one by one).
   */
  inflateGrains?(grains: readonly { input: Uint8Array; out: Uint8Array }[]): Promise<{ status: number; bytes: number; message?: string }[]> | undefined;
  /**
   * Optional: the bytes of a gzip file (RFC 1952; an OVA member stored
   * with `ovf:compression="gzip"`), inflated as they arrive. The output
   * comes in pieces of bounded size whatever the input holds (a few MiB at
   * most: a bomb is the caller's to stop, by not asking for more), and
   * nothing is read ahead of what the consumer asks for. A damaged stream
   * throws an error whose `code` is {@link GZIP_TRUNCATED},
   * {@link GZIP_BAD_CHECK} or {@link GZIP_BAD}. Without it, the web
   * platform's `DecompressionStream('gzip')` is used.
   */
  gunzip?(input: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array>;
}

/** {@link VmdkCodecs.gunzip}'s error code: the input ends inside the gzip stream. */
export const GZIP_TRUNCATED = 'ERR_GZIP_TRUNCATED';
/** {@link VmdkCodecs.gunzip}'s error code: the trailer's CRC-32 or length differs from the inflated data. */
export const GZIP_BAD_CHECK = 'ERR_GZIP_BAD_CHECK';
/** {@link VmdkCodecs.gunzip}'s error code: not a gzip stream, or damaged deflate data. */
export const GZIP_BAD = 'ERR_GZIP_BAD';

/** What {@link VmdkCodecs.inflateGrains} answers for a stream that inflates past its output, and for one whose input ends inside it. */
export { INFLATE_TOO_LARGE, INFLATE_TRUNCATED } from '@img/block';
