/**
 * The raw format: the disk is the file. A file whose size is not a
 * multiple of 512 is a disk rounded up to the next sector, the tail reading
 * as zeros (as qemu does).
 */
import type { CreateOptions, Disk, Extent, ExtentOptions, FormatDriver, ImageInfo, ImageStream, OpenOptions, ResizeOptions, StreamSource, WriteZeroesOptions } from './disk.js';
import { checkDiskRange, checkDiskData, alignUp } from './disk-util.js';
import { DiskOperations } from './disk-operations.js';
import { checkOptionKeys, optionHelp, type OptionTable } from './create-options.js';
import { preallocateRange } from './preallocate.js';
import { abortError, invalidArg, readOnlyError, readOnlyStorageError, unsupported } from './errors.js';
import { extentRange, flattenExtentBatches, mergeExtentBatches } from './extents.js';
import type { Storage } from './storage.js';
import { findSignatures } from './signatures.js';

/** How much of the space a preallocating resize adds is written at a time (a signal stops it between pieces). */
const RAW_PREALLOC_PIECE = 64 * 1024 * 1024;

/** The sector size raw disks align to (bytes). */
export const RAW_SECTOR = 512;
const ZERO_CHUNK = 1024 * 1024;
/** The first window of a raw file's range walk (see #windows); each next one is twice as large. */
const RANGE_WINDOW = 64 * 1024 * 1024;
/**
 * The most ranges one window of that walk asks for: a file of millions of
 * runs is then walked a few thousand runs at a time, not held whole (a
 * window of 4 GiB over 8 KiB runs was a million objects at once).
 */
const RANGE_LIMIT = 4096;

/** A raw image: the file is the guest disk, byte for byte (holes of a sparse file read as zeros). */
export class RawDisk implements Disk {
  readonly format = 'raw';
  readonly storage: Storage;
  readonly readOnly: boolean;
  #size: number;
  readonly #ops = new DiskOperations('raw', () => this.storage.name);

  constructor(storage: Storage, fileSize: number, readOnly: boolean) {
    this.storage = storage;
    this.readOnly = readOnly;
    this.#size = alignUp(fileSize, RAW_SECTOR);
  }

  get size(): number {
    return this.#size;
  }

