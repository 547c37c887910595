/**
 * Writing a new streamOptimized image through the Disk API: each grain is
 * compressed and appended (marker, zlib stream) once it is complete, in
 * the order grains complete; grain tables, the grain directory, the footer
 * and the end-of-stream marker follow at finish(). The file is only ever
 * appended to, so the same bytes could go to a pipe. A grain cannot be
 * written twice (the format has no place for a second copy).
 */
import { Mutex, isAllZero, unsupported, type Storage } from '@img/block';
import { deflateGrain } from './compression.js';
import type { GrainMap } from './grain-map.js';
import type { StreamLayout } from './stream-layout.js';

const FORMAT = 'vmdk';

interface Pending {
  bytes: Uint8Array;
  /** Covered byte ranges [start, end), merged and sorted. */
  covered: Array<[number, number]>;
}

/** The appending writer of a streamOptimized image under creation. */
export class AppendWriter {
  readonly storage: Storage;
  readonly layout: StreamLayout;
  readonly map: GrainMap;
  readonly capacityBytes: number;
  #pending = new Map<number, Pending>();
  #written = new Set<number>();
  #append = new Mutex();
  #finished = false;

  constructor(storage: Storage, layout: StreamLayout, map: GrainMap, capacityBytes: number) {
    this.storage = storage;
    this.layout = layout;
    this.map = map;
    this.capacityBytes = capacityBytes;
  }

  /** Guest bytes grain `grain` holds (the last grain may be short). */
  grainLength(grain: number): number {
    return Math.min(this.layout.grainBytes, this.capacityBytes - grain * this.layout.grainBytes);
  }

  /** The buffer of a grain written in part and not yet appended. */
  pendingGrain(grain: number): Uint8Array | undefined {
    return this.#pending.get(grain)?.bytes;
  }

  /** Where grain `grain` was appended (its marker's sector), or 0. */
  appendedSector(grain: number): number {
    return this.layout.entry(grain);
  }

  /** Writes `piece` at `inGrain` of grain `grain`; appends the grain once it is whole. */
  async write(grain: number, inGrain: number, piece: Uint8Array): Promise<void> {
    if (this.#finished) throw unsupported(FORMAT, this.storage.name, 'the streamOptimized image is already finished', { field: 'grain' });
    if (this.#written.has(grain)) {
      throw unsupported(FORMAT, this.storage.name, `grain ${grain} was already written: a streamOptimized image is written once, front to back`, { field: 'grain', offset: grain * this.layout.grainBytes });
    }
    const length = this.grainLength(grain);
    let p = this.#pending.get(grain);
    if (!p) {
      if (inGrain === 0 && piece.length === length) return this.#emit(grain, piece);
      p = { bytes: new Uint8Array(this.layout.grainBytes), covered: [] };
      this.#pending.set(grain, p);
    }
    p.bytes.set(piece, inGrain);
    p.covered = cover(p.covered, inGrain, inGrain + piece.length);
    if (p.covered.length === 1 && p.covered[0]![0] === 0 && p.covered[0]![1] >= length) {
      this.#pending.delete(grain);
      await this.#emit(grain, p.bytes.subarray(0, length));
    }
  }

  async #emit(grain: number, data: Uint8Array): Promise<void> {
    this.#written.add(grain);
    // An all-zero grain stays unallocated: it reads as zeros (the image has no parent).
    if (isAllZero(data)) return;
    const full = data.length === this.layout.grainBytes ? data : padded(data, this.layout.grainBytes);
    const compressed = await deflateGrain(full);
    await this.#append.run(async () => {
      const at = this.layout.position;
      const bytes = this.layout.grain(grain, compressed);
      await this.storage.write(at, bytes);
      this.map.fileSize = Math.max(this.map.fileSize, at + bytes.length);
    });
  }

  /** Appends the grains written in part (zero-filled), then the tables, directory, footer and end-of-stream marker. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    for (const grain of [...this.#pending.keys()].sort((a, b) => a - b)) {
      const p = this.#pending.get(grain)!;
      this.#pending.delete(grain);
      await this.#emit(grain, p.bytes.subarray(0, this.grainLength(grain)));
    }
    this.#finished = true;
    await this.#append.run(async () => {
      let at = this.layout.position;
      const chunks = this.layout.finish();
      for (const c of chunks) {
        await this.storage.write(at, c);
        at += c.length;
      }
      this.map.fileSize = at;
      if ((await this.storage.size()) > at) await this.storage.truncate(at);
    });
  }

  /** True once finish() ran. */
  get finished(): boolean {
    return this.#finished;
  }
}

function padded(data: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(data);
  return out;
}

/** Adds [start, end) to sorted, merged ranges. */
function cover(ranges: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let s = start;
  let e = end;
  for (const [a, b] of ranges) {
    if (b < s || a > e) out.push([a, b]);
    else {
      s = Math.min(s, a);
      e = Math.max(e, b);
    }
  }
  out.push([s, e]);
  return out.sort((x, y) => x[0] - y[0]);
}
