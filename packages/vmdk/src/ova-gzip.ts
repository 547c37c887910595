/**
 * A disk member stored gzip-compressed in an OVA (`ovf:compression="gzip"`,
 * DSP0243 §7.1; ovftool `--compress=N`): the tar member (or the chunks
 * of an `ovf:chunkSize` file, joined) holds an RFC 1952 gzip stream of the
 * VMDK. `ovf:size` and the manifest's digest are the member's as stored,
 * compressed; the VMDK is what it inflates to, read front to back: the
 * codecs' gunzip (node:zlib in Node, DecompressionStream('gzip')
 * elsewhere) as the member is read, never the whole member in memory.
 *
 * Only a streamOptimized VMDK can be read that way (its grains come in
 * order, each with a marker saying where it goes): any other format would
 * need random access into the compressed member. How far the member may
 * inflate is bounded by the VMDK's own header (its capacity and grain
 * size say how large a streamOptimized file can legitimately be), so a
 * decompression bomb is ERR_IMG_CORRUPT before it costs more than the disk
 * it claims to be; memory stays at a few MiB whatever the ratio.
 */
import { CODEC_UNAVAILABLE, ImageError, corrupt, unsupported, type Storage } from '@img/block';
import { GZIP_BAD, GZIP_BAD_CHECK, GZIP_TRUNCATED } from './codecs.js';
import { vmdkCodecs } from './compression.js';
import { ENTRY_BYTES } from './grain-table.js';
import { GRAIN_MARKER_HEADER } from './marker.js';
import { MAX_DESCRIPTOR_BYTES } from './descriptor.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, SECTOR, hasSparseMagic, parseSparseHeader, type SparseHeader } from './sparse-header.js';
import { gunzipWeb } from './web-codecs.js';

/** The one `ovf:compression` value DSP0243 defines besides "identity". */
export const OVF_GZIP = 'gzip';

/** Pieces a member is read in. */
const READ_PIECE = 1 << 20;

/** What a member inflates to before its VMDK header has been seen (the header is its first sector). */
const HEAD_BOUND = SECTOR;

/** Where a compressed member sits, for messages. */
export interface GzipMemberContext {
  /** The OVA (or "stream"). */
  file: string;
  /** The member's name in the archive (or the href of a chunked file). */
  member: string;
}

/** zlib's compressBound(): the most deflate (with zlib framing) makes of `n` bytes, stored blocks included. */
function zlibBound(n: number): number {
  return n + Math.floor(n / 4096) + Math.floor(n / 16384) + Math.floor(n / 33554432) + 13;
}

/**
 * The most bytes a streamOptimized VMDK with header `h` can hold: what
 * comes before the first grain (descriptor, and in qemu's layout the
 * directory and tables), every grain once with its marker, deflated no
 * worse than zlib's bound, the grain tables and the directory with their
 * markers, the footer and the end-of-stream marker, and 1 MiB to spare.
 * Undefined for a header that is not one (the VMDK reader refuses it).
 */
export function maxStreamOptimizedBytes(h: SparseHeader): number | undefined {
  if ((h.flags & FLAG_COMPRESSED) === 0 || (h.flags & FLAG_MARKERS) === 0 || h.grainSize < 1) return undefined;
  const grains = Math.ceil(h.capacity / h.grainSize);
  const grainBytes = h.grainSize * SECTOR;
  const perGrain = Math.ceil((GRAIN_MARKER_HEADER + zlibBound(grainBytes)) / SECTOR) * SECTOR;
  const gtes = Math.max(1, h.numGTEsPerGT);
  const tables = Math.ceil(grains / gtes);
  const tableBytes = SECTOR + Math.ceil((gtes * ENTRY_BYTES) / SECTOR) * SECTOR;
  const directoryBytes = SECTOR + Math.ceil((tables * ENTRY_BYTES) / SECTOR) * SECTOR;
  // The tables and directory may be written twice (before the first grain as qemu does, and after the grains).
  const metadata = 2 * (tables * tableBytes + directoryBytes) + 2 * SECTOR + MAX_DESCRIPTOR_BYTES + 3 * SECTOR + (1 << 20);
  const total = grains * perGrain + metadata;
  return Number.isSafeInteger(total) ? total : Number.MAX_SAFE_INTEGER;
}

