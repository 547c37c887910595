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
 *   {@link Scheduler.settle} waits for all of them. The L2 entries of new
 *   data wait for a barrier that starts after their data landed
 *   ({@link Scheduler.afterBarrier}): the writes of a copy share one flush
 *   per round instead of each waiting for its own.
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

/** Metadata bytes to write after the next barrier ({@link Scheduler.afterBarrier}). */
export interface BarrierWrite {
  /** Writes with the same key land in the order they were queued (an L2 table's offset). */
  readonly key: number;
  /** Where in the image file. */
  readonly at: number;
  /** The bytes as they were when queued. */
  readonly bytes: Uint8Array;
  /** Memory the write holds until it lands besides its bytes, once per key (the L2 table kept in the cache). */
  readonly keyBytes: number;
  /** Called once the bytes are written, or given up after a failure. */
  readonly landed: () => void;
}

/**
 * Writes wait for a barrier of their own (one that something else needs, a flush) until they hold this many
 * bytes, or their keys this much memory ({@link Scheduler.afterBarrier}).
 */
const WAITING_BYTES = 256 * 1024;
const WAITING_KEY_BYTES = 8 * 1024 * 1024;

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
  /** Writes waiting for the next barrier, in the order queued. */
  #waiting: BarrierWrite[] = [];
  #waitingBytes = 0;
  /** Writes queued and not landed, by key, and the memory their keys hold. */
  readonly #queuedKeys = new Map<number, number>();
  #queuedKeyBytes = 0;
  /** The loop that flushes and writes them, while it runs. */
  #pump: Promise<void> | undefined;
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

  /**
   * Writes `w.bytes` after a barrier that starts after this call: the L2
   * entries of data just written, which must not reach the disk before it
   * (and its refcounts). Nothing needs them on disk before the next flush:
   * they wait for it ({@link settle}), or for a direct write to the same
   * table ({@link barrierWritesLanded}), or until they hold more than a
   * bounded amount of memory, and the caller waits for none of these. A
   * copy of a GiB into an image then pays one barrier instead of one per
   * write. A crash before they land leaves clusters that nothing maps
   * (leaks), as qemu's L2 cache does. The failure of a barrier or a write
   * is reported by the next {@link settle}.
   */
  afterBarrier(w: BarrierWrite): void {
    this.#waiting.push(w);
    this.#waitingBytes += w.bytes.length;
    const n = this.#queuedKeys.get(w.key) ?? 0;
    this.#queuedKeys.set(w.key, n + 1);
    if (n === 0) this.#queuedKeyBytes += w.keyBytes;
    if (this.#waitingBytes >= WAITING_BYTES || this.#queuedKeyBytes >= WAITING_KEY_BYTES) this.#kick();
  }

  /** Starts landing the waiting writes, unless that is under way. */
  #kick(): void {
    if (this.#waiting.length) this.#pump ??= this.#startPump();
  }

  #landed(w: BarrierWrite): void {
    const n = this.#queuedKeys.get(w.key)! - 1;
    if (n === 0) {
      this.#queuedKeys.delete(w.key);
      this.#queuedKeyBytes -= w.keyBytes;
    } else this.#queuedKeys.set(w.key, n);
    w.landed();
  }

  #startPump(): Promise<void> {
    const run = (async () => {
      try {
        while (this.#waiting.length) {
          const round = this.#waiting.splice(0);
          this.#waitingBytes = 0;
          try {
            await this.barrier();
            await this.#writeRound(round);
          } finally {
            for (const w of round) this.#landed(w);
          }
        }
      } finally {
        // After a failure, what was queued meanwhile gets a barrier of its own (the failure is kept for settle).
        this.#pump = this.#waiting.length ? this.#startPump() : undefined;
      }
    })();
    this.defer(run);
    return run;
  }

  /**
   * One round's writes, keys in parallel. Per key in the order queued, or by offset where none overlaps
   * another (the order then makes no difference); writes that meet are joined into one.
   */
  async #writeRound(round: readonly BarrierWrite[]): Promise<void> {
    const byKey = new Map<number, BarrierWrite[]>();
    for (const w of round) {
      const list = byKey.get(w.key);
      if (list) list.push(w);
      else byKey.set(w.key, [w]);
    }
    const storage = this.#storage;
    await Promise.all(
      [...byKey.values()].map(async (queued) => {
        const sorted = [...queued].sort((x, y) => x.at - y.at);
        const disjoint = sorted.every((w, i) => i === 0 || w.at >= sorted[i - 1]!.at + sorted[i - 1]!.bytes.length);
        const list = disjoint ? sorted : queued;
        for (let i = 0; i < list.length;) {
          let j = i + 1;
          let end = list[i]!.at + list[i]!.bytes.length;
          while (j < list.length && list[j]!.at === end) end += list[j++]!.bytes.length;
          const bytes = j === i + 1 ? list[i]!.bytes : new Uint8Array(end - list[i]!.at);
          if (j > i + 1) for (let k = i, pos = 0; k < j; pos += list[k]!.bytes.length, k++) bytes.set(list[k]!.bytes, pos);
          await storage.write(list[i]!.at, bytes);
          i = j;
        }
      }),
    );
  }

  /**
   * Waits until no write queued by {@link afterBarrier} with this key is
   * left: before entries of the same L2 table are written directly, which
   * puts the table's other entries on disk with them, and must not be
   * overtaken by an older queued write of the same entries.
   */
  async barrierWritesLanded(key: number): Promise<void> {
    while (this.#queuedKeys.has(key)) {
      this.#kick();
      await this.#pump?.catch(() => undefined);
    }
  }

  /** Waits for the data writes in flight and every deferred write; reports the first deferred write that failed. */
  async settle(): Promise<void> {
    await this.flights.settled();
    this.#kick();
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
