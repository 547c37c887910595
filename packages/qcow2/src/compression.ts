/**
 * Compressed clusters (spec: "Compressed Clusters Descriptor",
 * compression_type): deflate as raw RFC 1951 streams, zstd as one or more
 * frames. Both decoders are bounded: a cluster inflates to exactly one
 * cluster or the image is corrupt, and no allocation depends on a size
 * read from the image beyond one cluster.
 *
 * This is the one module that imports from Node (node:zlib, node:module);
 * zstd decodes with node:zlib where the platform has it (Node >= 22.15)
 * and with the pure-JS `fzstd` package elsewhere, and encodes with, in
 * order: node:zlib, the optional native addon `@toondepauw/node-zstd`
 * (prebuilt libzstd for the common platforms, no install script), libzstd
 * in WebAssembly (`@bokuweb/zstd-wasm`).
 */
import * as zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { Decompress as FzstdDecompress } from 'fzstd';
import { corrupt, hex } from '@img/block';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from './constants.js';

const FORMAT = 'qcow2';

type ZstdSync = (input: Uint8Array, options?: { maxOutputLength?: number }) => Uint8Array;
const nodeZstdDecompress = (zlib as unknown as { zstdDecompressSync?: ZstdSync }).zstdDecompressSync;
const nodeZstdCompress = (zlib as unknown as { zstdCompressSync?: (input: Uint8Array) => Uint8Array }).zstdCompressSync;

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
 * the last sector), or throws ERR_IMG_CORRUPT. The result is the decoder's
 * own buffer where it can be (no copy), so it belongs to the caller.
 */
