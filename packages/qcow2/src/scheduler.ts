/**
 * The scheduler of an image open for writing: the order in which guest
 * operations and their writes reach the file.
 *
 * - Locks: work is done per L2 table under that table's lock, tables in
 *   parallel; a gate lets exclusive operations (snapshots, resize) run
 *   with no guest write in flight and none starting.
 * - Call order: operations take their places in the locks' queues in the
 *   order they are called; one that must wait first holds later ones back
 *   ({@link Scheduler.hold}).
 * - Write ordering (crash safety): data is written and flushed
 *   ({@link Scheduler.barrier}) before the L2 entry that maps it, and an old
 *   cluster's refcount is lowered only after the new entry is on disk. A
 *   write that changes no entry writes its data after its table's lock is
 *   released (in-flight.ts); L2 entry writes that nothing depends on before
 *   the next flush are left in flight ({@link Scheduler.defer}) and
 *   {@link Scheduler.settle} waits for all of them.
 */
import type { Storage } from '@img/block';
import { InFlightWrites, TableLocks } from './in-flight.js';

/**
 * What a per-table step may leave running after its table's lock is
 * released: the data write of a write that changed no metadata.
 */
export type TableTail = { after: Promise<void> } | undefined;

/** One table's share of an operation: L1 index and the guest bytes [start, end) it maps. */
export type TableStep = (l1Index: number, start: number, end: number) => Promise<TableTail | void>;

/**
 * The once-per-session header update before the first change (dirty bit,
 * autoclear bits, bitmaps): whether it is done, and how to wait for it.
 */
export interface FirstWrite {
  readonly done: boolean;
  wait(): Promise<void>;
}

/** Locks, call order and write ordering of one writable image (see the module comment). */
export class Scheduler {
  /** One lock per L2 table (by L1 index). */
  readonly tables = new TableLocks();
  /** Data writes running outside their table's lock (see {@link InFlightWrites}). */
  readonly flights = new InFlightWrites();
  readonly #storage: Storage;
  readonly #dataFile: Storage | undefined;
  readonly #firstWrite: FirstWrite;
  /** Guest bytes one L2 table maps. */
  readonly #coverage: number;
  /** Metadata writes left in flight ({@link defer}). */
  readonly #deferred = new Set<Promise<void>>();
  #deferredError: unknown;
  #exclusives = 0;
  #entering = 0;
  #gate: Promise<void> = Promise.resolve();
  #inflight = 0;
  #idle: Array<() => void> = [];

  constructor(storage: Storage, dataFile: Storage | undefined, coverage: number, firstWrite: FirstWrite) {
    this.#storage = storage;
    this.#coverage = coverage;
    this.#dataFile = dataFile;
    this.#firstWrite = firstWrite;
  }

  /**
   * Flush barrier between dependent writes. Every barrier flushes, with
   * lazy refcounts too: the dirty bit makes a rebuild of the refcounts
   * safe, but not an L1 entry pointing at an L2 table that never reached
   * the disk, an L2 entry pointing at a reused cluster whose new data (with
   * the copied-on-write old bytes) never reached it, or a cluster reused
   * while the entry that frees it is not yet on disk. The crash tests
   * (crash.test.ts) find each of these when the barriers are skipped.
   */
  async barrier(): Promise<void> {
    await this.#dataFile?.flush();
    await this.#storage.flush();
  }

  /**
   * Leaves a metadata write in flight: nothing depends on it before the
   * next flush, which (like {@link exclusive}) waits for it through
   * {@link settle}, where its failure is reported.
   */
  defer(write: Promise<void>): void {
    const p: Promise<void> = write.then(
      () => void this.#deferred.delete(p),
      (e: unknown) => {
        this.#deferred.delete(p);
        this.#deferredError ??= e;
      },
    );
    this.#deferred.add(p);
  }

