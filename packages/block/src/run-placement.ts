/**
 * Run placement: the guest I/O of a write-once image writer (a
 * FreshImageWriter) whose guest bytes sit at host positions the writer
 * hands out itself (qcow2 clusters, VHD blocks). The writer owns its map
 * and walks it (a PieceWalk); this module turns the walk into writes,
 * zero writes, reads and placed runs, and keeps the writes in flight so
 * finish() can wait for them and fail with the first error.
 */
import type { Extent } from './disk.js';
import { checkDiskRange } from './disk-util.js';
import { diskClosedError } from './errors.js';
import type { Storage } from './storage.js';

/**
 * Calls `each` with the (guest offset, host position, length) of every
 * allocated, host-contiguous piece of guest `[offset, offset + length)`,
 * allocating what is not yet when `allocate` (unallocated parts are
 * skipped otherwise).
 */
export type PieceWalk = (offset: number, length: number, allocate: boolean, each: (guest: number, host: number, length: number) => void) => void;

/** Largest zero write: zeroing a whole allocation unit takes no buffer of its size. */
const ZERO_PIECE = 1024 * 1024;

/** The writer PlacedRuns works for: the Disk fields its errors name. */
export interface PlacedRunsOwner {
  readonly format: string;
  /** Guest size: every range must lie inside it. */
  readonly size: number;
  /** The image's storage, where the pieces' host positions lie. */
  readonly storage: Storage;
}

/** A write-once writer's phase: writes and reads while open, reads while finishing, nothing after. */
export type WriterPhase = 'open' | 'finishing' | 'finished' | 'aborted';

/**
 * The Disk I/O and placed runs of a writer that places guest runs in its
 * storage through its PieceWalk, with the range and state checks of every
 * Disk method.
 *
 * @example
 * ```ts
 * const io = new PlacedRuns(writer, (o, n, allocate, each) => map.walk(o, n, allocate, each), () => phase);
 * await io.write(0, data);
 * await io.settle();
 * if (io.failure !== undefined) throw io.failure;
 * ```
 */
export class PlacedRuns {
  readonly #owner: PlacedRunsOwner;
  readonly #storage: Storage;
  readonly #walk: PieceWalk;
  readonly #phase: () => WriterPhase;
  readonly #pending = new Set<Promise<void>>();
  #failure: unknown;

  /** `walk` is the writer's map; `phase` tells what it allows at the moment. */
  constructor(owner: PlacedRunsOwner, walk: PieceWalk, phase: () => WriterPhase) {
    this.#owner = owner;
    this.#storage = owner.storage;
    this.#walk = walk;
    this.#phase = phase;
  }

  /** Throws unless the writer's phase allows `use` and the range lies inside the disk. */
  #check(use: 'write' | 'read', offset: number, length: number): void {
    const o = this.#owner;
    const phase = this.#phase();
    if (phase !== 'open' && (use === 'write' || phase !== 'finishing')) throw diskClosedError(o.format, o.storage.name);
    checkDiskRange(o.format, o.size, offset, length, o.storage.name);
  }

  /** The first write that failed (undefined: none); finish() rethrows it. */
  get failure(): unknown {
    return this.#failure;
  }

  /** Allocates guest `[offset, offset + length)` and answers its (guest offset, host position, length) triples. */
  place(offset: number, length: number): number[] {
    this.#check('write', offset, length);
    const out: number[] = [];
    this.#walk(offset, length, true, (guest, host, n) => out.push(guest, host, n));
    return out;
  }

  /** Writes `data` at guest `offset`, allocating what it covers. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check('write', offset, data.length);
    const writes: Promise<void>[] = [];
    this.#walk(offset, data.length, true, (guest, host, n) => {
      writes.push(this.#track(this.#storage.write(host, data.subarray(guest - offset, guest - offset + n))));
    });
    await Promise.all(writes);
  }

  /** Unallocated parts read as zeros already; allocated ones get zeros written over the range. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check('write', offset, length);
    const writes: Promise<void>[] = [];
    this.#walk(offset, length, false, (_guest, host, n) => {
      for (let k = 0; k < n; k += ZERO_PIECE) writes.push(this.#track(this.#storage.write(host + k, new Uint8Array(Math.min(ZERO_PIECE, n - k)))));
    });
    await Promise.all(writes);
  }

  /** Reads guest `[offset, offset + target.length)` into `target`: zeros where nothing is allocated. */
  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.#check('read', offset, target.length);
    target.fill(0);
    const reads: Promise<number>[] = [];
    this.#walk(offset, target.length, false, (guest, host, n) => {
      reads.push(this.#storage.readInto(host, target.subarray(guest - offset, guest - offset + n)));
    });
    await Promise.all(reads);
  }

  /** Reads guest `[offset, offset + length)` into a new array. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  /** Waits for every write started so far, failed or not (the first failure stays in `failure`). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.#pending]);
  }

  /** Runs `io` and keeps it in the set settle() waits for; a failure is also kept for finish(). */
  async #track(io: Promise<void>): Promise<void> {
    this.#pending.add(io);
    try {
      await io;
    } catch (e) {
      this.#failure ??= e;
      throw e;
    } finally {
      this.#pending.delete(io);
    }
  }
}

/**
 * Extends `cur` by `next` when they join (same kind, and host-contiguous
 * where `next` names a host offset): an extent walk over placed units
 * then yields maximal extents. False when `next` starts a new extent.
 */
export function joinPlacedExtent(cur: Extent | undefined, next: Extent): cur is Extent {
  if (cur === undefined || cur.kind !== next.kind) return false;
  if (next.hostOffset !== undefined && (cur.hostOffset === undefined || cur.hostOffset + cur.length !== next.hostOffset)) return false;
  cur.length += next.length;
  return true;
}