export function decompressCluster(type: number, input: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array {
  if (type === COMPRESSION_ZLIB) return inflateCluster(input, clusterSize, ctx);
  if (type === COMPRESSION_ZSTD) return zstdCluster(input, clusterSize, ctx);
  throw corrupt(FORMAT, ctx.file, `unknown compression type ${type}`, { field: 'compression_type' });
}

function bad(ctx: CompressedContext, what: string, cause?: unknown): Error {
  const e = corrupt(FORMAT, ctx.file, `compressed cluster at ${hex(ctx.hostOffset)} ${what}`, { field: 'compressed cluster', offset: ctx.hostOffset });
  if (cause !== undefined) Object.defineProperty(e, 'cause', { value: cause });
  return e;
}

function inflateCluster(input: Uint8Array, clusterSize: number, ctx: CompressedContext): Uint8Array {
  let result: Uint8Array;
  try {
    result = zlib.inflateRawSync(input, {
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
      maxOutputLength: clusterSize,
      chunkSize: Math.max(64, clusterSize),
    });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') throw bad(ctx, `inflates to more than one cluster (${clusterSize} bytes)`, e);
    throw bad(ctx, `is not a valid deflate stream (${(e as Error).message})`, e);
  }
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

const TOO_LARGE = 'ERR_BUFFER_TOO_LARGE';

/**
 * One zstd frame through fzstd's streaming decoder, block by block, so
 * that a frame of many tiny blocks that each expand to 128 KiB stops at
 * `room` bytes instead of being decoded whole.
 */
function fzstdBounded(frame: Uint8Array, room: number): Uint8Array {
  const out = new Uint8Array(room);
  let n = 0;
  const d = new FzstdDecompress((chunk) => {
    if (n + chunk.length > room) throw Object.assign(new RangeError('zstd frame decodes past one cluster'), { code: TOO_LARGE });
    out.set(chunk, n);
    n += chunk.length;
  });
  d.push(frame, true);
  return out.subarray(0, n);
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
      const out = nodeZstdDecompress ? nodeZstdDecompress(slice, { maxOutputLength: room }) : fzstdBounded(slice, room);
      produced = new Uint8Array(out.buffer, out.byteOffset, out.length);
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw bad(ctx, `decompresses to more than one cluster (${clusterSize} bytes)`, e);
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
 * Compresses one cluster: raw deflate with qemu's 4 KiB window, or a zstd
 * frame. Resolves to undefined when the result would not be smaller than
 * the cluster (the caller then stores it uncompressed).
 */
export async function compressCluster(type: number, input: Uint8Array): Promise<Uint8Array | undefined> {
  let out: Uint8Array;
  if (type === COMPRESSION_ZLIB) out = zlib.deflateRawSync(input, { level: 6, windowBits: 12 });
  else if (type === COMPRESSION_ZSTD) out = (await zstdCompressor())(input);
  else throw new RangeError(`unknown compression type ${type}`);
  return out.length < input.length ? new Uint8Array(out.buffer, out.byteOffset, out.length) : undefined;
}

/** The level qemu compresses at (it sets none: libzstd's default, ZSTD_CLEVEL_DEFAULT). */
export const ZSTD_LEVEL = 3;

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

/** How zstd clusters are encoded here: node:zlib's libzstd, the native addon's, or libzstd in WebAssembly. */
export type ZstdEncoderKind = 'node:zlib' | 'native' | 'wasm';

/** The native addon's package; its prebuilt binaries come as one optional package per platform. */
const NATIVE_ZSTD = '@toondepauw/node-zstd';

/**
 * The addon's platform packages that may hold a binary for this process,
 * most likely first (napi-rs names). Loading one directly skips the
 * addon's own loader, which asks process.report whether libc is musl
 * (tens of milliseconds in every thread that loads it).
 */
function nativeZstdPlatforms(): string[] {
  const { platform, arch } = process;
  if (platform === 'linux') return [`${NATIVE_ZSTD}-linux-${arch}-gnu`, `${NATIVE_ZSTD}-linux-${arch}-musl`];
  if (platform === 'win32') return [`${NATIVE_ZSTD}-win32-${arch}-msvc`];
  return [`${NATIVE_ZSTD}-${platform}-${arch}`];
}

/**
 * Where the zstd encoders live, for this thread and the worker pool's:
 * `native`, the native addon's modules to try in order (its platform
 * binaries, then its own loader), and `wasm`, libzstd in WebAssembly ('' if
 * absent). Resolved from this module or, where a bundler moved it, from
 * wherever `@img/qcow2` itself resolves. `IMG_ZSTD=wasm` skips the native
 * addon (tests, comparisons).
 */
export function zstdModulePaths(): { native: string[]; wasm: string } {
  const bases = [import.meta.url];
  try {
    bases.push(createRequire(import.meta.url).resolve('@img/qcow2/package.json'));
  } catch {
    // Not installed as a package (tests run from src): the first base is enough.
  }
  const find = (name: string, from = bases): string => {
    for (const base of from) {
      try {
        return createRequire(base).resolve(name);
      } catch {
        // Try the next base.
      }
    }
    return '';
  };
  const wasm = find('@bokuweb/zstd-wasm');
  const main = process.env.IMG_ZSTD === 'wasm' ? '' : find(NATIVE_ZSTD);
  // pnpm links the platform packages next to the addon, not next to us: resolve them from there.
  const native = main ? [...nativeZstdPlatforms().map((name) => find(name, [main])).filter(Boolean), main] : [];
  return { native, wasm };
}

interface NativeZstd {
  Encoder: new (level: number) => { encodeSync(data: Uint8Array): Uint8Array };
}

/** The native addon's encoder, or undefined where it is not installed or does not load on this platform. */
function loadNativeZstd(paths: readonly string[]): ((input: Uint8Array) => Uint8Array) | undefined {
  for (const path of paths) {
    try {
      // Two statements: `new (require(path)).Encoder()` loses its parentheses in tsc 7's output.
      const addon = createRequire(import.meta.url)(path) as NativeZstd;
      const encoder = new addon.Encoder(ZSTD_LEVEL);
      return (input) => {
        const frame = encoder.encodeSync(input);
        const out = new Uint8Array(frame.length + 4);
        return out.subarray(0, copyZstdFrame(frame, input.length, out, 0));
      };
    } catch {
      // A binary for another libc, or none: the next candidate.
    }
  }
  return undefined;
}

interface ZstdWasm {
  init(): Promise<void>;
  compress(input: Uint8Array, level?: number): Uint8Array;
}

let zstdEncoder: Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> | undefined;

function chooseZstdEncoder(): Promise<{ kind: ZstdEncoderKind; compress: (input: Uint8Array) => Uint8Array }> {
  zstdEncoder ??= (async () => {
    if (nodeZstdCompress) return { kind: 'node:zlib' as const, compress: nodeZstdCompress };
    const paths = zstdModulePaths();
    const native = loadNativeZstd(paths.native);
    if (native) return { kind: 'native' as const, compress: native };
    const mod = (await import('@bokuweb/zstd-wasm')) as unknown as ZstdWasm & { default?: ZstdWasm };
    const z = mod.default ?? mod;
    await z.init();
    return { kind: 'wasm' as const, compress: (input: Uint8Array) => z.compress(input, ZSTD_LEVEL) };
  })();
  return zstdEncoder;
}

/**
 * A zstd compressor (one frame per call, at qemu's level): node:zlib's
 * where the platform has one, else the native addon where it is installed,
 * else libzstd compiled to WebAssembly, loaded on first use.
 */
export async function zstdCompressor(): Promise<(input: Uint8Array) => Uint8Array> {
  return (await chooseZstdEncoder()).compress;
}

/** Which zstd encoder this thread uses (and so the worker pool: both choose in the same order). */
export async function zstdEncoderKind(): Promise<ZstdEncoderKind> {
  return (await chooseZstdEncoder()).kind;
}
