/**
 * readVmdkStream: the guest data of a streamOptimized VMDK arriving as a
 * byte stream (a pipe, an HTTP body, an OVA member), read front to back
 * with no seek. The header gives the size; then each sector starts a
 * marker: a grain marker (lba, size, zlib stream) yields a piece, a
 * metadata marker (grain table, directory, footer) is skipped. The stream
 * ends at an end-of-stream marker or the end of the input only once it
 * holds what its header promises (stream-end.ts); before that, the end of
 * the input is ERR_IMG_CORRUPT (a truncated download) and an all-zero
 * sector is padding. Non-zero bytes after the end are ERR_IMG_CORRUPT
 * too. Grains usually
 * come in guest order (VMware's exporters, streamVmdk); an image written
 * through createVmdk may hold a partly written grain after later ones. A
 * grain seen twice, or beyond the disk, is ERR_IMG_CORRUPT naming it.
 * The marker's lba is what places a grain here (the tables come after the
 * grains in VMware's layout); the file reader goes by the grain table and
 * ignores the lba, as qemu-img does.
 */
import { ByteStreamReader, corrupt, hex, readU32Le, unsupported, type OpenOptions, type StreamSource } from '@img/block';
import { inflateGrain, inflateGrainsInto, type GrainJob } from './compression.js';
import { GRAIN_MARKER_HEADER, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT } from './marker.js';
import { readU64Le } from './le64.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, SECTOR, parseSparseHeader } from './sparse-header.js';
import { checkGrainSize } from './sparse-extent.js';
import { maxCompressedBytes } from './read.js';
import { StreamEnd } from './stream-end.js';

const FORMAT = 'vmdk';
const NAME = 'stream';

/**
 * Decodes a streamOptimized VMDK stream into guest pieces.
 *
 * @example
 * ```ts
 * const source = await readVmdkStream(process.stdin);
 * for await (const { offset, data } of source.pieces) await disk.write(offset, data);
 * ```
 */
export async function readVmdkStream(input: AsyncIterable<Uint8Array>, _options: OpenOptions = {}): Promise<StreamSource> {
  const r = new ByteStreamReader(input, FORMAT, NAME);
  const head = await r.exact(SECTOR, 'the sparse extent header');
  const h = parseSparseHeader(head, 0, NAME);
  if ((h.flags & FLAG_COMPRESSED) === 0 || (h.flags & FLAG_MARKERS) === 0) {
    await r.cancel();
    throw unsupported(FORMAT, NAME, 'only a streamOptimized VMDK (compressed grains with markers) can be read from a stream; save it to a file first', { field: 'flags', offset: 8 });
  }
  try {
    checkGrainSize(h.grainSize, true, NAME);
  } catch (e) {
    await r.cancel();
    throw e;
  }
  const size = h.capacity * SECTOR;
  if (!Number.isSafeInteger(size)) throw corrupt(FORMAT, NAME, `capacity ${h.capacity} sectors does not fit`, { field: 'capacity', offset: 12 });
  const grainBytes = h.grainSize * SECTOR;
  // Metadata before the first grain (descriptor, and in qemu's layout the directory and tables).
  const end = await StreamEnd.readFront(r, h, NAME);
  return { size, pieces: pieces(r, size, grainBytes, h.grainSize, end) };
}

/** Guest bytes of grains inflated together (a batch of up to this many bytes of whole grains, at least one grain). */
const BATCH_BYTES = 1 << 20;

