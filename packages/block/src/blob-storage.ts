/**
 * Storage over a Blob: a `File` from `<input type=file>` or a drop, a
 * `fetch()` answer's `blob()`, anything with a size and a `slice` that
 * reads as an ArrayBuffer. Read-only; a read is a
 * `blob.slice(a, b).arrayBuffer()` (short ones through a small cache of
 * aligned blocks), so only what an image's metadata points at is loaded. And the way back: {@link BlobTarget}, a
 * Storage in memory to create an image in that yields a Blob once the image
 * is closed, and {@link storageToBlob} for any open Storage.
 */
import { closedError, invalidArg, ioError, readOnlyError } from './errors.js';
import { MemoryStorage } from './memory-storage.js';
import { checkStorageArgs } from './byte-args.js';
import type { Storage, StorageRange } from './storage.js';

/**
 * The part of the DOM's `Blob` this needs (so that the types check without
 * the DOM library, and any object of that shape will do).
 */
export interface BlobLike {
  readonly size: number;
  slice(start?: number, end?: number): { arrayBuffer(): Promise<ArrayBuffer> };
}

/** What {@link BlobStorage} is told besides the blob. */
export interface BlobStorageOptions {
  /** The name messages use: by default the File's name, else "blob". */
  name?: string;
  /**
   * Reads shorter than this are served from aligned blocks of this size,
   * fetched once and kept (most recently used first) up to `cacheBytes`:
   * a qcow2 with small clusters reads its compressed clusters and L2
   * tables a few KiB at a time, and every `slice().arrayBuffer()` is a
   * round trip to the browser's blob store (~0.4 ms in Chromium whatever
   * its size). Default 256 KiB.
   */
  blockSize?: number;
  /** Bytes of blocks kept; 0 reads exactly what is asked, every time. Default 4 MiB. */
  cacheBytes?: number;
}

const DEFAULT_BLOCK = 256 * 1024;
const DEFAULT_CACHE = 4 * 1024 * 1024;

/**
 * A read-only {@link Storage} over a Blob or File, for the formats to open
 * in a browser (or anywhere a Blob exists: Node >= 20, Deno, Bun).
 *
 * @example
 * ```ts
 * import { BlobStorage, BlobTarget, createRaw, sparseCopy } from '@img/block';
 * import { openQcow2 } from '@img/qcow2';
 *
 * input.onchange = async () => {
 *   const file = input.files![0]!;                     // <input type=file>
 *   await using disk = await openQcow2(new BlobStorage(file), { readOnly: true });
 *   const first = await disk.read(0, 512);            // guest bytes, decompressed
 *   for await (const e of disk.extents()) console.log(e.offset, e.length, e.kind);
 *   // Convert to raw in memory and offer it as a download.
 *   const out = new BlobTarget({ name: 'disk.img' });
 *   const raw = await createRaw(out, { size: disk.size });
 *   await sparseCopy(disk, raw);
 *   await raw.close();
 *   const a = document.createElement('a');
 *   a.href = URL.createObjectURL(await out.toBlob());
 *   a.download = file.name.replace(/\.qcow2$/, '') + '.img';
 *   a.click();
 * };
 * ```
 */
export class BlobStorage implements Storage {
  readonly name: string;
  readonly readOnly = true;
  #blob: BlobLike;
  #closed = false;
  #blockSize: number;
  #maxBlocks: number;
  /** Blocks fetched or being fetched, least recently used first (a Map keeps insertion order). */
  #blocks = new Map<number, Promise<Uint8Array>>();