  #checkWrite(offset: number, length: number): void {
    if (this.readOnly) throw readOnlyError('raw', this.storage.name);
    checkDiskRange('raw', this.#size, offset, length, this.storage.name);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#ops.run(async () => {
      checkDiskRange('raw', this.#size, offset, length, this.storage.name);
      const out = new Uint8Array(length);
      await this.#readInto(offset, out);
      return out;
    });
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#ops.run(async () => {
      checkDiskData('raw', target, 'target', this.storage.name);
      checkDiskRange('raw', this.#size, offset, target.length, this.storage.name);
      await this.#readInto(offset, target);
    });
  }

  async #readInto(offset: number, target: Uint8Array): Promise<void> {
    const n = await this.storage.readInto(offset, target);
    if (n < target.length) target.fill(0, n);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#ops.run(async () => {
      checkDiskData('raw', data, 'data', this.storage.name);
      this.#checkWrite(offset, data.length);
      await this.storage.write(offset, data);
    });
  }

  writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    return this.#ops.run(() => this.#writeZeroes(offset, length, options));
  }

  async #writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    this.#checkWrite(offset, length);
    if (length === 0) return;
    if (options.mayUnmap !== false && this.storage.punchHole) {
      const fileSize = await this.storage.size();
      const end = Math.min(offset + length, fileSize);
      if (offset >= end || (await this.storage.punchHole(offset, end - offset))) return;
    }
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += zeros.length) {
      const n = Math.min(zeros.length, offset + length - pos);
      await this.storage.write(pos, n === zeros.length ? zeros : zeros.subarray(0, n));
    }
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#ops.run(() => this.#writeZeroes(offset, length, { mayUnmap: true }));
  }

  info(): Promise<ImageInfo> {
    return this.#ops.run(async () => ({ format: 'raw', virtualSize: this.#size }));
  }

  /**
   * Grows or (with `shrink`) shrinks the file; new space reads as zeros.
   * Preallocation `falloc` allocates the new space (fallocate, else zeros)
   * and `full` writes zeros over it, so that every byte has its place in
   * the file; raw has no metadata, so
   * `metadata` is refused, as qemu-img refuses it.
   */
  resize(newSize: number, options: ResizeOptions = {}): Promise<void> {
    return this.#ops.run(() => this.#resize(newSize, options));
  }

  async #resize(newSize: number, options: ResizeOptions): Promise<void> {
    if (this.readOnly) throw readOnlyError('raw', this.storage.name);
    if (!Number.isSafeInteger(newSize) || newSize < 0) throw invalidArg('raw', `invalid size ${newSize}`, { field: 'size' });
    const prealloc = options.preallocation ?? 'off';
    if (prealloc === 'metadata') throw unsupported('raw', this.storage.name, 'preallocation "metadata": a raw file has no metadata to allocate (falloc or full allocate its bytes)', { field: 'preallocation' });
    const rounded = alignUp(newSize, RAW_SECTOR);
    if (rounded < this.#size && !options.shrink) {
      throw invalidArg('raw', `shrinking from ${this.#size} to ${rounded} bytes loses data; pass shrink to allow it`, { field: 'size' });
    }
    if (rounded < this.#size && prealloc !== 'off') throw invalidArg('raw', 'preallocation is for growing only', { field: 'preallocation' });
    const old = this.#size;
    await this.storage.truncate(rounded);
    this.#size = rounded;
    if (prealloc === 'off' || rounded <= old) return;
    if (prealloc === 'falloc' && this.storage.allocate && (await this.storage.allocate(old, rounded - old))) return;
    // In pieces, so that a signal stops a long preallocation between them.
    for (let at = old; at < rounded; at += RAW_PREALLOC_PIECE) {
      if (options.signal?.aborted) throw abortError(options.signal, 'resize');
      await this.#writeZeroes(at, Math.min(RAW_PREALLOC_PIECE, rounded - at), { mayUnmap: false });
    }
  }

  flush(): Promise<void> {
    return this.#ops.run(async () => {
      if (!this.readOnly) await this.storage.flush();
    });
  }

  /** Waits for the operations called before it, flushes a writable disk and closes the storage (even when the flush fails; its error is then the one reported). */
  close(): Promise<void> {
    return this.#ops.close(async () => {
      try {
        if (!this.readOnly) await this.storage.flush();
      } finally {
        await this.storage.close();
      }
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    return flattenExtentBatches(this.extentBatches(options));
  }

  extentBatches(options?: ExtentOptions): AsyncIterable<Extent[]> {
    this.#ops.check();
    const { start, end } = extentRange(options, this.#size);
    return mergeExtentBatches(this.#windows(start, end, options?.hostOffsets ?? false, options?.granularity));
  }

  /** The file's data and zero runs, a window at a time (merged across windows by mergeExtentBatches). */
  async *#windows(start: number, end: number, hostOffsets: boolean, granularity: number | undefined): AsyncGenerator<Extent[]> {
    if (start >= end) return;
    const fileSize = await this.storage.size();
    const fileEnd = Math.min(end, Math.max(start, fileSize));
    const file = this.storage.name;
    const extent = (offset: number, length: number, data: boolean): Extent => (hostOffsets ? { offset, length, kind: data ? 'data' : 'zero', depth: 0, hostOffset: offset, file } : { offset, length, kind: data ? 'data' : 'zero', depth: 0 });
    if (start < fileEnd) {
      if (this.storage.ranges) {
        // Asked in windows that double (64 MiB first), so a copy starts on the first runs while the rest
        // of the file is still to be asked about: the whole of a 16 GiB file with 1024 runs is 15 ms of
        // lseek on the calling thread.
        let window = RANGE_WINDOW;
        for (let pos = start; pos < fileEnd;) {
          const n = Math.min(window, fileEnd - pos);
          const found = await this.storage.ranges(pos, n, RANGE_LIMIT, granularity);
          const last = found[found.length - 1];
          const reached = last ? Math.min(pos + n, last.offset + last.length) : pos;
          if (reached > pos) yield found.map((r) => extent(r.offset, r.length, r.data));
          // An answer that stops short was cut at the limit: the walk goes on from where it stopped. One
          // that says nothing at all leaves the window to read as zeros (the file ended under the walk).
          if (reached <= pos) yield [extent(pos, n, false)];
          else if (reached < pos + n) {
            pos = reached;
            continue;
          }
          pos += n;
          window *= 2;
        }
      } else {
        yield [extent(start, fileEnd - start, true)];
      }
    }
    // The sector padding past the end of the file reads as zeros.
    if (fileEnd < end) yield [extent(fileEnd, end - fileEnd, false)];
  }
}

