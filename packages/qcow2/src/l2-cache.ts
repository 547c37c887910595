/**
 * A bounded cache of L2 tables keyed by host offset: least recently used
 * tables are evicted past the capacity, and concurrent loads of one table
 * share one read.
 */

/** Default cache size: enough tables to map 100 GiB with 64 KiB clusters (200 tables of 64 KiB), rounded up. */
export const DEFAULT_L2_CACHE_BYTES = 16 * 1024 * 1024;

/** The L2 tables of an open image kept in memory, least recently used out, with tables pinned while a deferred write holds them. */
export class L2Cache {
  readonly capacity: number;
  #tables = new Map<number, Uint8Array>();
  /** Tables with a write in flight: never reloaded from the file meanwhile, evicted or not. */
  #pins = new Map<number, { table: Uint8Array; count: number }>();
  #loading = new Map<number, Promise<Uint8Array>>();
  #hits = 0;
  #misses = 0;

  /** `capacity` is a number of tables (at least 1). */
  constructor(capacity: number) {
    this.capacity = Math.max(1, Math.floor(capacity));
  }

  /** Tables held now. */
  get size(): number {
    return this.#tables.size;
  }

  get stats(): { hits: number; misses: number } {
    return { hits: this.#hits, misses: this.#misses };
  }

  /** The table at `offset`, loaded with `load` on a miss. */
  get(offset: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> | Uint8Array {
    const hit = this.#tables.get(offset);
    if (hit) {
      this.#hits++;
      // Refresh its place in the LRU order.
      this.#tables.delete(offset);
      this.#tables.set(offset, hit);
      return hit;
    }
    const pinned = this.#pins.get(offset);
    if (pinned) {
      this.#hits++;
      this.put(offset, pinned.table);
      return pinned.table;
    }
    const pending = this.#loading.get(offset);
    if (pending) return pending;
    this.#misses++;
    const p = load().then(
      (table) => {
        this.#loading.delete(offset);
        this.put(offset, table);
        return table;
      },
      (e: unknown) => {
        this.#loading.delete(offset);
        throw e;
      },
    );
    this.#loading.set(offset, p);
    return p;
  }

  /** Inserts or replaces a table (writers keep the cache in step with the file). */
  put(offset: number, table: Uint8Array): void {
    this.#tables.delete(offset);
    this.#tables.set(offset, table);
    while (this.#tables.size > this.capacity) {
      const oldest = this.#tables.keys().next().value as number;
      this.#tables.delete(oldest);
    }
  }

  /**
   * Holds `table` for `offset` until as many {@link unpin} calls: while
   * its write is in flight the file may still hold the older table, so a
   * miss must not read it from there.
   */
  pin(offset: number, table: Uint8Array): void {
    const p = this.#pins.get(offset);
    if (p) {
      p.table = table;
      p.count++;
    } else {
      this.#pins.set(offset, { table, count: 1 });
    }
  }

  unpin(offset: number): void {
    const p = this.#pins.get(offset);
    if (p && --p.count === 0) this.#pins.delete(offset);
  }

  /** The table if cached, without loading. */
  peek(offset: number): Uint8Array | undefined {
    return this.#tables.get(offset) ?? this.#pins.get(offset)?.table;
  }

  delete(offset: number): void {
    this.#tables.delete(offset);
  }

  clear(): void {
    this.#tables.clear();
  }
}
