/** Test helper: a MemoryStorage whose calls each wait a seeded 0-2 ms, so concurrent I/O interleaves. */
import { MemoryStorage, type MemoryStorageOptions } from '@img/block';

export class SlowStorage extends MemoryStorage {
  #x: number;
  constructor(options: MemoryStorageOptions & { seed?: number } = {}) {
    super(options);
    this.#x = options.seed ?? 7;
  }
  async #pause(): Promise<void> {
    this.#x = (this.#x * 1103515245 + 12345) >>> 0;
    await new Promise((r) => setTimeout(r, this.#x % 3));
  }
  override async write(p: number, d: Uint8Array): Promise<void> {
    await this.#pause();
    return super.write(p, d);
  }
  /** Waits before and after taking the bytes, so a read can return data that has changed since. */
  override async readInto(p: number, t: Uint8Array): Promise<number> {
    await this.#pause();
    const n = await super.readInto(p, t);
    await this.#pause();
    return n;
  }
}
