/**
 * ByteStreamReader: sequential reads over an async iterable of chunks (a
 * pipe, an HTTP body), for the formats' stream readers. Exact reads,
 * partial reads, skips and a drain, never buffering more than the chunk at
 * hand; running out of input where bytes are required is ERR_IMG_CORRUPT
 * naming what was being read.
 */
import { corrupt, hex } from './errors.js';

/** Largest piece handed out by skips and drains. */
const PIECE = 1024 * 1024;

/** Reads a byte stream (an async iterable of chunks) forward only: exact lengths, skips and what is left, with the position it has reached. */
export class ByteStreamReader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #format: string;
  readonly #file: string;
  #chunk: Uint8Array = new Uint8Array(0);
  #at = 0;
  #done = false;
  /** Stream offset of the next byte. */
  position = 0;

  /** `format` and `file` name the stream in errors. */
  constructor(input: AsyncIterable<Uint8Array>, format: string, file = 'stream') {
    this.#it = input[Symbol.asyncIterator]();
    this.#format = format;
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

  /** Up to `n` bytes in a new buffer: fewer only where the stream ends. */
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
    if (out.length < n) {
      throw corrupt(this.#format, this.#file, `the stream ends at ${hex(this.position)}, inside ${what} at ${hex(at)}`, { field: what, offset: this.position });
    }
    return out;
  }

  /**
   * Skips to stream offset `to` (at or after the position). Returns false if
   * the stream ends first; with `what`, that is an error naming it instead.
   */
  async skipTo(to: number, what?: string): Promise<boolean> {
    while (this.position < to) {
      const piece = await this.some(Math.min(to - this.position, PIECE));
      if (!piece) {
        if (what === undefined) return false;
        throw corrupt(this.#format, this.#file, `the stream ends at ${hex(this.position)}, before ${what} at ${hex(to)}`, { field: what, offset: to });
      }
    }
    return true;
  }

  /** Reads and discards the rest of the stream; returns its last `keep` bytes (fewer if it was shorter). */
  async drain(keep = 0): Promise<Uint8Array> {
    const tail = new Uint8Array(keep);
    let have = 0;
    for (;;) {
      const piece = await this.some(PIECE);
      if (!piece) return tail.subarray(keep - have);
      if (keep === 0) continue;
      if (piece.length >= keep) {
        tail.set(piece.subarray(piece.length - keep));
        have = keep;
      } else {
        tail.copyWithin(0, piece.length);
        tail.set(piece, keep - piece.length);
        have = Math.min(keep, have + piece.length);
      }
    }
  }

  /** Stops reading: the input's iterator is told (a generator's finally blocks run). */
  async cancel(): Promise<void> {
    if (!this.#done) {
      this.#done = true;
      await this.#it.return?.();
    }
  }
}
