/**
 * Guest data writes in flight outside their L2 table's lock.
 *
 * A write into clusters that are already allocated, private (refcount 1,
 * the COPIED flag) and not compressed changes no metadata: it looks the
 * mapping up under the table's lock and writes its data after releasing
 * it, so that writes to one table overlap (qemu does the same). What must
 * not overlap such a write is a change of the mapping it used: anything
 * that frees, moves or shares the host cluster first waits, holding the
 * table's lock, until the table has no data write in flight
 * ({@link InFlightWrites.drain}); flush waits for the writes in flight
 * when it is called ({@link InFlightWrites.settled}). Writes that overlap
 * a write still in flight wait for it, so overlapping writes land in the
 * order they were made.
 */

/** Bytes [a, b) of guest cluster `cluster` (its index, offset / cluster size). */
export interface ClusterSpan {
  cluster: number;
  a: number;
  b: number;
}

interface Flight {
  a: number;
  b: number;
  done: Promise<void>;
}

/** The bookkeeping of unlocked data writes, per guest cluster and per L2 table. */
export class InFlightWrites {
  #byCluster = new Map<number, Flight[]>();
  #perTable = new Map<number, number>();
  #idle = new Map<number, Array<() => void>>();
  #all = new Set<Promise<void>>();

  /**
   * Runs `write` (the data I/O over `spans`, all mapped by L2 table
   * `l1Index`) once the writes in flight that overlap it have finished.
   * Call it holding the table's lock: once it returns, the write counts
   * as in flight for {@link drain}. The promise is the write's outcome.
   */
  run(l1Index: number, spans: readonly ClusterSpan[], write: () => Promise<void>): Promise<void> {
    let before: Promise<void>[] | undefined;
    for (const s of spans) {
      const list = this.#byCluster.get(s.cluster);
      if (list) for (const f of list) if (f.a < s.b && s.a < f.b) (before ??= []).push(f.done);
    }
    const result = before ? Promise.all(before).then(write) : write();
    const flights: Flight[] = [];
    const finish = (): void => this.#finish(l1Index, spans, flights, done);
    const done: Promise<void> = result.then(finish, finish);
    for (const s of spans) {
      const f = { a: s.a, b: s.b, done };
      flights.push(f);
      const list = this.#byCluster.get(s.cluster);
      if (list) list.push(f);
      else this.#byCluster.set(s.cluster, [f]);
    }
    this.#perTable.set(l1Index, (this.#perTable.get(l1Index) ?? 0) + 1);
    this.#all.add(done);
    return result;
  }

  #finish(l1Index: number, spans: readonly ClusterSpan[], flights: Flight[], done: Promise<void>): void {
    spans.forEach((s, k) => {
      const list = this.#byCluster.get(s.cluster)!;
      if (list.length === 1) this.#byCluster.delete(s.cluster);
      else list.splice(list.indexOf(flights[k]!), 1);
    });
    this.#all.delete(done);
    const left = this.#perTable.get(l1Index)! - 1;
    if (left > 0) {
      this.#perTable.set(l1Index, left);
      return;
    }
    this.#perTable.delete(l1Index);
    const wake = this.#idle.get(l1Index);
    if (wake) {
      this.#idle.delete(l1Index);
      for (const w of wake) w();
    }
  }

  /** Waits until table `l1Index` has no data write in flight. Call it holding the table's lock (no new ones can start). */
  async drain(l1Index: number): Promise<void> {
    while (this.#perTable.has(l1Index)) {
      await new Promise<void>((resolve) => {
        const list = this.#idle.get(l1Index);
        if (list) list.push(resolve);
        else this.#idle.set(l1Index, [resolve]);
      });
    }
  }

  /** Waits for the data writes in flight now (not for ones that start later). Never rejects. */
  async settled(): Promise<void> {
    if (this.#all.size) await Promise.all([...this.#all]);
  }

  /** Data writes in flight (for tests). */
  get size(): number {
    return this.#all.size;
  }
}

/**
 * One lock per L2 table (keyed by L1 index) that can also say whether a
 * table is free right now: a write that changes no metadata may then do
 * its lookup at once, without queueing (nothing can change the table
 * while it runs, since it does not yield). A released lock passes straight
 * to the next waiter, so a table with waiters never looks free.
 */
export class TableLocks {
  /** Present while a table's lock is held: the waiters, in order. */
  #held = new Map<number, Array<() => void>>();

  isFree(key: number): boolean {
    return !this.#held.has(key);
  }

  /** Runs `fn` holding the lock of `key`; when the lock is free, `fn` starts before this returns. */
  run<T>(key: number, fn: () => Promise<T>): Promise<T> {
    const waiters = this.#held.get(key);
    if (!waiters) {
      this.#held.set(key, []);
      return this.#hold(key, fn);
    }
    return new Promise<void>((resolve) => waiters.push(resolve)).then(() => this.#hold(key, fn));
  }

  async #hold<T>(key: number, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } finally {
      const next = this.#held.get(key)!.shift();
      if (next) next();
      else this.#held.delete(key);
    }
  }
}
