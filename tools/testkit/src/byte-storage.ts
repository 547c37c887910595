/**
 * A flat in-memory storage for test doubles (the testkit does not depend on
 * @img/block: it has the shape of block's Storage, checked where it is used).
 */

/** A growable byte array with the Storage methods the doubles need. */
export class ByteStorage {
  readonly name: string;
  readonly readOnly = false;
  #bytes: Uint8Array;

  /** Holds a copy of `initial`. */
  constructor(initial: Uint8Array = new Uint8Array(0), name = 'bytes') {
    this.name = name;
    this.#bytes = initial.slice();
  }

  /** Synchronous size. */
  get byteLength(): number {
    return this.#bytes.length;
  }

  async size(): Promise<number> {
    return this.#bytes.length;
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(position, out);
    return out;
  }

  /** Copies what lies inside the storage; returns how many bytes that was. */
  async readInto(position: number, target: Uint8Array): Promise<number> {
    const end = Math.min(this.#bytes.length, position + target.length);
    const n = Math.max(0, end - position);
    if (n > 0) target.set(this.#bytes.subarray(position, end));
    return n;
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    const end = position + data.length;
    if (end > this.#bytes.length) this.#resize(end);
    this.#bytes.set(data, position);
  }

  async truncate(size: number): Promise<void> {
    this.#resize(size);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  /** A copy of the bytes. */
  toBytes(): Uint8Array {
    return this.#bytes.slice();
  }

  #resize(size: number): void {
    const next = new Uint8Array(size);
    next.set(this.#bytes.subarray(0, Math.min(size, this.#bytes.length)));
    this.#bytes = next;
  }
}
