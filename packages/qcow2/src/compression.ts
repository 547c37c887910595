/**
 * Compressed clusters (spec: "Compressed Clusters Descriptor",
 * compression_type): deflate as raw RFC 1951 streams, zstd as one or more
 * frames. Both decoders are bounded: a cluster inflates to exactly one
 * cluster or the image is corrupt, and no allocation depends on a size
 * read from the image beyond one cluster.
 *
 * The format's rules live here; the byte codecs under them are the
 * platform's (codecs.ts): the web platform's by default, node:zlib's where
 * Node's entry installed them. Decompression answers a value where the
 * codec is synchronous (Node) and a promise where it is not (the web's
 * DecompressionStream).
 */
import { corrupt, hex, looksIncompressible, unsupported } from '@img/block';
import { CODEC_UNAVAILABLE, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, TOO_LARGE, type Qcow2Codecs, type ZstdEncoderKind } from './codecs.js';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from './constants.js';
import { webCodecs } from './web-codecs.js';

export { ZSTD_LEVEL, type ZstdEncoderKind } from './codecs.js';

const FORMAT = 'qcow2';

let codecs: Qcow2Codecs = webCodecs;

/** The codecs compressed clusters use in this realm: the web platform's unless others were installed. */
export function qcow2Codecs(): Qcow2Codecs {
  return codecs;
}

/**
 * Replaces the codecs every qcow2 image in this realm uses for compressed
 * clusters (Node's entry installs node:zlib's). Answers the ones replaced.
 */
export function setQcow2Codecs(next: Qcow2Codecs): Qcow2Codecs {
  const before = codecs;
  codecs = next;
  return before;
}

/** Largest zstd window a compressed cluster may ask for (qemu's frames never exceed one 2 MiB cluster). */
const MAX_ZSTD_WINDOW = 8 * 1024 * 1024;
const ZSTD_MAGIC = 0xfd2fb528;

/** Context for messages: the file and where the compressed cluster sits. */
export interface CompressedContext {
  file?: string;
  hostOffset: number;
}

/** The name qemu-img info uses for a compression_type value. */
export function compressionTypeName(type: number): string {
  return type === COMPRESSION_ZSTD ? 'zstd' : type === COMPRESSION_ZLIB ? 'zlib' : `unknown (${type})`;
}

/**
 * Decompresses one cluster of `clusterSize` bytes from `input` (the
 * compressed bytes, possibly followed by unrelated bytes up to the end of
 * the last sector), or throws (or rejects with) ERR_IMG_CORRUPT. The
 * result is the decoder's own buffer where it can be (no copy), so it
 * belongs to the caller; it is a promise where the codec is asynchronous,
 * and the caller must not reuse `input` until it settles.
 */
