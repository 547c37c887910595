/**
 * The codecs under compressed clusters, as the platform provides them.
 * compression.ts owns the format's rules (one cluster in, one cluster out,
 * zstd frames walked and bounded, what is corrupt); a `Qcow2Codecs` only
 * turns bytes into bytes. The default is the web platform's
 * (`DecompressionStream`/`CompressionStream` for deflate, the pure-JS
 * fzstd to decode zstd, libzstd in WebAssembly to encode it), which runs
 * in a browser, a worker, Deno, Bun and Node alike (web-codecs.ts). Node
 * resolves `@img/qcow2` to an entry that installs node:zlib's codecs and
 * the worker pool instead (node/codecs.ts), so no core module imports from
 * Node. This module only names the shapes; compression.ts holds the codecs
 * in use.
 */
/** The error code a codec answers with when its output would pass the limit it was given. */
export { CODEC_TOO_LARGE as TOO_LARGE } from '@img/block';

/** The error code a codec answers with when the platform lacks what it needs (an old browser's missing DecompressionStream). */
export { CODEC_UNAVAILABLE } from '@img/block';

/** The level qemu compresses zstd at (it sets none: libzstd's default, ZSTD_CLEVEL_DEFAULT). */
export const ZSTD_LEVEL = 3;

/** Which zstd encoder a codec set uses: node:zlib's libzstd, the native addon's, or libzstd in WebAssembly. */
export type ZstdEncoderKind = 'node:zlib' | 'native' | 'wasm';

/** One cluster per entry: its compressed bytes, or undefined where they would not be smaller. */
export type CompressedClusters = Array<Uint8Array | undefined>;

/**
 * Byte codecs for compressed clusters. A method may answer with a value
 * or a promise (the web's streams are asynchronous, node:zlib's one-shot
 * calls are not, and the read path awaits neither when it need not).
 */
export interface Qcow2Codecs {
  /** For messages and tests: "web" or "node". */
  readonly name: string;
  /**
   * Inflates the raw deflate stream at the start of `input` (bytes after
   * its end are ignored; a stream cut short yields what it holds). Throws
   * an error with code {@link TOO_LARGE} rather than produce more than
   * `limit` bytes, and never allocates much more than `limit`.
   */
  inflateRaw(input: Uint8Array, limit: number): Uint8Array | Promise<Uint8Array>;
  /**
   * Optional: inflates many raw deflate streams at once, each into its
   * `out` (at most `out.length` bytes), off the calling thread (Node's
   * native helper). Answers, per stream, a status (0: it ended;
   * {@link INFLATE_TOO_LARGE}: it goes on past `out`;
   * {@link INFLATE_TRUNCATED}: its input ends inside it; any other
   * negative: not valid, with zlib's `message`) and the bytes written; or
   * undefined, having done nothing, where it declines.
   */
  inflateRawMany?(blocks: readonly { input: Uint8Array; out: Uint8Array }[]): Promise<{ status: number; bytes: number; message?: string }[]> | undefined;
  /** Raw deflate of one cluster, in a form qemu's decoder reads. */
  deflateRaw(input: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /** Decodes one whole zstd frame to at most `limit` bytes (throws with code {@link TOO_LARGE} past it). */
  zstdDecompress(frame: Uint8Array, limit: number): Uint8Array;
  /** The zstd encoder (one frame per call, in the single-segment form qemu writes), loaded on first use. */
  zstdEncoder(): Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }>;
  /**
   * Optional: compresses many whole clusters at once (Node's worker
   * pool). Answers undefined where it declines; the caller then
   * compresses cluster by cluster.
   */
  compressClusters?(type: number, data: Uint8Array, clusterSize: number): Promise<CompressedClusters | undefined>;
  /** Optional: takes back the buffers behind a compressClusters answer once it is written. */
  releaseClusters?(result: CompressedClusters | undefined): void;
}

/** What {@link Qcow2Codecs.inflateRawMany} answers for a stream that inflates past its output, and for one whose input ends inside it. */
export { INFLATE_TOO_LARGE, INFLATE_TRUNCATED } from '@img/block';
