/**
 * Compressed grains (VMDK 5.0 technote: compressAlgorithm 1, "DEFLATE"):
 * each grain is one zlib stream (RFC 1950 framing around RFC 1951 data),
 * which is what VMware, open-vmdk and qemu write and read.
 *
 * This is the package's one module that imports from Node (node:zlib), as
 * in @img/qcow2. Inflation is bounded: a grain inflates to at most one
 * grain, and the compressed input is bounded by the caller before it is
 * read, so no allocation depends on a size read from the image beyond that.
 */
import * as zlib from 'node:zlib';
import { corrupt, hex } from '@img/block';

/** Deflate level used for new grains: zlib's default, the speed/size balance qemu also uses. */
export const DEFLATE_LEVEL = 6;

/** Where a compressed grain sits, for messages. */
export interface GrainContext {
  file?: string;
  hostOffset: number;
}

/**
 * Inflates one grain's zlib stream into at most `grainBytes` bytes. A
 * stream that would inflate further (a decompression bomb) or is not valid
 * zlib is ERR_IMG_CORRUPT naming the grain's file offset. The result may be
 * shorter than a grain (the last grain of an extent); the caller zero-fills.
 */
export function inflateGrain(input: Uint8Array, grainBytes: number, ctx: GrainContext): Uint8Array {
  let out: Uint8Array;
  try {
    out = zlib.inflateSync(input, { maxOutputLength: grainBytes, chunkSize: Math.max(1024, grainBytes) });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const why = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than one grain (${grainBytes} bytes)` : `is not a valid zlib stream (${(e as Error).message})`;
    throw corrupt('vmdk', ctx.file, `compressed grain at ${hex(ctx.hostOffset)} ${why}`, { field: 'compressed grain', offset: ctx.hostOffset, cause: e });
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** Compresses one grain as a zlib stream. */
export function deflateGrain(data: Uint8Array, level = DEFLATE_LEVEL): Uint8Array {
  const out = zlib.deflateSync(data, { level });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}
