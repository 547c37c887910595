/**
 * Bytes on an NBD connection: exact-length reads from a stream of chunks,
 * and big-endian builders for the messages this side sends.
 */

/** The end of the peer's bytes before a read was satisfied. */
export class ConnectionClosed extends Error {
  constructor() {
    super('the peer closed the connection');
  }
}

/**
 * Reads exact lengths from an async stream of chunks (a socket). Holds at
 * most one chunk beyond what was asked for; the stream's own backpressure
 * bounds the rest.
 */
export class ByteReader {
  #iterator: AsyncIterator<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array(0);
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#iterator = source[Symbol.asyncIterator]();
  }

  /** The next `length` bytes; ConnectionClosed if the stream ends first. */
  async read(length: number): Promise<Uint8Array> {
    if (this.#chunk.length >= length) {
      const out = this.#chunk.subarray(0, length);
      this.#chunk = this.#chunk.subarray(length);
      return out;
    }
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (this.#chunk.length === 0) {
        if (this.#done) throw new ConnectionClosed();
        const next = await this.#iterator.next();
        if (next.done) {
          this.#done = true;
          throw new ConnectionClosed();
        }
        this.#chunk = next.value;
        continue;
      }
      const n = Math.min(length - filled, this.#chunk.length);
      out.set(this.#chunk.subarray(0, n), filled);
      this.#chunk = this.#chunk.subarray(n);
      filled += n;
    }
    return out;
  }

  /** Reads and drops `length` bytes without holding them all. */
  async skip(length: number): Promise<void> {
    for (let left = length; left > 0;) {
      const n = Math.min(left, 1 << 20);
      await this.read(n);
      left -= n;
    }
  }
}

/** A big-endian message under construction. */
export class MessageBuilder {
  #parts: Uint8Array[] = [];
  #length = 0;

  u16(v: number): this {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, v);
    return this.bytes(b);
  }

  u32(v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0);
    return this.bytes(b);
  }

  u64(v: number | bigint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v));
    return this.bytes(b);
  }

  string(s: string): this {
    return this.bytes(new TextEncoder().encode(s));
  }

  bytes(b: Uint8Array): this {
    this.#parts.push(b);
    this.#length += b.length;
    return this;
  }

  get length(): number {
    return this.#length;
  }

  /** The parts, in order (for a vectored write). */
  parts(): Uint8Array[] {
    return this.#parts;
  }

  /** One contiguous buffer. */
  build(): Uint8Array {
    const out = new Uint8Array(this.#length);
    let at = 0;
    for (const p of this.#parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** A big-endian field reader over a received message. */
export class FieldReader {
  #view: DataView;
  #at = 0;

  constructor(readonly bytes: Uint8Array) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.length - this.#at;
  }

  u16(): number {
    const v = this.#view.getUint16(this.#at);
    this.#at += 2;
    return v;
  }

  u32(): number {
    const v = this.#view.getUint32(this.#at);
    this.#at += 4;
    return v;
  }

  /** A u64 as a number, or -1 when it is above 2^53 (no image is that large). */
  u64(): number {
    const v = this.#view.getBigUint64(this.#at);
    this.#at += 8;
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
  }

  bigU64(): bigint {
    const v = this.#view.getBigUint64(this.#at);
    this.#at += 8;
    return v;
  }

  take(n: number): Uint8Array {
    const v = this.bytes.subarray(this.#at, this.#at + n);
    this.#at += n;
    return v;
  }
}
