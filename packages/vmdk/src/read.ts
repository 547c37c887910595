/**
 * Reading guest bytes: each extent in turn; inside a sparse extent, grain
 * by grain (plain grains straight from the file; compressed grains read
 * whole are read a span of the file at a time and inflated into place, a
 * part of one is inflated into the grain cache; unallocated grains come
 * from the parent or read as zeros).
 */
import { corrupt, giveIoBuffer, hex, startedAhead, takeIoBuffer } from '@img/block';
import { inflateGrain, inflateGrainsInto, type GrainJob } from './compression.js';
import { GRAIN_MARKER_HEADER, parseMarker } from './marker.js';
import { grainKey, type SparseExtent, type VmdkImage } from './image.js';
import { SECTOR } from './sparse-header.js';
import { assertParentCurrent } from './stale-parent.js';

const FORMAT = 'vmdk';

/** Reads target.length guest bytes at `offset` (the caller checked the range). */
export async function readInto(core: VmdkImage, offset: number, target: Uint8Array): Promise<void> {
  const pieces: Promise<void>[] = [];
  let done = 0;
  let index = core.extentIndexAt(offset);
  while (done < target.length) {
    const e = core.extents[index]!;
    const pos = offset + done;
    const n = Math.min(e.start + e.length - pos, target.length - done);
    const out = target.subarray(done, done + n);
    if (e.kind === 'zero') out.fill(0);
    else if (e.kind === 'flat') pieces.push(readStorage(e.storage, e.fileOffset + (pos - e.start), out));
    else pieces.push(readSparse(core, index, e, pos - e.start, pos, out));
    done += n;
    index++;
  }
  const results = await Promise.allSettled(pieces);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Reads from a file; bytes past its end read as zeros. */
async function readStorage(storage: { readInto(p: number, t: Uint8Array): Promise<number> }, at: number, out: Uint8Array): Promise<void> {
  const n = await storage.readInto(at, out);
  if (n < out.length) out.fill(0, n);
}

/** What guest bytes not stored in this image read as: the parent's, or zeros. */
export async function readBelow(core: VmdkImage, guest: number, out: Uint8Array): Promise<void> {
  const parent = core.parent;
  if (!parent || guest >= parent.size) {
    out.fill(0);
    return;
  }
  assertParentCurrent(core, `the bytes at ${hex(guest)} would be read from`);
  const n = Math.min(out.length, parent.size - guest);
  await parent.readInto(guest, out.subarray(0, n));
  if (n < out.length) out.fill(0, n);
}

/** A compressed grain read whole into the caller's buffer, as part of a span of the file read at once. */
interface SpanGrain {
  grain: number;
  hostOffset: number;
  out: Uint8Array;
}

/** Bytes of the file one span read may cover: a few grains of random data, some dozens of compressible ones. */
const SPAN_BYTES = 1 << 20;

async function readSparse(core: VmdkImage, index: number, e: SparseExtent, inExtent: number, guest: number, out: Uint8Array): Promise<void> {
  const map = e.map;
  const reads: Promise<void>[] = [];
  let done = 0;
  // Runs of unallocated grains go to the parent as one read (small-grain deltas such as COWD's 512-byte grains).
  let holeStart = -1;
  const flushHole = (end: number): void => {
    if (holeStart < 0) return;
    // Judged below, with the others.
    reads.push(startedAhead(readBelow(core, guest + holeStart, out.subarray(holeStart, end))));
    holeStart = -1;
  };
  // Whole compressed grains that lie one after another in the file: read as one span, then inflated one by one.
  const spanned = !core.appendWriter && map.compressed && map.markers;
  let span: SpanGrain[] = [];
  const flushSpan = (): void => {
    if (span.length === 0) return;
    reads.push(startedAhead(readSpan(core, index, e, span)));
    span = [];
  };
  while (done < out.length) {
    const at = inExtent + done;
    const grain = Math.floor(at / map.grainBytes);
    const inGrain = at - grain * map.grainBytes;
    const n = Math.min(map.grainBytes - inGrain, out.length - done);
    const entry = core.appendWriter ? undefined : await map.entry(grain);
    if (entry?.kind === 'unallocated') {
      flushSpan();
      if (holeStart < 0) holeStart = done;
    } else if (spanned && entry?.kind === 'data' && inGrain === 0 && n === map.grainBytes) {
      flushHole(done);
      const first = span[0];
      const last = span[span.length - 1];
      if (first && last && (entry.hostOffset <= last.hostOffset || entry.hostOffset - last.hostOffset > maxCompressedBytes(map.grainBytes) || entry.hostOffset - first.hostOffset >= SPAN_BYTES)) flushSpan();
      span.push({ grain, hostOffset: entry.hostOffset, out: out.subarray(done, done + n) });
    } else {
      flushHole(done);
      flushSpan();
      reads.push(startedAhead(readGrain(core, index, e, grain, inGrain, guest + done, out.subarray(done, done + n))));
    }
    done += n;
  }
  flushHole(done);
  flushSpan();
  const results = await Promise.allSettled(reads);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * Reads the compressed grains of `grains` (ascending in the file, each
 * within one compressed grain of the last) with one read of the file from
 * the first marker to a grain past the last, and inflates each straight
 * into its place. A grain whose compressed bytes run past the span (more
 * than a grain of compressed data) is read on its own.
 */
async function readSpan(core: VmdkImage, index: number, e: SparseExtent, grains: SpanGrain[]): Promise<void> {
  const map = e.map;
  const first = grains[0]!.hostOffset;
  const end = Math.min(map.fileSize, grains[grains.length - 1]!.hostOffset + GRAIN_MARKER_HEADER + map.grainBytes);
  // A pooled buffer (takeIoBuffer, process-wide): a span's bytes are only looked at here, and it goes back when the grains are inflated.
  const buffer = takeIoBuffer(SPAN_BYTES + GRAIN_MARKER_HEADER + maxCompressedBytes(map.grainBytes));
  try {
    const got = await e.storage.readInto(first, buffer.subarray(0, Math.max(0, end - first)));
    const bytes = buffer.subarray(0, got);
    const jobs: GrainJob[] = [];
    for (const g of grains) {
      const cached = core.cachedGrain(grainKey(index, g.grain));
      if (cached) {
        g.out.set(cached.subarray(0, g.out.length));
        continue;
      }
      const input = await compressedBytes(e, g.hostOffset, bytes, first);
      jobs.push({ input, out: g.out, ctx: { file: e.storage.name, hostOffset: g.hostOffset } });
    }
    // Grains whose stream was read on its own (past the span) are inflated one by one, first.
    const inSpan = jobs.filter((j) => j.input.buffer === buffer.buffer);
    await inflateGrainsInto(
      jobs.filter((j) => j.input.buffer !== buffer.buffer),
      map.grainBytes,
    );
    await inflateGrainsInto(inSpan, map.grainBytes);
  } finally {
    giveIoBuffer(buffer);
  }
}

async function readGrain(core: VmdkImage, index: number, e: SparseExtent, grain: number, inGrain: number, guest: number, out: Uint8Array): Promise<void> {
  const writer = core.appendWriter;
  if (writer) {
    // A streamOptimized image being written: grains are in the writer's buffers or appended.
    const pending = writer.pendingGrain(grain);
    if (pending) {
      out.set(pending.subarray(inGrain, inGrain + out.length));
      return;
    }
    const sector = writer.appendedSector(grain);
    if (!sector) return readBelow(core, guest, out);
    const bytes = await compressedGrain(core, index, e, grain, sector * SECTOR);
    out.set(bytes.subarray(inGrain, inGrain + out.length));
    return;
  }
  const entry = await e.map.entry(grain);
  if (entry.kind === 'unallocated') return readBelow(core, guest, out);
  if (entry.kind === 'zeroed') {
    out.fill(0);
    return;
  }
  if (!entry.compressed) return readStorage(e.storage, entry.hostOffset + inGrain, out);
  const bytes = await compressedGrain(core, index, e, grain, entry.hostOffset);
  out.set(bytes.subarray(inGrain, inGrain + out.length));
}

/** The largest compressed grain accepted: deflate never needs twice a grain plus a sector. */
export function maxCompressedBytes(grainBytes: number): number {
  return 2 * grainBytes + SECTOR;
}

/**
 * The compressed bytes of the grain whose marker (or bare stream) the grain
 * table puts at `hostOffset`, checked against the file: taken from `span`
 * (file bytes from `spanAt`) where it holds them, else read.
 */
async function compressedBytes(e: SparseExtent, hostOffset: number, span?: Uint8Array, spanAt = 0): Promise<Uint8Array> {
  const map = e.map;
  const file = e.storage.name;
  const limit = maxCompressedBytes(map.grainBytes);
  if (!map.markers) return e.storage.read(hostOffset, Math.min(limit, map.fileSize - hostOffset));
  let head = span && hostOffset >= spanAt && hostOffset - spanAt + GRAIN_MARKER_HEADER <= span.length ? span.subarray(hostOffset - spanAt) : undefined;
  // One read for the marker and (usually) the whole compressed grain: a grain rarely compresses to more than itself.
  head ??= await e.storage.read(hostOffset, Math.min(GRAIN_MARKER_HEADER + map.grainBytes, Math.max(0, map.fileSize - hostOffset)));
  if (head.length < GRAIN_MARKER_HEADER) throw corrupt(FORMAT, file, `grain marker at ${hex(hostOffset)} is cut off by the end of the file`, { field: 'grain marker', offset: hostOffset });
  // The grain table places the grain; the marker's lba is not looked at, as qemu-img does not (a file whose markers
  // disagree with its tables reads as qemu reads it). Only a stream, which has no table yet, goes by the lba.
  const marker = parseMarker(head, 0, file);
  if (marker.size === 0 || marker.size > limit) {
    throw corrupt(FORMAT, file, `grain marker at ${hex(hostOffset)} announces ${marker.size} compressed bytes (a grain of ${map.grainBytes} bytes needs 1 to ${limit})`, { field: 'grain marker size', offset: hostOffset + 8, actual: marker.size });
  }
  if (hostOffset + GRAIN_MARKER_HEADER + marker.size > map.fileSize) {
    throw corrupt(FORMAT, file, `compressed grain at ${hex(hostOffset)} (${marker.size} bytes) runs past the end of the file`, { field: 'grain marker size', offset: hostOffset + 8 });
  }
  return GRAIN_MARKER_HEADER + marker.size <= head.length ? head.subarray(GRAIN_MARKER_HEADER, GRAIN_MARKER_HEADER + marker.size) : e.storage.read(hostOffset + GRAIN_MARKER_HEADER, marker.size);
}

/** Inflates (or finds in the cache) grain `grain` of a compressed extent, whose marker or stream is at `hostOffset`. */
export async function compressedGrain(core: VmdkImage, index: number, e: SparseExtent, grain: number, hostOffset: number): Promise<Uint8Array> {
  const key = grainKey(index, grain);
  const cached = core.cachedGrain(key);
  if (cached) return cached;
  const map = e.map;
  const data = await compressedBytes(e, hostOffset);
  const inflated = await inflateGrain(data, map.grainBytes, { file: e.storage.name, hostOffset });
  let grainBytes = inflated;
  if (inflated.length < map.grainBytes) {
    grainBytes = new Uint8Array(map.grainBytes);
    grainBytes.set(inflated);
  }
  core.cacheGrain(key, grainBytes);
  return grainBytes;
}
