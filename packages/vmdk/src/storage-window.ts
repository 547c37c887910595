/**
 * StorageWindow: a read-only Storage that shows `length` bytes of another
 * storage from `offset` (a tar member inside an OVA), so a format opens
 * the member where it lies without copying it out.
 */
import { readOnlyError, type Storage } from '@img/block';

/** A read-only view of `[offset, offset + length)` of `base`; closing it closes `base` only when `ownsBase`. */
export class StorageWindow implements Storage {
  readonly name: string;
  readonly readOnly = true;
  readonly #base: Storage;
  readonly #offset: number;
  readonly #length: number;
  readonly #ownsBase: boolean;

  /** Shows `length` bytes of `base` from `offset` under `name`. */
  constructor(base: Storage, offset: number, length: number, name: string, ownsBase = false) {
    this.#base = base;
    this.#offset = offset;
    this.#length = length;
    this.name = name;
    this.#ownsBase = ownsBase;
  }

  /** The window's length. */
  async size(): Promise<number> {
    return this.#length;
  }

  /** Reads inside the window (short at its end). */
  async read(position: number, length: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(length, this.#length - position));
    if (n === 0) return new Uint8Array(0);
    return this.#base.read(this.#offset + position, n);
  }

  /** Reads into `target` inside the window; returns the bytes read. */
  async readInto(position: number, target: Uint8Array): Promise<number> {
    const n = Math.max(0, Math.min(target.length, this.#length - position));
    if (n === 0) return 0;
    return this.#base.readInto(this.#offset + position, n === target.length ? target : target.subarray(0, n));
  }

  /** Refused: a window is read-only. */
  async write(): Promise<void> {
    throw readOnlyError('ova', this.name);
  }

  /** Refused: a window is read-only. */
  async truncate(): Promise<void> {
    throw readOnlyError('ova', this.name);
  }

  /** Nothing to flush. */
  async flush(): Promise<void> {}

  /** Closes the base storage when the window owns it. */
  async close(): Promise<void> {
    if (this.#ownsBase) await this.#base.close();
  }
}
