/**
 * The writer of a new luks image a conversion fills (luksDriver.createFresh).
 * A conversion skips what its source reads as zeros, counting on a new
 * image to read zeros there; a new luks image does not (its file's zeros
 * decrypt to noise). So this writer keeps the guest ranges written, and
 * finish() (or close()) writes encrypted zeros over the rest: the image
 * reads as the source, and what the copy skipped costs one pass of zeros,
 * as qemu-img convert writes them into a luks target (its luks driver has
 * no zero-initialised create either).
 */
import type { Disk, DriverCreateOptions, Extent, ExtentOptions, FreshImageWriter, ImageInfo, ResizeOptions, Storage, WriteZeroesOptions } from '@img/block';
import { createLuks } from './create.js';
import type { LuksDisk } from './disk.js';

/** Sorted, disjoint, non-adjacent [start, end) guest ranges. */
class RangeSet {
  readonly #starts: number[] = [];
  readonly #ends: number[] = [];

  add(start: number, end: number): void {
    if (end <= start) return;
    // The first range that ends at or after `start` (it may merge), and the first that starts after `end`.
    let lo = 0;
    let hi = this.#ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ends[mid]! < start) lo = mid + 1;
      else hi = mid;
    }
    let last = lo;
    while (last < this.#starts.length && this.#starts[last]! <= end) last++;
    const s = lo < last ? Math.min(start, this.#starts[lo]!) : start;
    const e = lo < last ? Math.max(end, this.#ends[last - 1]!) : end;
    this.#starts.splice(lo, last - lo, s);
    this.#ends.splice(lo, last - lo, e);
  }

  /** The gaps of [0, size) no range covers. */
  *gaps(size: number): Generator<[number, number]> {
    let at = 0;
    for (let i = 0; i < this.#starts.length; i++) {
      if (this.#starts[i]! > at) yield [at, Math.min(size, this.#starts[i]!)];
      at = Math.max(at, this.#ends[i]!);
    }
    if (at < size) yield [at, size];
  }
}

class LuksFreshWriter implements FreshImageWriter {
  readonly #disk: LuksDisk;
  readonly #written = new RangeSet();
  #done: Promise<void> | undefined;

  constructor(disk: LuksDisk) {
    this.#disk = disk;
  }

  get format(): string {
    return this.#disk.format;
  }
  get size(): number {
    return this.#disk.size;
  }
  get readOnly(): boolean {
    return this.#disk.readOnly;
  }
  get storage(): Storage {
    return this.#disk.storage;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#disk.read(offset, length);
  }
  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#disk.readInto(offset, target);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#disk.write(offset, data);
    this.#written.add(offset, offset + data.length);
  }
  async writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    await this.#disk.writeZeroes(offset, length, options);
    this.#written.add(offset, offset + length);
  }
  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }
  flush(): Promise<void> {
    return this.#disk.flush();
  }
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    return this.#disk.extents(options);
  }
  info(): Promise<ImageInfo> {
    return this.#disk.info();
  }
  resize(newSize: number, options?: ResizeOptions): Promise<void> {
    return this.#disk.resize(newSize, options);
  }

  /** Encrypted zeros over what was not written, once. */
  #fill(): Promise<void> {
    this.#done ??= (async () => {
      for (const [start, end] of [...this.#written.gaps(this.#disk.size)]) await this.#disk.writeZeroes(start, end - start);
      await this.#disk.flush();
    })();
    return this.#done;
  }

  async finish(): Promise<Disk> {
    await this.#fill();
    return this.#disk;
  }

  async close(): Promise<void> {
    try {
      await this.#fill();
    } finally {
      await this.#disk.close();
    }
  }

  async abort(): Promise<void> {
    await this.#disk.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A new luks image in `storage` for a one-shot copy (see the module comment). */
export async function createLuksFresh(storage: Storage, options: DriverCreateOptions): Promise<FreshImageWriter> {
  return new LuksFreshWriter(await createLuks(storage, options));
}
