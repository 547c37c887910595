/**
 * Writes started now and awaited later, after other I/O has overlapped
 * with them (refcount block writes alongside the data write they
 * allocate for).
 *
 * A write that nobody awaits yet still needs a rejection handler: if it
 * fails while its owner is awaiting something else, the failure would be
 * an unhandled rejection, which ends a Node process. {@link add} attaches
 * that handler at once and keeps the failure for {@link settle}, so the
 * error reaches the caller instead of being dropped or crashing.
 */
export class PendingWrites {
  readonly #writes: Promise<void>[] = [];
  /** Failures by the order their writes were added. */
  readonly #failures = new Map<number, unknown>();

  /** Adds a write that is already running. */
  add(write: Promise<void>): void {
    const index = this.#writes.length;
    this.#writes.push(
      write.then(undefined, (error: unknown) => {
        this.#failures.set(index, error);
      }),
    );
  }

  /** Waits until every write added so far has finished, failed or not. */
  async drain(): Promise<void> {
    await Promise.all(this.#writes);
  }

  /** Waits for every write added so far, then throws the failure of the first added that failed. */
  async settle(): Promise<void> {
    await this.drain();
    for (let i = 0; i < this.#writes.length; i++) if (this.#failures.has(i)) throw this.#failures.get(i);
  }
}

/**
 * Refcount changes made in memory whose block writes wait: `Refcounts.add`
 * with a batch records each block's changed range here, and
 * `Refcounts.writeBatch` then writes every block's range once (a run
 * of compressed clusters that share host clusters would otherwise write
 * the same two bytes once per cluster).
 */
export class RefcountBatch {
  /** Block index -> [first, last + 1) changed entries. */
  readonly ranges = new Map<number, [number, number]>();
  /** Block index -> offset of the block, held in the block cache until the batch is written. */
  readonly pinned = new Map<number, number>();

  /** Entries [from, to) of refcount block `t` changed. */
  note(t: number, from: number, to: number): void {
    const r = this.ranges.get(t);
    if (r) {
      r[0] = Math.min(r[0], from);
      r[1] = Math.max(r[1], to);
    } else this.ranges.set(t, [from, to]);
  }
}
