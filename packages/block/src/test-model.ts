// A flat in-memory Disk with a declared extent map, for tests of code that
// consumes extents (sparseCopy, convert). Not part of the build.
import type { Disk, Extent, ExtentOptions, WriteZeroesOptions } from './disk.js';
import { extentRange, clipExtents, mergeExtents } from './extents.js';
import { MemoryStorage } from './memory-storage.js';

export class ModelDisk implements Disk {
  readonly format = 'model';
  readonly readOnly = false;
  readonly storage = new MemoryStorage({ name: 'model' });
  bytes: Uint8Array;
  map: Extent[];
  writes: Array<[number, number]> = [];
  zeroWrites: Array<[number, number]> = [];
  extentCalls = 0;
  readBytes = 0;
  failReadAt: number | undefined;

  constructor(size: number, map?: Extent[]) {
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

  async writeZeroes(offset: number, length: number, _o?: WriteZeroesOptions): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
    this.zeroWrites.push([offset, length]);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  async [Symbol.asyncDispose](): Promise<void> {}

  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.extentCalls++;
    const { start, end } = extentRange(options, this.size);
    const map = options?.topOnly ? this.map.map((e) => (e.depth && e.depth > 0 ? { ...e, kind: 'hole' as const } : e)) : this.map;
    return mergeExtents(clipExtents(map, start, end - start));
  }
}

/**
 * Builds a model disk of `size` bytes from a list of [length, kind] runs
 * (scaled to cover the size); data runs get pseudo-random non-zero bytes
 * with some embedded zero stretches.
 */
export function modelFromRuns(size: number, runs: Array<{ length: number; kind: Extent['kind']; zeroHole?: boolean }>, seed = 1): ModelDisk {
  const map: Extent[] = [];
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
