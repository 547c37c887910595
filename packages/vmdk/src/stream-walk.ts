/**
 * The markers of a streamOptimized VMDK arriving as a byte stream, walked
 * front to back with no seek: the header, the metadata before the first
 * grain (stream-end.ts), then each sector starts a marker. A grain marker
 * (lba, size, zlib stream) is handed to the caller, who takes its bytes
 * (read-stream.ts inflates them) or lets them be skipped (an allocation
 * scan); a metadata marker (grain table, directory, footer) is skipped.
 * The stream ends at an end-of-stream marker or at the end of the input
 * only once it holds what its header promises; before that, the end of
 * the input is ERR_IMG_CORRUPT and an all-zero sector is padding. Non-zero
 * bytes after the end are ERR_IMG_CORRUPT too. A grain seen twice, or
 * beyond the disk, is ERR_IMG_CORRUPT naming it.
 */
import { corrupt, hex, isAllZero, readU32Le, unsupported, type ByteStreamReader } from '@img/block';
import { GRAIN_MARKER_HEADER, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT } from './marker.js';
import { readU64Le } from './le64.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, SECTOR, parseSparseHeader, type SparseHeader } from './sparse-header.js';
import { checkGrainSize } from './sparse-extent.js';
import { maxCompressedBytes } from './read.js';
import { StreamEnd } from './stream-end.js';

const FORMAT = 'vmdk';

/**
 * Parses the header at the start of a stream: one that is not
 * streamOptimized's (compressed grains with markers) is
 * ERR_IMG_UNSUPPORTED, a grain size img does not read or a capacity past
 * 2^53 bytes an ImageError.
 */
export function parseStreamHeader(head: Uint8Array, name: string): SparseHeader {
  const h = parseSparseHeader(head, 0, name);
  if ((h.flags & FLAG_COMPRESSED) === 0 || (h.flags & FLAG_MARKERS) === 0) {
    throw unsupported(FORMAT, name, 'only a streamOptimized VMDK (compressed grains with markers) can be read from a stream; save it to a file first', { field: 'flags', offset: 8 });
  }
  checkGrainSize(h.grainSize, true, name);
  if (!Number.isSafeInteger(h.capacity * SECTOR)) throw corrupt(FORMAT, name, `capacity ${h.capacity} sectors does not fit`, { field: 'capacity', offset: 12 });
  return h;
}

/** A grain marker read from the stream. */
export interface StreamGrain {
  /** Stream offset of the marker. */
  at: number;
  /** Guest offset of the grain. */
  offset: number;
  /** Guest bytes it holds (a whole grain, shorter at the end of the disk). */
  length: number;
  /** Bytes of its zlib stream. */
  compressed: number;
}

/** The grain next() answered, until its bytes are taken or skipped. */
interface PendingGrain {
  at: number;
  sector: Uint8Array;
  compressed: number;
  total: number;
}

/** Walks the markers of a streamOptimized stream. Use {@link StreamWalk.open}. */
export class StreamWalk {
  /** The sparse extent header at the start of the stream. */
  readonly header: SparseHeader;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Bytes per grain. */
  readonly grainBytes: number;
  /** The largest zlib stream a grain marker may announce. */
  readonly limit: number;
  readonly #r: ByteStreamReader;
  readonly #name: string;
  readonly #end: StreamEnd;
  readonly #maxMetadataSectors: number;
  readonly #seen: GrainRuns;
  #pending: PendingGrain | undefined;
  #done = false;

  private constructor(r: ByteStreamReader, h: SparseHeader, size: number, end: StreamEnd, name: string) {
    this.#r = r;
    this.header = h;
    this.size = size;
    this.grainBytes = h.grainSize * SECTOR;
    this.limit = maxCompressedBytes(this.grainBytes);
    this.#end = end;
    this.#name = name;
    this.#seen = new GrainRuns(name);
    /** Metadata a marker may announce: a directory of a 2^53-byte disk is far below this. */
    this.#maxMetadataSectors = Math.ceil(size / this.grainBytes / 128) + 16;
  }

  /**
   * Reads the header and the metadata before the first grain. A header
   * that is not streamOptimized's (compressed grains with markers) is
   * ERR_IMG_UNSUPPORTED; the reader is left to the caller to cancel.
   */
  static async open(r: ByteStreamReader, name: string): Promise<StreamWalk> {
    const h = parseStreamHeader(await r.exact(SECTOR, 'the sparse extent header'), name);
    // Metadata before the first grain (descriptor, and in qemu's layout the directory and tables).
    const end = await StreamEnd.readFront(r, h, name);
    return new StreamWalk(r, h, h.capacity * SECTOR, end, name);
  }

