/**
 * A sequential reader over an async iterable of chunks (a pipe, an HTTP
 * body): exact reads, partial reads and skips, never more buffered than
 * the chunk at hand. What readQcow2Stream consumes its input with.
 */
import { corrupt, hex } from '@img/block';

const FORMAT = 'qcow2';
/** Largest piece handed out by skips and drains. */
const PIECE = 1024 * 1024;

export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #file: string;
  #chunk: Uint8Array = new Uint8Array(0);
  #at = 0;
  #done = false;
  /** Stream offset of the next byte. */
  position = 0;

  constructor(input: AsyncIterable<Uint8Array>, file: string) {
    this.#it = input[Symbol.asyncIterator]();
    this.#file = file;
  }

  async #fill(): Promise<boolean> {
    while (this.#at >= this.#chunk.length) {
      if (this.#done) return false;
      const r = await this.#it.next();
      if (r.done) {
        this.#done = true;
        return false;
      }
      this.#chunk = r.value;
      this.#at = 0;
    }
    return true;
  }

  /** Up to `max` bytes (at least one), or undefined at the end. The bytes may be shared with the input chunk. */
  async some(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.#fill())) return undefined;
    const n = Math.min(max, this.#chunk.length - this.#at);
    const out = this.#chunk.subarray(this.#at, this.#at + n);
    this.#at += n;
    this.position += n;
    return out;
  }

  /** Up to `n` bytes into a new buffer: fewer only where the stream ends. */
  async upTo(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const piece = await this.some(n - got);
      if (!piece) return out.subarray(0, got);
      out.set(piece, got);
      got += piece.length;
    }
    return out;
  }

  /** Exactly `n` bytes in a new buffer; `what` names them if the stream ends first. */
  async exact(n: number, what: string): Promise<Uint8Array> {
    const at = this.position;
    const out = await this.upTo(n);
    if (out.length < n) throw corrupt(FORMAT, this.#file, `the stream ends at ${hex(this.position)}, inside ${what} at ${hex(at)}`, { field: what, offset: this.position });
    return out;
  }

  /** Skips to stream offset `to` (at or after the position); false if the stream ends first. */
  async skipTo(to: number): Promise<boolean> {
    while (this.position < to) {
      const piece = await this.some(Math.min(to - this.position, PIECE));
      if (!piece) return false;
    }
    return true;
  }

  /** Reads and discards the rest of the stream. */
  async drain(): Promise<void> {
    while (await this.some(PIECE));
  }

  /** Stops reading: the input's iterator is told (a generator's finally blocks run). */
  async cancel(): Promise<void> {
    if (!this.#done) {
      this.#done = true;
      await this.#it.return?.();
    }
  }
}