/** The bytes of `storage` from its first, in pieces, read as they are asked for. */
export async function* storageBytes(storage: Storage): AsyncGenerator<Uint8Array> {
  const size = await storage.size();
  for (let at = 0; at < size;) {
    const piece = await storage.read(at, Math.min(READ_PIECE, size - at));
    if (piece.length === 0) throw corrupt('ova', storage.name, `the member ends at ${at} of its ${size} bytes while it is read`, { field: 'size', offset: at, expected: size, actual: at });
    at += piece.length;
    yield piece;
  }
}

/**
 * The VMDK a gzip member holds, inflated as `compressed` is read. Past the
 * bound its header gives ({@link maxStreamOptimizedBytes}), the member is
 * ERR_IMG_CORRUPT (a decompression bomb); a damaged gzip stream (a bad
 * CRC or length, a truncated member, bytes that are no gzip) is
 * ERR_IMG_CORRUPT naming the member. Errors of `compressed` itself pass
 * through.
 */
export async function* gunzipMember(compressed: AsyncIterable<Uint8Array>, ctx: GzipMemberContext): AsyncGenerator<Uint8Array> {
  const codecs = vmdkCodecs();
  const head = new Uint8Array(HEAD_BOUND);
  let headBytes = 0;
  let limit: number | undefined;
  let inflated = 0;
  try {
    for await (const piece of codecs.gunzip ? codecs.gunzip(compressed) : gunzipWeb(compressed)) {
      if (limit === undefined) {
        const n = Math.min(piece.length, HEAD_BOUND - headBytes);
        head.set(piece.subarray(0, n), headBytes);
        headBytes += n;
        if (headBytes === HEAD_BOUND) limit = headerBound(head);
      }
      if (limit !== undefined && inflated + piece.length > limit) {
        throw corrupt('ova', ctx.file, `"${ctx.member}" (ovf:compression="gzip") inflates to more than ${limit} bytes, more than a streamOptimized VMDK of its header's capacity can hold: a decompression bomb`, {
          field: 'compression',
          expected: limit,
          actual: inflated + piece.length,
        });
      }
      inflated += piece.length;
      yield piece;
    }
  } catch (e) {
    throw gzipFailure(e, ctx, inflated);
  }
}

/** Where a member's first sector is no streamOptimized header: as far as it may inflate (its readers stop after the header and refuse it; a decoder's output pieces are far smaller). */
const NOT_A_STREAM_BOUND = 8 << 20;

/** The bound a member's first sector gives. */
function headerBound(head: Uint8Array): number {
  if (!hasSparseMagic(head)) return NOT_A_STREAM_BOUND;
  let h: SparseHeader;
  try {
    h = parseSparseHeader(head, 0);
  } catch {
    return NOT_A_STREAM_BOUND;
  }
  return maxStreamOptimizedBytes(h) ?? NOT_A_STREAM_BOUND;
}

/** The ImageError for what stopped a gzip member: the codec's failure in a sentence, or the error as it came (the archive's own, a storage's). */
function gzipFailure(e: unknown, ctx: GzipMemberContext, inflated: number): unknown {
  if (ImageError.isInstance(e)) return e;
  const code = (e as { code?: string } | undefined)?.code;
  const message = e instanceof Error ? e.message : String(e);
  const data = { field: 'compression', actual: inflated, cause: e };
  if (code === CODEC_UNAVAILABLE) return unsupported('ova', ctx.file, `"${ctx.member}" is gzip-compressed (ovf:compression="gzip"), and ${message}`, data);
  if (code === GZIP_TRUNCATED) return corrupt('ova', ctx.file, `the gzip stream of "${ctx.member}" ends early, after ${inflated} bytes inflated: the member is truncated`, data);
  if (code === GZIP_BAD_CHECK) return corrupt('ova', ctx.file, `"${ctx.member}" fails its gzip check (${message}) after ${inflated} bytes inflated: the member is damaged`, data);
  if (code !== GZIP_BAD) return e;
  return corrupt('ova', ctx.file, `"${ctx.member}" is not valid gzip data (${message}) after ${inflated} bytes inflated`, data);
}