/** Opens a raw image over a storage. */
export async function openRaw(storage: Storage, options: OpenOptions = {}): Promise<RawDisk> {
  const readOnly = options.readOnly ?? true;
  if (!readOnly && storage.readOnly) throw readOnlyStorageError('raw', storage.name);
  return new RawDisk(storage, await storage.size(), readOnly || storage.readOnly);
}

export interface RawCreateOptions extends CreateOptions {
  /** "off" (sparse, default), "falloc" (fallocate, else zeros) or "full" (zeros): every byte then has its place in the file. */
  preallocation?: 'off' | 'falloc' | 'full';
}

/** The options createRaw accepts (qemu-img's raw driver takes size and preallocation). */
export const RAW_CREATE_OPTIONS: OptionTable = [
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  { key: 'preallocation', name: 'preallocation', kind: 'str', help: 'off (sparse, default), falloc (allocate) or full (write zeros)' },
];

/** Creates a raw image: sets the storage's size (rounded up to a sector); `falloc` and `full` allocate every byte. */
export async function createRaw(storage: Storage, options: RawCreateOptions): Promise<RawDisk> {
  if (options === null || typeof options !== 'object') throw invalidArg('raw', 'size is required', { field: 'size' });
  checkOptionKeys('raw', RAW_CREATE_OPTIONS, options);
  const size = options.size;
  if (!Number.isSafeInteger(size) || size < 0) throw invalidArg('raw', `invalid size ${String(size)}`, { field: 'size' });
  const prealloc = options.preallocation ?? 'off';
  if (!['off', 'falloc', 'full'].includes(String(prealloc))) {
    throw invalidArg('raw', `invalid preallocation "${String(prealloc)}" (off, falloc, full)`, { field: 'preallocation' });
  }
  const rounded = alignUp(size, RAW_SECTOR);
  await storage.truncate(0);
  await storage.truncate(rounded);
  const disk = new RawDisk(storage, rounded, false);
  // falloc: the blocks in one fallocate where the storage can (else zeros, as full writes them).
  if ((prealloc === 'full' || prealloc === 'falloc') && rounded > 0) await preallocateRange(storage, 0, rounded, prealloc);
  return disk;
}

const STREAM_CHUNK = 4 * 1024 * 1024;
let zeroChunk: Uint8Array | undefined;

/**
 * A raw image as a byte stream: the disk's bytes in order, holes and
 * zero extents as zeros (a stream cannot be sparse).
 */
export async function streamRaw(source: Disk): Promise<ImageStream> {
  async function* chunks(): AsyncGenerator<Uint8Array> {
    zeroChunk ??= new Uint8Array(STREAM_CHUNK);
    for await (const e of source.extents()) {
      for (let pos = e.offset; pos < e.offset + e.length; pos += STREAM_CHUNK) {
        const n = Math.min(STREAM_CHUNK, e.offset + e.length - pos);
        if (e.kind !== 'data') {
          // The shared zero chunk is never written to, so consumers may keep it.
          yield n === STREAM_CHUNK ? zeroChunk : zeroChunk.subarray(0, n);
          continue;
        }
        const buf = new Uint8Array(n);
        await source.readInto(pos, buf);
        yield buf;
      }
    }
  }
  return { length: source.size, chunks: chunks() };
}

/**
 * Reads a raw image from a byte stream: every chunk is guest data at the
 * running offset. The size is only known at the end, so `size` is -1
 * until the stream is exhausted (consumers grow the destination).
 */
export async function readRawStream(input: AsyncIterable<Uint8Array>): Promise<StreamSource> {
  const state = { size: -1 };
  const pieces = (async function* () {
    let offset = 0;
    for await (const chunk of input) {
      if (chunk.length === 0) continue;
      yield { offset, data: chunk };
      offset += chunk.length;
    }
    state.size = alignUp(offset, RAW_SECTOR);
  })();
  return {
    get size() {
      return state.size;
    },
    pieces,
  };
}

/** The raw format's driver for the format registry (probe, open, create). */
export const rawDriver: FormatDriver = {
  name: 'raw',
  // Any bytes are a raw disk, but bytes that carry a container signature are first of all that container.
  probe: (head, size, tail) => (findSignatures(head, size, tail).length ? 0 : 1),
  open: openRaw,
  create: (storage, options) => createRaw(storage, options as RawCreateOptions),
  stream: (source) => streamRaw(source),
  readStream: (input) => readRawStream(input),
  createOptions: optionHelp(RAW_CREATE_OPTIONS),
  createOptionTable: RAW_CREATE_OPTIONS,
};