  constructor(blob: BlobLike, options: BlobStorageOptions = {}) {
    this.#blob = blob;
    const fileName = (blob as { name?: unknown }).name;
    this.name = options.name ?? (typeof fileName === 'string' && fileName !== '' ? fileName : 'blob');
    this.#blockSize = options.blockSize ?? DEFAULT_BLOCK;
    const cacheBytes = options.cacheBytes ?? DEFAULT_CACHE;
    if (!Number.isSafeInteger(this.#blockSize) || this.#blockSize <= 0) throw invalidArg('blob', `blockSize must be a positive integer, got ${this.#blockSize}`, { field: 'blockSize' });
    if (!Number.isSafeInteger(cacheBytes) || cacheBytes < 0) throw invalidArg('blob', `cacheBytes must be a non-negative integer, got ${cacheBytes}`, { field: 'cacheBytes' });
    this.#maxBlocks = Math.floor(cacheBytes / this.#blockSize);
  }

  #check(): void {
    if (this.#closed) throw closedError(this.name);
  }

  async size(): Promise<number> {
    this.#check();
    return this.#blob.size;
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    this.#check();
    checkStorageArgs(this.name, 'BlobStorage.read', position, length);
    const end = Math.min(this.#blob.size, position + length);
    if (end <= position) return new Uint8Array(0);
    if (end - position >= this.#blockSize || this.#maxBlocks === 0) return this.#slice(position, end);
    // One or two blocks: a short read crosses at most one boundary.
    const first = Math.floor(position / this.#blockSize);
    const last = Math.floor((end - 1) / this.#blockSize);
    const a = await this.#block(first);
    if (first === last) return a.slice(position - first * this.#blockSize, end - first * this.#blockSize);
    const b = await this.#block(last);
    const out = new Uint8Array(end - position);
    const split = last * this.#blockSize - position;
    out.set(a.subarray(position - first * this.#blockSize), 0);
    out.set(b.subarray(0, end - last * this.#blockSize), split);
    return out;
  }

  /** Block `index`, from the cache or fetched (concurrent readers share one fetch). */
  #block(index: number): Promise<Uint8Array> {
    let p = this.#blocks.get(index);
    if (p) {
      // Most recently used: to the end of the order.
      this.#blocks.delete(index);
      this.#blocks.set(index, p);
      return p;
    }
    const start = index * this.#blockSize;
    p = this.#slice(start, Math.min(this.#blob.size, start + this.#blockSize));
    this.#blocks.set(index, p);
    // A failed fetch is not kept: the next read tries again.
    p.catch(() => this.#blocks.get(index) === p && this.#blocks.delete(index));
    while (this.#blocks.size > this.#maxBlocks) this.#blocks.delete(this.#blocks.keys().next().value!);
    return p;
  }

  async #slice(start: number, end: number): Promise<Uint8Array> {
    try {
      return new Uint8Array(await this.#blob.slice(start, end).arrayBuffer());
    } catch (e) {
      // A File changed or removed since it was picked reads as NotReadableError.
      throw ioError(this.name, `cannot read ${end - start} bytes at ${start} (${e instanceof Error ? e.message : String(e)})`, { offset: start }, e);
    }
  }

  async readInto(position: number, target: Uint8Array): Promise<number> {
    this.#check();
    checkStorageArgs(this.name, 'BlobStorage.readInto', position, target, 'target');
    const bytes = await this.read(position, target.length);
    target.set(bytes);
    return bytes.length;
  }

  async write(): Promise<void> {
    throw this.#refuse();
  }

  async truncate(): Promise<void> {
    throw this.#refuse();
  }

  #refuse(): Error {
    this.#check();
    return readOnlyError('blob', this.name);
  }

  async flush(): Promise<void> {
    this.#check();
  }

  /** `await using storage = await ...open(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#blocks.clear();
  }
}

/** What {@link BlobTarget} is told. */
export interface BlobTargetOptions {
  /** The name messages use; "memory" by default. */
  name?: string;
}

/**
 * A writable Storage in memory (sparse, as MemoryStorage) to create or
 * convert an image into, whose bytes outlive close(): closing the image
 * closes its storage, and {@link BlobTarget.toBlob} still answers the
 * finished image as a Blob to download or upload.
 *
 * @example
 * ```ts
 * const out = new BlobTarget({ name: 'disk.qcow2' });
 * const disk = await createQcow2(out, { size: 64 << 20 });
 * await disk.writeCompressed(0, bytes);
 * await disk.close();
 * const blob = await out.toBlob({ type: 'application/x-qcow2' });
 * ```
 */
export class BlobTarget implements Storage {
  readonly name: string;
  readonly readOnly = false;
  #memory: MemoryStorage;
  #closed = false;

  constructor(options: BlobTargetOptions = {}) {
    this.name = options.name ?? 'memory';
    this.#memory = new MemoryStorage({ name: this.name });
  }

  #check(): void {
    if (this.#closed) throw closedError(this.name);
  }

  /** Bytes held (the image's size once it is closed). */
  get byteLength(): number {
    return this.#memory.byteLength;
  }

  async size(): Promise<number> {
    this.#check();
    return this.#memory.size();
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    this.#check();
    return this.#memory.read(position, length);
  }

  async readInto(position: number, target: Uint8Array): Promise<number> {
    this.#check();
    return this.#memory.readInto(position, target);
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#check();
    return this.#memory.write(position, data);
  }

  async writev(position: number, chunks: readonly Uint8Array[]): Promise<void> {
    this.#check();
    return this.#memory.writev(position, chunks);
  }

  async truncate(size: number): Promise<void> {
    this.#check();
    return this.#memory.truncate(size);
  }

  async flush(): Promise<void> {
    this.#check();
  }

  async ranges(offset: number, length: number, limit?: number): Promise<StorageRange[]> {
    this.#check();
    return this.#memory.ranges(offset, length, limit);
  }

  async punchHole(offset: number, length: number): Promise<boolean> {
    this.#check();
    return this.#memory.punchHole(offset, length);
  }

  /** `await using storage = await ...open(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Refuses further use as a Storage; the bytes stay for toBlob(). */
  async close(): Promise<void> {
    this.#closed = true;
  }

  /** The bytes written so far (all of them once the image is closed), as a Blob. */
  toBlob(options: StorageToBlobOptions = {}): Promise<Blob> {
    return storageToBlob(this.#memory, options);
  }
}

/** What {@link storageToBlob} is told. */
export interface StorageToBlobOptions {
  /** The Blob's MIME type; "application/octet-stream" by default. */
  type?: string;
  /** Bytes read per step (each becomes one part of the Blob); 4 MiB by default. */
  chunkSize?: number;
}

/**
 * The whole content of a Storage as a Blob, read in chunks (no single
 * buffer of the whole size): the image a browser wrote into a
 * MemoryStorage, ready for `URL.createObjectURL` or an upload.
 *
 * The storage must still be open: to keep an image's bytes past its
 * close(), create it in a {@link BlobTarget}.
 *
 * @example
 * ```ts
 * const blob = await storageToBlob(storage, { type: 'application/x-qcow2' });
 * ```
 */
export async function storageToBlob(storage: Storage, options: StorageToBlobOptions = {}): Promise<Blob> {
  const chunkSize = options.chunkSize ?? 4 * 1024 * 1024;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw invalidArg('blob', `storageToBlob: chunkSize must be a positive integer, got ${chunkSize}`, { field: 'chunkSize', actual: chunkSize });
  const size = await storage.size();
  const parts: Uint8Array[] = [];
  for (let at = 0; at < size; at += chunkSize) parts.push(await storage.read(at, Math.min(chunkSize, size - at)));
  return new Blob(parts, { type: options.type ?? 'application/octet-stream' });
}
