import { storageClosedError, storageReadOnlyError } from './errors.js';
import { allocateRead, checkStorageArgs, checkStorageChunks, checkStorageNumber } from './byte-args.js';
import type { Storage, StorageRange } from './storage.js';

export interface MemoryStorageOptions {
  name?: string;
  readOnly?: boolean;
  /** Initial contents (copied). */
  data?: Uint8Array;
}

const PAGE = 64 * 1024;

/**
 * A Storage in memory: the test double and a real backend (a ramdisk).
 * Backed by sparse 64 KiB pages so that a 1 TiB virtual raw image costs
 * only what was written.
 */
export class MemoryStorage implements Storage {
  readonly name: string;
  readonly readOnly: boolean;
  #pages = new Map<number, Uint8Array>();
  #size = 0;
  #closed = false;

  constructor(options: MemoryStorageOptions = {}) {
    this.name = options.name ?? 'memory';
    this.readOnly = options.readOnly ?? false;
    if (options.data) {
      this.#writeSync(0, options.data);
    }
  }

  /** A MemoryStorage holding a copy of `data`. */
  static from(data: Uint8Array, options: Omit<MemoryStorageOptions, 'data'> = {}): MemoryStorage {
    return new MemoryStorage({ ...options, data });
  }

  #check(): void {
    if (this.#closed) throw storageClosedError(this.name, `${this.name}: memory storage is closed`);
  }

  #checkWritable(): void {
    this.#check();
    if (this.readOnly) throw storageReadOnlyError(this.name, `storage ${this.name} is read-only`);
  }

  /** Synchronous size, for tests. */
  get byteLength(): number {
    return this.#size;
  }

  async size(): Promise<number> {
    this.#check();
    return this.#size;
  }

  /** Bytes of the pages written (64 KiB each): at least size() when no page is missing. */
  async allocatedBytes(): Promise<number> {
    this.#check();
    return this.#pages.size * PAGE;
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    this.#check();
    checkStorageArgs(this.name, 'MemoryStorage.read', position, length);
    const n = Math.max(0, Math.min(length, this.#size - position));
    const out = allocateRead(this.name, 'MemoryStorage.read', n);
    this.#readSync(position, out);
    return out;
  }

  async readInto(position: number, target: Uint8Array): Promise<number> {
    this.#check();
    checkStorageArgs(this.name, 'MemoryStorage.readInto', position, target, 'target');
    const n = Math.max(0, Math.min(target.length, this.#size - position));
    const view = n === target.length ? target : target.subarray(0, n);
    this.#readSync(position, view);
    return n;
  }

  #readSync(position: number, out: Uint8Array): void {
    let done = 0;
    while (done < out.length) {
      const pos = position + done;
      const index = Math.floor(pos / PAGE);
      const within = pos - index * PAGE;
      const n = Math.min(PAGE - within, out.length - done);
      const page = this.#pages.get(index);
      if (page) out.set(page.subarray(within, within + n), done);
      else out.fill(0, done, done + n);
      done += n;
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    checkStorageArgs(this.name, 'MemoryStorage.write', position, data, 'data');
    this.#writeSync(position, data);
  }

  #writeSync(position: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const pos = position + done;
      const index = Math.floor(pos / PAGE);
      const within = pos - index * PAGE;
      const n = Math.min(PAGE - within, data.length - done);
      let page = this.#pages.get(index);
      if (!page) {
        page = new Uint8Array(PAGE);
        this.#pages.set(index, page);
      }
      page.set(data.subarray(done, done + n), within);
      done += n;
    }
    this.#size = Math.max(this.#size, position + data.length);
  }

  async writev(position: number, chunks: readonly Uint8Array[]): Promise<void> {
    this.#checkWritable();
    checkStorageChunks(this.name, 'MemoryStorage.writev', position, chunks);
    let at = position;
    for (const c of chunks) {
      this.#writeSync(at, c);
      at += c.length;
    }
  }

  async truncate(size: number): Promise<void> {
    this.#checkWritable();
    checkStorageNumber(this.name, 'MemoryStorage.truncate', 'size', size);
    if (size < this.#size) {
      const firstDropped = Math.ceil(size / PAGE);
      for (const index of [...this.#pages.keys()]) if (index >= firstDropped) this.#pages.delete(index);
      const lastIndex = Math.floor(size / PAGE);
      const page = this.#pages.get(lastIndex);
      if (page) page.fill(0, size - lastIndex * PAGE);
    }
    this.#size = size;
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
  }

  async ranges(offset: number, length: number, limit?: number): Promise<StorageRange[]> {
    this.#check();
    checkStorageArgs(this.name, 'MemoryStorage.ranges', offset, length);
    const end = Math.min(offset + length, this.#size);
    const out: StorageRange[] = [];
    const max = limit !== undefined && limit > 0 ? limit : Infinity;
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / PAGE);
      const next = Math.min(end, (index + 1) * PAGE);
      const data = this.#pages.has(index);
      const last = out[out.length - 1];
      if (last && last.data === data) last.length += next - pos;
      else if (out.length >= max) break;
      else out.push({ offset: pos, length: next - pos, data });
      pos = next;
    }
    return out;
  }

  async punchHole(offset: number, length: number): Promise<boolean> {
    this.#checkWritable();
    checkStorageArgs(this.name, 'MemoryStorage.punchHole', offset, length);
    const end = Math.min(offset + length, this.#size);
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / PAGE);
      const within = pos - index * PAGE;
      const n = Math.min(PAGE - within, end - pos);
      const page = this.#pages.get(index);
      if (page) {
        if (n === PAGE) this.#pages.delete(index);
        else page.fill(0, within, within + n);
      }
      pos += n;
    }
    return true;
  }

  /**
   * A copy of the whole contents. Available after {@link close} too: an
   * image written into a MemoryStorage (a conversion in memory, in a
   * browser) is closed by its Disk and read out here afterwards.
   */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.#size);
    this.#readSync(0, out);
    return out;
  }
}