export function decompressCluster(type: number, input: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array | Promise<Uint8Array> {
  if (type === COMPRESSION_ZLIB) return inflateCluster(input, clusterSize, ctx);
  if (type === COMPRESSION_ZSTD) return zstdCluster(input, clusterSize, ctx);
  throw corrupt(FORMAT, ctx.file, `unknown compression type ${type}`, { field: 'compression_type' });
}

/** A whole deflate cluster to inflate into `out` (one cluster's room), and where its stream sits. */
export interface ClusterJob {
  input: Uint8Array;
  out: Uint8Array;
  ctx: CompressedContext;
}

/**
 * Inflates each job's deflate cluster into its `out`: all at once where
 * the codecs can (Node's native helper, on every core), else one by one.
 * Each cluster must inflate to exactly `clusterSize` bytes, under the same
 * rules and with the same errors as {@link decompressCluster} (a stream
 * cut short that still fills the cluster stands, as in qemu); with several
 * bad clusters, the first in `jobs`.
 */
export async function inflateClustersInto(jobs: readonly ClusterJob[], clusterSize: number): Promise<void> {
  const results = jobs.length > 1 ? await codecs.inflateRawMany?.(jobs) : undefined;
  if (!results) {
    for (const j of jobs) j.out.set(await inflateCluster(j.input, clusterSize, j.ctx));
    return;
  }
  jobs.forEach((j, i) => {
    const r = results[i]!;
    if (r.status === INFLATE_TOO_LARGE) throw bad(j.ctx, `inflates to more than one cluster (${clusterSize} bytes)`);
    if (r.status !== 0 && r.status !== INFLATE_TRUNCATED) throw bad(j.ctx, `is not a valid deflate stream (${r.message ?? 'invalid data'})`);
    if (r.bytes !== clusterSize) throw bad(j.ctx, `inflates to ${r.bytes} bytes instead of one cluster (${clusterSize})`);
  });
}

function bad(ctx: CompressedContext, what: string, cause?: unknown): Error {
  const e = corrupt(FORMAT, ctx.file, `compressed cluster at ${hex(ctx.hostOffset)} ${what}`, { field: 'compressed cluster', offset: ctx.hostOffset });
  if (cause !== undefined) Object.defineProperty(e, 'cause', { value: cause });
  return e;
}

function inflateCluster(input: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array | Promise<Uint8Array> {
  let result: Uint8Array | Promise<Uint8Array>;
  try {
    result = codecs.inflateRaw(input, clusterSize);
  } catch (e) {
    throw inflateFailure(e, clusterSize, ctx);
  }
  if (result instanceof Uint8Array) return oneCluster(result, clusterSize, ctx);
  return result.then(
    (r) => oneCluster(r, clusterSize, ctx),
    (e: unknown) => {
      throw inflateFailure(e, clusterSize, ctx);
    },
  );
}

function inflateFailure(e: unknown, clusterSize: number, ctx: CompressedContext): Error {
  if ((e as { code?: string } | null)?.code === CODEC_UNAVAILABLE) return codecUnavailable(e, ctx.file, `compressed cluster at ${hex(ctx.hostOffset)}`);
  if ((e as { code?: string }).code === TOO_LARGE) return bad(ctx, `inflates to more than one cluster (${clusterSize} bytes)`, e);
  return bad(ctx, `is not a valid deflate stream (${e instanceof Error ? e.message : String(e)})`, e);
}

/** The platform cannot decode or encode deflate: not the image's fault (ERR_IMG_UNSUPPORTED), and the way out. */
function codecUnavailable(e: unknown, file: string | undefined, what: string): Error {
  const err = unsupported(FORMAT, file, `${what}: ${(e as Error).message}; install other codecs with setQcow2Codecs()`, { field: 'compression_type' });
  Object.defineProperty(err, 'cause', { value: e });
  return err;
}

function oneCluster(result: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array {
  if (result.length !== clusterSize) throw bad(ctx, `inflates to ${result.length} bytes instead of one cluster (${clusterSize})`);
  return new Uint8Array(result.buffer, result.byteOffset, result.length);
}

function readLe(buf: Uint8Array, at: number, width: number): number {
  let v = 0;
  for (let i = width - 1; i >= 0; i--) v = v * 256 + buf[at + i]!;
  return v;
}

/** Where a zstd frame starting at `at` ends, and what it asks for; walks block headers only. */
function zstdFrame(input: Uint8Array, at: number, ctx: CompressedContext): { end: number; window: number; contentSize: number | undefined; skippable: boolean } {
  if (at + 4 > input.length) throw bad(ctx, 'ends inside a zstd frame header');
  const magic = readLe(input, at, 4);
  if (magic >>> 4 === 0x184d2a5) {
    if (at + 8 > input.length) throw bad(ctx, 'ends inside a skippable zstd frame');
    const end = at + 8 + readLe(input, at + 4, 4);
    if (end > input.length) throw bad(ctx, 'has a skippable zstd frame past its end');
    return { end, window: 0, contentSize: 0, skippable: true };
  }
  if (magic !== ZSTD_MAGIC) throw bad(ctx, `is not zstd data (magic ${hex(magic)})`);
  let pos = at + 4;
  if (pos >= input.length) throw bad(ctx, 'ends inside a zstd frame header');
  const fhd = input[pos++]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  if ((fhd >> 3) & 1) throw bad(ctx, 'has a zstd frame with the reserved bit set');
  let window = 0;
  if (!singleSegment) {
    if (pos >= input.length) throw bad(ctx, 'ends inside a zstd frame header');
    const wd = input[pos++]!;
    const base = 2 ** (10 + (wd >> 3));
    window = base + (base / 8) * (wd & 7);
  }
  const dictBytes = [0, 1, 2, 4][dictFlag]!;
  if (dictBytes && pos + dictBytes <= input.length && readLe(input, pos, dictBytes) !== 0) throw bad(ctx, 'needs a zstd dictionary');
  pos += dictBytes;
  const fcsBytes = fcsFlag === 0 ? singleSegment : [0, 2, 4, 8][fcsFlag]!;
  let contentSize: number | undefined;
  if (fcsBytes) {
    if (pos + fcsBytes > input.length) throw bad(ctx, 'ends inside a zstd frame header');
    contentSize = readLe(input, pos, fcsBytes) + (fcsBytes === 2 ? 256 : 0);
    pos += fcsBytes;
  }
  if (singleSegment) window = contentSize ?? 0;
  for (;;) {
    if (pos + 3 > input.length) throw bad(ctx, 'ends inside a zstd block');
    const bh = readLe(input, pos, 3);
    pos += 3;
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw bad(ctx, 'has a reserved zstd block type');
    pos += type === 1 ? 1 : size;
    if (pos > input.length) throw bad(ctx, 'ends inside a zstd block');
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  if (pos > input.length) throw bad(ctx, 'ends inside a zstd checksum');
  return { end: pos, window, contentSize, skippable: false };
}

function zstdCluster(input: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array {
  let output: Uint8Array | undefined;
  let inPos = 0;
  let outPos = 0;
  // qemu's decoder reads frames until one cluster is produced; what follows is the next cluster's data or padding.
  while (outPos < clusterSize) {
    const frame = zstdFrame(input, inPos, ctx);
    const slice = input.subarray(inPos, frame.end);
    inPos = frame.end;
    if (frame.skippable) continue;
    const room = clusterSize - outPos;
    if (frame.contentSize !== undefined && frame.contentSize > room) throw bad(ctx, `decompresses to more than one cluster (${clusterSize} bytes)`);
    if (frame.window > MAX_ZSTD_WINDOW) throw bad(ctx, `asks for a zstd window of ${frame.window} bytes`);
    let produced: Uint8Array;
    try {
      const out = codecs.zstdDecompress(slice, room);
      produced = new Uint8Array(out.buffer, out.byteOffset, out.length);
    } catch (e) {
      if ((e as { code?: string }).code === TOO_LARGE) throw bad(ctx, `decompresses to more than one cluster (${clusterSize} bytes)`, e);
      throw bad(ctx, `is not valid zstd data (${(e as Error).message})`, e);
    }
    if (produced.length > room) throw bad(ctx, `decompresses to more than one cluster (${clusterSize} bytes)`);
    if (outPos === 0 && produced.length === clusterSize) return produced;
    output ??= new Uint8Array(clusterSize);
    output.set(produced, outPos);
    outPos += produced.length;
    if (produced.length === 0 && inPos >= input.length) break;
  }
  if (outPos !== clusterSize || !output) throw bad(ctx, `decompresses to ${outPos} bytes instead of one cluster (${clusterSize})`);
  return output;
}

/**
 * Compresses one cluster: raw deflate (Node: qemu's 4 KiB window and
 * level, byte for byte), or a zstd frame. Resolves to undefined when the result would not be smaller than
 * the cluster (the caller then stores it uncompressed), and, for deflate,
 * without compressing when the cluster looks like bytes deflate cannot
 * shrink (`looksIncompressible` of `@img/block`).
 */
export async function compressCluster(type: number, input: Uint8Array): Promise<Uint8Array | undefined> {
  let out: Uint8Array;
  if (type === COMPRESSION_ZLIB) {
    // Deflate would take as long over bytes it cannot shrink and then lose (qemu then stores the cluster as it is).
    if (looksIncompressible(input)) return undefined;
    try {
      out = await codecs.deflateRaw(input);
    } catch (e) {
      if ((e as { code?: string } | null)?.code === CODEC_UNAVAILABLE) throw codecUnavailable(e, undefined, 'deflate compression');
      throw e;
    }
  } else if (type === COMPRESSION_ZSTD) out = (await zstdCompressor())(input);
  else throw new RangeError(`unknown compression type ${type}`);
  return out.length < input.length ? new Uint8Array(out.buffer, out.byteOffset, out.length) : undefined;
}

/**
 * Copies the zstd frame `frame` (the whole encoding of `contentSize`
 * bytes) into `out` at `at` and answers how many bytes it wrote. A
 * streaming encoder (the native addon's) writes a window descriptor and no
 * content size; this rewrites such a header to the single-segment form
 * with Frame_Content_Size that libzstd's one-shot ZSTD_compress and qemu
 * write, which is valid for the same blocks (RFC 8878 3.1.1.1: the window
 * becomes the content size, and no offset in a frame reaches past its own
 * content), one byte longer, and lets a decoder size its output from the
 * header. Any other frame is copied as it is.
 *
 * Self-contained on purpose: the worker pool embeds its source.
 */
export function copyZstdFrame(frame: Uint8Array, contentSize: number, out: Uint8Array, at: number): number {
  const fhd = frame.length > 5 ? frame[4]! : 0;
  // Magic 0xFD2FB528 (LE); frame header descriptor: FCS flag 0, not single segment, reserved bit clear, no dictionary.
  const patchable = frame.length > 6 && frame[0] === 0x28 && frame[1] === 0xb5 && frame[2] === 0x2f && frame[3] === 0xfd && (fhd & 0xeb) === 0 && contentSize > 0 && contentSize < 2 ** 32;
  if (!patchable) {
    out.set(frame, at);
    return frame.length;
  }
  const fcsBytes = contentSize < 256 ? 1 : contentSize < 65536 + 256 ? 2 : 4;
  const stored = fcsBytes === 2 ? contentSize - 256 : contentSize;
  out.set(frame.subarray(0, 4), at);
  out[at + 4] = ((fcsBytes === 1 ? 0 : fcsBytes === 2 ? 1 : 2) << 6) | 0x20 | (fhd & 0x04);
  for (let i = 0; i < fcsBytes; i++) out[at + 5 + i] = Math.floor(stored / 2 ** (8 * i)) & 0xff;
  out.set(frame.subarray(6), at + 5 + fcsBytes);
  return frame.length - 1 + fcsBytes;
}

/** A zstd compressor (one frame per call, at qemu's level), from the codecs in use, loaded on first use. */
export async function zstdCompressor(): Promise<(input: Uint8Array) => Uint8Array> {
  return (await codecs.zstdEncoder()).compress;
}

/** Which zstd encoder the codecs in use have (Node's worker pool chooses in the same order). */
export async function zstdEncoderKind(): Promise<ZstdEncoderKind> {
  return (await codecs.zstdEncoder()).kind;
}