  /** Waits for the data writes in flight and every deferred write; reports the first deferred write that failed. */
  async settle(): Promise<void> {
    await this.flights.settled();
    while (this.#deferred.size) await Promise.all([...this.#deferred]);
    if (this.#deferredError !== undefined) {
      const e = this.#deferredError;
      this.#deferredError = undefined;
      throw e;
    }
  }

  /**
   * Runs `fn` with no guest write in flight and none starting (snapshot
   * operations, resize). Writes wait for it to finish.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#gate;
    let release!: () => void;
    this.#gate = new Promise<void>((r) => (release = r));
    this.#exclusives++;
    try {
      await prev;
      while (this.#inflight > 0) await new Promise<void>((r) => this.#idle.push(r));
      // settle() also waits for the data writes that started without a table lock.
      await this.settle();
      await this.#firstWrite.wait();
      return await fn();
    } finally {
      this.#exclusives--;
      release();
    }
  }

  /**
   * Guest operations take their places in the table locks' queues in the
   * order they are called, so that overlapping ones take effect in that
   * order. One that must wait first (for the header update before the
   * first write, dirty bitmaps, an exclusive operation) holds later ones
   * back from starting without a lock ({@link inOrder}) until it has its
   * places; the waits are the same for all, so they stay in order.
   */
  hold(): void {
    this.#entering++;
  }

  /** Ends a {@link hold}; call it right after the operation took its places (or failed). */
  unhold(): void {
    this.#entering--;
  }

  /**
   * Nothing called earlier is still on its way to the table locks and no
   * exclusive operation is pending: an operation called now may take its
   * places at once, and a write that changes no metadata may skip them.
   */
  get inOrder(): boolean {
    return this.#entering === 0 && this.#exclusives === 0 && this.#firstWrite.done;
  }

  /**
   * Runs `fn` for each L2 table's share of [offset, offset+length), under
   * that table's lock, tables in parallel. With the gate open and the
   * header updated, the places in the locks' queues are taken before this
   * returns.
   */
  perTable(offset: number, length: number, fn: TableStep): Promise<void> {
    if (this.#exclusives === 0 && this.#firstWrite.done) return this.#counted(offset, length, fn);
    return this.#gated(offset, length, fn);
  }

  async #gated(offset: number, length: number, fn: TableStep): Promise<void> {
    this.hold();
    let counted = false;
    try {
      await this.#gate;
      this.#inflight++;
      counted = true;
      await this.#firstWrite.wait();
    } catch (e) {
      this.unhold();
      if (counted) this.#done();
      throw e;
    }
    this.unhold();
    try {
      await this.#enqueue(offset, length, fn);
    } finally {
      this.#done();
    }
  }

  async #counted(offset: number, length: number, fn: TableStep): Promise<void> {
    this.#inflight++;
    try {
      await this.#enqueue(offset, length, fn);
    } finally {
      this.#done();
    }
  }

  #done(): void {
    if (--this.#inflight === 0) for (const wake of this.#idle.splice(0)) wake();
  }

  /** perTable without the gate (for use inside {@link exclusive}). */
  async perTableInner(offset: number, length: number, fn: TableStep): Promise<void> {
    await this.#firstWrite.wait();
    await this.#enqueue(offset, length, fn);
  }

  /**
   * Queues `fn` on each table's lock now. A step may return a {@link TableTail}: the lock is released
   * when the step returns, and the tail is awaited after.
   */
  #enqueue(offset: number, length: number, fn: TableStep): Promise<void> {
    const cov = this.#coverage;
    const first = Math.floor(offset / cov);
    // One table (the usual case): no need to gather outcomes.
    if (offset + length <= (first + 1) * cov) return this.tables.run(first, () => fn(first, offset, offset + length)).then((tail) => tail?.after);
    const jobs: Promise<void>[] = [];
    for (let pos = offset; pos < offset + length;) {
      const l1Index = Math.floor(pos / cov);
      const end = Math.min(offset + length, (l1Index + 1) * cov);
      const start = pos;
      jobs.push(this.tables.run(l1Index, () => fn(l1Index, start, end)).then((tail) => tail?.after));
      pos = end;
    }
    return Promise.allSettled(jobs).then((results) => {
      for (const r of results) if (r.status === 'rejected') throw r.reason;
    });
  }
}
