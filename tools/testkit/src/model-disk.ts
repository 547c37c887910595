/**
 * A flat in-memory disk with a declared extent map, for tests of code that
 * consumes extents (sparseCopy, convert). It has the shape of @img/block's
 * Disk (the testkit does not depend on block).
 */
import { ByteStorage } from './byte-storage.js';

/** An extent as block's Disk reports it. */
export interface ModelExtent {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole';
  depth?: number;
  hostOffset?: number;
  file?: string;
}

/** The extent options ModelDisk honours. */
export interface ModelExtentOptions {
  offset?: number;
  length?: number;
  topOnly?: boolean;
}

function sameRun(a: ModelExtent, b: ModelExtent): boolean {
  if (a.kind !== b.kind || a.depth !== b.depth || a.file !== b.file || a.offset + a.length !== b.offset) return false;
  if (a.hostOffset === undefined || b.hostOffset === undefined) return a.hostOffset === b.hostOffset;
  return a.hostOffset + a.length === b.hostOffset;
}

/** `map` cut to [start, end), adjacent like runs merged. */
async function* clipAndMerge(map: readonly ModelExtent[], start: number, end: number): AsyncGenerator<ModelExtent> {
  let pending: ModelExtent | undefined;
  for (const e of map) {
    const s = Math.max(e.offset, start);
    const t = Math.min(e.offset + e.length, end);
    if (t <= s) continue;
    const out: ModelExtent = { ...e, offset: s, length: t - s };
    if (e.hostOffset !== undefined) out.hostOffset = e.hostOffset + (s - e.offset);
    if (pending && sameRun(pending, out)) {
      pending.length += out.length;
      continue;
    }
    if (pending) yield pending;
    pending = out;
  }
  if (pending) yield pending;
}

/** A disk over a flat byte array that reports a declared extent map and counts its calls. */
export class ModelDisk {
  readonly format = 'model';
  readonly readOnly = false;
  readonly storage = new ByteStorage(new Uint8Array(0), 'model');
  bytes: Uint8Array;
  map: ModelExtent[];
  writes: Array<[number, number]> = [];
  zeroWrites: Array<[number, number]> = [];
  extentCalls = 0;
  readBytes = 0;
  failReadAt: number | undefined;

  constructor(size: number, map?: ModelExtent[]) {
    this.bytes = new Uint8Array(size);
    this.map = map ?? [{ offset: 0, length: size, kind: 'hole', depth: 0 }];
  }

  get size(): number {
    return this.bytes.length;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.bytes.slice(offset, offset + length);
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.failReadAt !== undefined && offset <= this.failReadAt && this.failReadAt < offset + target.length) {
      throw new Error(`injected read failure at ${this.failReadAt}`);
    }
    this.readBytes += target.length;
    target.set(this.bytes.subarray(offset, offset + target.length));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (offset + data.length > this.size) throw new RangeError('write past end');
    this.bytes.set(data, offset);
    this.writes.push([offset, data.length]);
  }

  async writeZeroes(offset: number, length: number, _o?: unknown): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
    this.zeroWrites.push([offset, length]);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  async [Symbol.asyncDispose](): Promise<void> {}

  extents(options?: ModelExtentOptions): AsyncIterable<ModelExtent> {
    this.extentCalls++;
    const start = options?.offset ?? 0;
    const end = start + (options?.length ?? this.size - start);
    if (start < 0 || end < start || end > this.size) throw new RangeError(`extents range ${start}..${end} is outside a disk of ${this.size} bytes`);
    const map = options?.topOnly ? this.map.map((e) => (e.depth && e.depth > 0 ? { ...e, kind: 'hole' as const } : e)) : this.map;
    return clipAndMerge(map, start, end);
  }
}

/**
 * Builds a model disk of `size` bytes from a list of [length, kind] runs
 * (scaled to cover the size); data runs get pseudo-random non-zero bytes
 * with some embedded zero stretches.
 */
export function modelFromRuns(size: number, runs: Array<{ length: number; kind: ModelExtent['kind']; zeroHole?: boolean }>, seed = 1): ModelDisk {
  const map: ModelExtent[] = [];
  let pos = 0;
  for (const r of runs) {
    if (pos >= size) break;
    const len = Math.min(r.length, size - pos);
    if (len > 0) map.push({ offset: pos, length: len, kind: r.kind, depth: 0 });
    pos += len;
  }
  if (pos < size) map.push({ offset: pos, length: size - pos, kind: 'hole', depth: 0 });
  const disk = new ModelDisk(size, map);
  let x = seed >>> 0 || 1;
  for (const e of map) {
    if (e.kind !== 'data') continue;
    for (let i = e.offset; i < e.offset + e.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      disk.bytes[i] = (x & 0xff) | 1;
    }
  }
  return disk;
}
