/**
 * Compressed grains (VMDK 5.0 technote: compressAlgorithm 1, "DEFLATE"):
 * each grain is one zlib stream (RFC 1950 framing around RFC 1951 data),
 * which is what VMware, open-vmdk and qemu write and read. The rules live
 * here; the byte codecs under them are the platform's (codecs.ts): the web
 * platform's by default, node:zlib's where Node loads the package.
 * Inflation is bounded: a grain inflates to at most one grain, and the
 * compressed input is bounded by the caller before it is read.
 */
import { corrupt, hex, unsupported } from '@img/block';
import { CODEC_UNAVAILABLE, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, TOO_LARGE, type VmdkCodecs } from './codecs.js';
import { webCodecs } from './web-codecs.js';

export { DEFLATE_LEVEL, GZIP_BAD, GZIP_BAD_CHECK, GZIP_TRUNCATED, type VmdkCodecs } from './codecs.js';

let codecs: VmdkCodecs = webCodecs;

/** The codecs compressed grains use in this realm: the web platform's unless others were installed. */
export function vmdkCodecs(): VmdkCodecs {
  return codecs;
}

/**
 * Replaces the codecs every VMDK in this realm uses for compressed grains
 * (Node's entry installs node:zlib's); answers the codecs it replaced.
 *
 * @example
 * ```ts
 * import { installNodeCodecs } from '@img/vmdk/node'; // a bundle for Node that took the default entry
 * installNodeCodecs();
 * ```
 */
export function setVmdkCodecs(next: VmdkCodecs): VmdkCodecs {
  const before = codecs;
  codecs = next;
  return before;
}

/** Where a compressed grain sits, for messages. */
export interface GrainContext {
  file?: string;
  hostOffset: number;
}

/**
 * Inflates one grain's zlib stream into at most `grainBytes` bytes. A
 * stream that would inflate further (a decompression bomb) or is not valid
 * zlib is ERR_IMG_CORRUPT naming the grain's file offset; a platform
 * without the codec is ERR_IMG_UNSUPPORTED. The result may be shorter than
 * a grain (the last grain of an extent); the caller zero-fills.
 */
export async function inflateGrain(input: Uint8Array, grainBytes: number, ctx: GrainContext): Promise<Uint8Array> {
  try {
    return await codecs.inflate(input, grainBytes);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === CODEC_UNAVAILABLE) throw unsupported('vmdk', ctx.file, `compressed grain at ${hex(ctx.hostOffset)}: ${(e as Error).message}; install other codecs with setVmdkCodecs()`, { field: 'compressAlgorithm', cause: e });
    const why = code === TOO_LARGE ? `inflates to more than one grain (${grainBytes} bytes)` : `is not a valid zlib stream (${(e as Error).message})`;
    throw corrupt('vmdk', ctx.file, `compressed grain at ${hex(ctx.hostOffset)} ${why}`, { field: 'compressed grain', offset: ctx.hostOffset, cause: e });
  }
}

/** A compressed grain to inflate into `out` (a whole grain's room), and where its stream sits in `ctx`. */
export interface GrainJob {
  input: Uint8Array;
  out: Uint8Array;
  ctx: GrainContext;
}

/**
 * Inflates each job's grain into its `out` (a whole grain of `grainBytes`)
 * and zero-fills what the stream leaves short: all at once where the codecs
 * can (Node's native helper, on every core), else one by one. The errors
 * are {@link inflateGrain}'s; with several bad grains, the first in `jobs`.
 */
export async function inflateGrainsInto(jobs: readonly GrainJob[], grainBytes: number): Promise<void> {
  const results = jobs.length > 1 ? await codecs.inflateGrains?.(jobs) : undefined;
  if (!results) {
    for (const j of jobs) {
      const inflated = await inflateGrain(j.input, grainBytes, j.ctx);
      j.out.set(inflated.length > j.out.length ? inflated.subarray(0, j.out.length) : inflated);
      if (inflated.length < j.out.length) j.out.fill(0, inflated.length);
    }
    return;
  }
  jobs.forEach((j, i) => {
    const r = results[i]!;
    if (r.status !== 0) {
      const reason = r.status === INFLATE_TRUNCATED ? 'unexpected end of file' : (r.message ?? 'invalid data');
      const why = r.status === INFLATE_TOO_LARGE ? `inflates to more than one grain (${grainBytes} bytes)` : `is not a valid zlib stream (${reason})`;
      throw corrupt('vmdk', j.ctx.file, `compressed grain at ${hex(j.ctx.hostOffset)} ${why}`, { field: 'compressed grain', offset: j.ctx.hostOffset });
    }
    if (r.bytes < j.out.length) j.out.fill(0, r.bytes);
  });
}

/** Compresses one grain as a zlib stream. */
export async function deflateGrain(data: Uint8Array): Promise<Uint8Array> {
  return codecs.deflate(data);
}

/**
 * Compresses `data` as consecutive grains of `grainBytes` (the last may be
 * shorter), each one zlib stream: all at once where the codecs can (Node's
 * worker pool), else grain by grain.
 */
export async function deflateGrains(data: Uint8Array, grainBytes: number): Promise<Uint8Array[]> {
  const many = data.length > grainBytes ? await codecs.deflateGrains?.(data, grainBytes) : undefined;
  if (many) return many;
  const out: Uint8Array[] = [];
  for (let at = 0; at < data.length; at += grainBytes) out.push(await codecs.deflate(data.subarray(at, Math.min(data.length, at + grainBytes))));
  return out;
}
