/**
 * Call order for overlapping guest operations.
 *
 * The Disk contract: operations on overlapping ranges take effect in the
 * order they were called, even when the caller does not await between
 * them. A format keeps that order cheaply where an operation takes its
 * places in per-table or per-block queues before its first pause; an
 * operation that pauses first (a compressed write compresses, a zero write
 * looks at the parent) registers here, and every later operation that
 * overlaps a registered one waits until that one has finished, registering
 * itself in turn (so that operations overlapping it wait too).
 */

interface Registered {
  start: number;
  end: number;
  done: Promise<void>;
}

/** Options of {@link CallOrder.run}. */
export interface CallOrderRunOptions {
  /** Register even when nothing earlier overlaps (the operation pauses before it is ordered by other means). */
  register?: boolean;
}

/** Registered operations over guest ranges; see the module comment. */
export class CallOrder {
  #registered: Registered[] = [];

  /**
   * Runs `op` over [offset, offset + length) once every registered,
   * unfinished operation that overlaps it has finished (failed ones
   * count as finished). When none overlaps and `register` is not set,
   * `op` starts before this returns. A length of Infinity covers every
   * later offset (operations on the whole disk: resize, snapshots).
   */
  run<T>(offset: number, length: number, op: () => Promise<T>, options: CallOrderRunOptions = {}): Promise<T> {
    const end = offset + length;
    let before: Promise<void>[] | undefined;
    for (const r of this.#registered) if (r.start < end && offset < r.end) (before ??= []).push(r.done);
    if (!before && !options.register) return op();
    const result = before ? Promise.all(before).then(op) : op();
    const entry: Registered = { start: offset, end, done: result.then(ignore, ignore).then(() => this.#remove(entry)) };
    this.#registered.push(entry);
    return result;
  }

  /** Registered operations not finished yet (for tests). */
  get size(): number {
    return this.#registered.length;
  }

  #remove(entry: Registered): void {
    const i = this.#registered.indexOf(entry);
    if (i >= 0) this.#registered.splice(i, 1);
  }
}

function ignore(): void {}
