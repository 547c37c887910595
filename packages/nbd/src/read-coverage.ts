/**
 * Which bytes of a structured READ reply have been answered: content chunks
 * must not overlap (proto.md "NBD_CMD_READ") and must cover the whole request
 * before a success, or the client would hand out zeroes nobody sent.
 */

/** The most disjoint answered pieces tracked for one read before the reply is taken as hostile. */
export const MAX_READ_PIECES = 4096;

/** Answered ranges of one read, relative to its offset, kept sorted and merged. */
export class ReadCoverage {
  #starts: number[] = [];
  #ends: number[] = [];
  #covered = 0;

  constructor(readonly length: number) {}

  /** Bytes answered so far. */
  get covered(): number {
    return this.#covered;
  }

  /**
   * Records [at, at + n); a string naming the fault when it lies outside
   * the request, overlaps an earlier chunk or fragments the reply too much.
   */
  add(at: number, n: number): string | undefined {
    if (at < 0 || n <= 0 || at + n > this.length) return `bytes ${at}..${at + n} lie outside the ${this.length}-byte request`;
    // The first piece that ends after `at`.
    let lo = 0;
    let hi = this.#ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ends[mid]! <= at) lo = mid + 1;
      else hi = mid;
    }
    if (lo < this.#starts.length && this.#starts[lo]! < at + n) return `bytes ${at}..${at + n} overlap bytes ${this.#starts[lo]}..${this.#ends[lo]} answered earlier`;
    this.#covered += n;
    const joinsLeft = lo > 0 && this.#ends[lo - 1] === at;
    const joinsRight = lo < this.#starts.length && this.#starts[lo] === at + n;
    if (joinsLeft && joinsRight) {
      this.#ends[lo - 1] = this.#ends[lo]!;
      this.#starts.splice(lo, 1);
      this.#ends.splice(lo, 1);
    } else if (joinsLeft) this.#ends[lo - 1] = at + n;
    else if (joinsRight) this.#starts[lo] = at;
    else {
      if (this.#starts.length >= MAX_READ_PIECES) return `the reply is split into more than ${MAX_READ_PIECES} disjoint pieces`;
      this.#starts.splice(lo, 0, at);
      this.#ends.splice(lo, 0, at + n);
    }
    return undefined;
  }

  /** The first byte not answered, or undefined when all are. */
  firstGap(): number | undefined {
    if (this.#covered === this.length) return undefined;
    return this.#starts[0] === 0 ? this.#ends[0] : 0;
  }
}