  /** The next grain marker, or undefined at the end of the stream. Bytes of the grain before it that were not taken are skipped. */
  async next(): Promise<StreamGrain | undefined> {
    await this.#finishGrain();
    const r = this.#r;
    const name = this.#name;
    while (!this.#done) {
      const at = r.position;
      const sector = await r.upTo(SECTOR);
      if (sector.length === 0) {
        // qemu's streamOptimized files end without an end-of-stream marker, after their last grain.
        if (this.#end.mayStopAt(at)) {
          this.#done = true;
          return undefined;
        }
        throw this.#end.truncated(at);
      }
      if (sector.length < SECTOR) throw corrupt(FORMAT, name, `the stream ends inside the marker at ${hex(at)}: the image is truncated`, { field: 'marker', offset: at });
      const value = readU64Le(sector, 0, 'marker', name);
      const compressed = readU32Le(sector, 8);
      if (compressed === 0) {
        const type = readU32Le(sector, 12);
        if (type === MARKER_EOS && value === 0) {
          if (this.#end.endsAt(at)) {
            await this.#expectNothingAfter(at);
            this.#done = true;
            return undefined;
          }
          if (sector.every((b) => b === 0)) continue; // zero padding, or the zeros a truncated copy was filled with
          throw corrupt(FORMAT, name, `the end-of-stream marker at ${hex(at)} comes before the stream is complete (its padding is not zero either)`, { field: 'marker', offset: at });
        }
        if (type === MARKER_EOS) throw corrupt(FORMAT, name, `the end-of-stream marker at ${hex(at)} announces ${value} sectors (it holds none)`, { field: 'marker', offset: at, actual: value });
        if (type !== MARKER_GT && type !== MARKER_GD && type !== MARKER_FOOTER) {
          throw corrupt(FORMAT, name, `unknown metadata marker type ${type} at ${hex(at)}`, { field: 'marker type', offset: at + 12, actual: type });
        }
        if (value > this.#maxMetadataSectors) throw corrupt(FORMAT, name, `metadata marker at ${hex(at)} announces ${value} sectors`, { field: 'marker', offset: at, actual: value });
        if (type === MARKER_FOOTER && value >= 1) {
          this.#end.footer(at, await r.exact(SECTOR, 'the footer'));
        }
        await r.skipTo(at + SECTOR + value * SECTOR, 'the metadata a marker announced');
        continue;
      }
      if (compressed > this.limit) {
        throw corrupt(FORMAT, name, `grain marker at ${hex(at)} announces ${compressed} compressed bytes (a grain of ${this.grainBytes} bytes needs 1 to ${this.limit})`, { field: 'grain marker size', offset: at + 8, actual: compressed });
      }
      const grainSectors = this.header.grainSize;
      const offset = value * SECTOR;
      if (value % grainSectors !== 0 || offset >= this.size || !this.#seen.add(value / grainSectors)) {
        throw corrupt(FORMAT, name, `grain marker at ${hex(at)} is for sector ${value}: not the start of a grain inside the disk, or a grain already seen`, { field: 'grain marker lba', offset: at, actual: value });
      }
      this.#pending = { at, sector, compressed, total: Math.ceil((GRAIN_MARKER_HEADER + compressed) / SECTOR) * SECTOR };
      return { at, offset, length: Math.min(this.grainBytes, this.size - offset), compressed };
    }
    return undefined;
  }

  /** Reads the zlib stream of the grain next() answered into `into` (at least its `compressed` bytes long). */
  async take(into: Uint8Array): Promise<void> {
    const g = this.#pending;
    if (!g) throw new RangeError('StreamWalk.take: no grain is pending');
    this.#pending = undefined;
    const rest = g.total > SECTOR ? await this.#r.exact(g.total - SECTOR, 'a compressed grain') : new Uint8Array(0);
    this.#end.grain(g.at);
    const first = Math.min(g.compressed, SECTOR - GRAIN_MARKER_HEADER);
    into.set(g.sector.subarray(GRAIN_MARKER_HEADER, GRAIN_MARKER_HEADER + first), 0);
    into.set(rest.subarray(0, g.compressed - first), first);
  }

  /** Skips what is left of a grain whose bytes were not taken. */
  async #finishGrain(): Promise<void> {
    const g = this.#pending;
    if (!g) return;
    this.#pending = undefined;
    if (!(await this.#r.skipTo(g.at + g.total))) {
      throw corrupt(FORMAT, this.#name, `the stream ends at ${hex(this.#r.position)}, inside a compressed grain at ${hex(g.at + SECTOR)}`, { field: 'a compressed grain', offset: this.#r.position });
    }
    this.#end.grain(g.at);
  }

  /** Reads the rest of the input after the end-of-stream marker at `eos`: only zeros may follow it. */
  async #expectNothingAfter(eos: number): Promise<void> {
    for (;;) {
      const at = this.#r.position;
      const piece = await this.#r.some(1 << 20);
      if (!piece) return;
      if (isAllZero(piece)) continue; // at memory speed: a member may hold gigabytes of padding
      const i = piece.findIndex((b) => b !== 0);
      throw corrupt(FORMAT, this.#name, `data follows the end-of-stream marker at ${hex(eos)} (a non-zero byte at ${hex(at + i)})`, { field: 'end of stream', offset: at + i });
    }
  }
}

/** Most runs of seen grains kept (a stream in guest order keeps one). */
const MAX_RUNS = 1 << 16;

/** The grains seen so far, as sorted runs [start, end), so that memory follows fragmentation, not size. */
class GrainRuns {
  #runs: Array<[number, number]> = [];
  readonly #name: string;

  constructor(name: string) {
    this.#name = name;
  }

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
    if (runs.length >= MAX_RUNS) throw corrupt(FORMAT, this.#name, `the stream's grains are scattered over more than ${MAX_RUNS} runs`, { field: 'grain marker lba' });
    runs.splice(lo, 0, [grain, grain + 1]);
    return true;
  }
}