async function* pieces(r: ByteStreamReader, size: number, grainBytes: number, grainSectors: number, end: StreamEnd): AsyncGenerator<{ offset: number; data: Uint8Array }> {
  const limit = maxCompressedBytes(grainBytes);
  /** Metadata a marker may announce: a directory of a 2^53-byte disk is far below this. */
  const maxMetadataSectors = Math.ceil(size / grainBytes / 128) + 16;
  const seen = new GrainRuns();
  // Grains are gathered into batches and inflated together (on every core where Node's native
  // helper loaded): compressed bytes packed into one reused buffer, guest bytes into a new one per
  // batch (the pieces yielded are views of it).
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / grainBytes));
  const inBuf = new Uint8Array(perBatch * limit);
  let inUsed = 0;
  let outBuf = new Uint8Array(0); // a new one as each batch starts
  let batch: (GrainJob & { offset: number; length: number })[] = [];

  /** Inflates the batch and yields its pieces in stream order; on a bad grain, yields the grains before it, then throws. */
  async function* flush(): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    if (batch.length === 0) return;
    const jobs = batch;
    batch = [];
    inUsed = 0;
    let whole = true;
    try {
      await inflateGrainsInto(jobs, grainBytes);
    } catch {
      whole = false;
    }
    for (const j of jobs) {
      if (!whole) {
        const grain = await inflateGrain(j.input, grainBytes, j.ctx);
        j.out.set(grain.subarray(0, j.out.length));
        j.out.fill(0, Math.min(grain.length, j.out.length));
      }
      yield { offset: j.offset, data: j.out.subarray(0, j.length) };
    }
  }

  try {
    for (;;) {
      let at: number;
      let sector: Uint8Array;
      let job: (GrainJob & { offset: number; length: number }) | undefined;
      try {
        at = r.position;
        sector = await r.upTo(SECTOR);
        if (sector.length === 0) {
          // qemu's streamOptimized files end without an end-of-stream marker, after their last grain.
          if (end.mayStopAt(at)) break;
          throw end.truncated(at);
        }
        if (sector.length < SECTOR) throw corrupt(FORMAT, NAME, `the stream ends inside the marker at ${hex(at)}: the image is truncated`, { field: 'marker', offset: at });
        const value = readU64Le(sector, 0, 'marker', NAME);
        const compressed = readU32Le(sector, 8);
        if (compressed === 0) {
          const type = readU32Le(sector, 12);
          if (type === MARKER_EOS && value === 0) {
            if (end.endsAt(at)) {
              await expectNothingAfter(r, at);
              break;
            }
            if (sector.every((b) => b === 0)) continue; // zero padding, or the zeros a truncated copy was filled with
            throw corrupt(FORMAT, NAME, `the end-of-stream marker at ${hex(at)} comes before the stream is complete (its padding is not zero either)`, { field: 'marker', offset: at });
          }
          if (type === MARKER_EOS) throw corrupt(FORMAT, NAME, `the end-of-stream marker at ${hex(at)} announces ${value} sectors (it holds none)`, { field: 'marker', offset: at, actual: value });
          if (type !== MARKER_GT && type !== MARKER_GD && type !== MARKER_FOOTER) {
            throw corrupt(FORMAT, NAME, `unknown metadata marker type ${type} at ${hex(at)}`, { field: 'marker type', offset: at + 12, actual: type });
          }
          if (value > maxMetadataSectors) throw corrupt(FORMAT, NAME, `metadata marker at ${hex(at)} announces ${value} sectors`, { field: 'marker', offset: at, actual: value });
          if (type === MARKER_FOOTER && value >= 1) {
            end.footer(at, await r.exact(SECTOR, 'the footer'));
          }
          await r.skipTo(at + SECTOR + value * SECTOR, 'the metadata a marker announced');
          continue;
        }
        if (compressed > limit) {
          throw corrupt(FORMAT, NAME, `grain marker at ${hex(at)} announces ${compressed} compressed bytes (a grain of ${grainBytes} bytes needs 1 to ${limit})`, { field: 'grain marker size', offset: at + 8, actual: compressed });
        }
        const offset = value * SECTOR;
        if (value % grainSectors !== 0 || offset >= size || !seen.add(value / grainSectors)) {
          throw corrupt(FORMAT, NAME, `grain marker at ${hex(at)} is for sector ${value}: not the start of a grain inside the disk, or a grain already seen`, { field: 'grain marker lba', offset: at, actual: value });
        }
        const total = Math.ceil((GRAIN_MARKER_HEADER + compressed) / SECTOR) * SECTOR;
        const rest = total > SECTOR ? await r.exact(total - SECTOR, 'a compressed grain') : new Uint8Array(0);
        end.grain(at);
        const data = inBuf.subarray(inUsed, inUsed + compressed);
        const first = Math.min(compressed, SECTOR - GRAIN_MARKER_HEADER);
        data.set(sector.subarray(GRAIN_MARKER_HEADER, GRAIN_MARKER_HEADER + first), 0);
        data.set(rest.subarray(0, compressed - first), first);
        inUsed += compressed;
        if (batch.length === 0) outBuf = new Uint8Array(perBatch * grainBytes);
        const slot = batch.length * grainBytes;
        job = { input: data, out: outBuf.subarray(slot, slot + grainBytes), ctx: { file: NAME, hostOffset: at }, offset, length: Math.min(grainBytes, size - offset) };
      } catch (e) {
        // What came before the bad marker is yielded first, as grain by grain it would have been.
        yield* flush();
        throw e;
      }
      batch.push(job);
      if (batch.length === perBatch) yield* flush();
    }
    yield* flush();
  } finally {
    await r.cancel();
  }
}

/** Reads the rest of the input after the end-of-stream marker at `eos`: only zeros may follow it. */
async function expectNothingAfter(r: ByteStreamReader, eos: number): Promise<void> {
  for (;;) {
    const at = r.position;
    const piece = await r.some(1 << 20);
    if (!piece) return;
    const i = piece.findIndex((b) => b !== 0);
    if (i >= 0) throw corrupt(FORMAT, NAME, `data follows the end-of-stream marker at ${hex(eos)} (a non-zero byte at ${hex(at + i)})`, { field: 'end of stream', offset: at + i });
  }
}

/** Most runs of seen grains kept (a stream in guest order keeps one). */
const MAX_RUNS = 1 << 16;

/** The grains seen so far, as sorted runs [start, end), so that memory follows fragmentation, not size. */
class GrainRuns {
  #runs: Array<[number, number]> = [];

  /** Records `grain`; false if it was seen before. ERR_IMG_CORRUPT past MAX_RUNS runs. */
  add(grain: number): boolean {
    const runs = this.#runs;
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (runs[mid]![1] <= grain) lo = mid + 1;
      else hi = mid;
    }
    const at = runs[lo];
    if (at && at[0] <= grain) return false;
    const before = runs[lo - 1];
    if (before && before[1] === grain) {
      before[1]++;
      if (at && at[0] === grain + 1) {
        before[1] = at[1];
        runs.splice(lo, 1);
      }
      return true;
    }
    if (at && at[0] === grain + 1) {
      at[0] = grain;
      return true;
    }
    if (runs.length >= MAX_RUNS) throw corrupt(FORMAT, NAME, `the stream's grains are scattered over more than ${MAX_RUNS} runs`, { field: 'grain marker lba' });
    runs.splice(lo, 0, [grain, grain + 1]);
    return true;
  }
}
