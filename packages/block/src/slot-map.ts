/**
 * SlotMap: where a bulk writer (a format's FreshImageWriter) has put each
 * guest unit (a qcow2 cluster, a VMDK grain) of the image it fills: host
 * slots handed out behind the empty image in the order the copy reaches
 * them, given back when the copy wrote nothing there, handed out again
 * lowest first, and the gaps closed at the end with the last slots moved
 * in guest order (so a run stays in order in the file).
 */
import type { Storage } from './storage.js';

/**
 * A guest unit -> host slot map with a free list; slots are numbers from
 * `firstSlot` (at least 1) up, slot `firstSlot` at byte `base` of the file
 * and each next one `unitBytes` further.
 */
export class SlotMap {
  /** Units per table (a qcow2 L2 table, a VMDK grain table). */
  readonly perTable: number;
  /** Table index -> the slot of each of its units (0: none). */
  readonly tables = new Map<number, Float64Array>();
  /**
   * Table index -> the units of it that were given a slot, as (first unit
   * in the table, count) pairs in the order they were given (adjacent ones
   * joined): every unit that holds a slot is in one, so a writer encoding a
   * table looks at these instead of every entry (a sparse table is mostly
   * empty). Giving slots back or moving them leaves the pairs as they are.
   */
  readonly used = new Map<number, number[]>();
  /** Slot -> unit + 1 (0: free). */
  #unitIn = new Float64Array(1024);
  #next: number;
  /** Slots given back; #sorted: in descending order, so pop() answers the lowest. */
  #free: number[] = [];
  #sorted = true;

  readonly unitBytes: number;
  readonly #firstSlot: number;
  readonly #base: number;
  /** Slots a run with skipped zeros covered in part: looked at by dropEmptyEdges, when no batch can still write there. */
  readonly #maybeEmpty = new Set<number>();

  constructor(perTable: number, firstSlot: number, unitBytes: number, base: number) {
    this.perTable = perTable;
    this.#next = firstSlot;
    this.#firstSlot = firstSlot;
    this.unitBytes = unitBytes;
    this.#base = base;
  }

  /** The byte offset of `slot` in the file. */
  position(slot: number): number {
    return this.#base + (slot - this.#firstSlot) * this.unitBytes;
  }

  /** The slot whose bytes hold file byte `offset` (which may lie past the slots handed out). */
  #slotAt(offset: number): number {
    return Math.floor((offset - this.#base) / this.unitBytes) + this.#firstSlot;
  }

  /**
   * After a copy into placed runs (file position of each run at [k + 1],
   * length at [k + 2]) left zeros unwritten: slots wholly inside one run
   * that hold no data in the file (holes: nothing was written there) are
   * given back; a slot a run covers only in part waits for
   * dropEmptyEdges (another batch in flight may still write its rest).
   */
  async settle(storage: Storage, runs: Float64Array): Promise<void> {
    if (!storage.ranges) return;
    const ub = this.unitBytes;
    for (let k = 0; k + 2 < runs.length; k += 3) {
      const from = runs[k + 1]!;
      const to = from + runs[k + 2]!;
      const first = this.#slotAt(from + ub - 1);
      const end = this.#slotAt(to);
      if ((from - this.#base) % ub) this.#maybeEmpty.add(this.#slotAt(from));
      if ((to - this.#base) % ub) this.#maybeEmpty.add(end);
      if (end <= first) continue;
      const held = (await storage.ranges(this.position(first), (end - first) * ub)).filter((r) => r.data);
      for (let s = first; s < end; s++) {
        const at = this.position(s);
        if (!held.some((r) => r.offset < at + ub && r.offset + r.length > at)) this.release(s);
      }
    }
  }

  /** Gives back the slots runs covered in part (see settle) that hold no data, once every batch is done. */
  async dropEmptyEdges(storage: Storage): Promise<void> {
    if (!storage.ranges || !this.#maybeEmpty.size) return;
    for (const s of [...this.#maybeEmpty].sort((a, b) => a - b)) {
      if (this.unitIn(s) < 0) continue;
      if (!(await storage.ranges(this.position(s), this.unitBytes)).some((r) => r.data)) this.release(s);
    }
    this.#maybeEmpty.clear();
  }

  /** closeGaps, with the bytes of each move copied in `storage`; true when anything changed (moves, or slots dropped at the end). */
  async moveGaps(storage: Storage): Promise<boolean> {
    const before = this.#next;
    const moves = this.closeGaps();
    const bytes = new Uint8Array(moves.length ? this.unitBytes : 0);
    for (const [from, to] of moves) {
      // Past the file's end (a last unit written only in part) reads as zeros.
      bytes.fill(0, await storage.readInto(this.position(from), bytes));
      await storage.write(this.position(to), bytes);
    }
    return moves.length > 0 || this.#next !== before;
  }

  /** The slot after the last one handed out. */
  get next(): number {
    return this.#next;
  }

  /** The slot of `unit`, handing one out (a given-back one first, lowest first) when `allocate`; 0: none. */
  slot(unit: number, allocate: boolean): number {
    const t = Math.floor(unit / this.perTable);
    const table = allocate ? this.#table(t) : this.tables.get(t);
    if (!table) return 0;
    const i = unit - t * this.perTable;
    if (table[i] === 0 && allocate) {
      if (!this.#sorted) {
        this.#free.sort((a, b) => b - a);
        this.#sorted = true;
      }
      const slot = this.#free.pop() ?? this.#next++;
      this.#holdSlots(slot + 1);
      this.#unitIn[slot] = unit + 1;
      table[i] = slot;
      this.#noteUsed(t, i, 1);
    }
    return table[i]!;
  }

  /** Table `t`, made empty where there is none yet. */
  #table(t: number): Float64Array {
    let table = this.tables.get(t);
    if (!table) {
      table = new Float64Array(this.perTable);
      this.tables.set(t, table);
    }
    return table;
  }

  /** #unitIn with room for slots below `end`. */
  #holdSlots(end: number): void {
    if (end <= this.#unitIn.length) return;
    const grown = new Float64Array(Math.max(end, this.#unitIn.length * 2));
    grown.set(this.#unitIn);
    this.#unitIn = grown;
  }

  /**
   * Hands out the next slots, in order, to the units from `unit` on (up to
   * `endUnit`, within one table) that have none, and answers how many
   * (0 when `unit` has one); they end at `next`. What slot() does for each
   * of them when no slot was given back, without a call per unit: a new
   * image's copy places some 16,000 clusters per GiB.
   */
  #freshRun(unit: number, endUnit: number): number {
    const t = Math.floor(unit / this.perTable);
    const base = t * this.perTable;
    const first = unit - base;
    if (this.tables.get(t)?.[first]) return 0;
    const table = this.#table(t);
    const limit = Math.min(this.perTable, endUnit - base);
    let stop = first + 1;
    while (stop < limit && table[stop] === 0) stop++;
    const count = stop - first;
    const slot = this.#next;
    this.#next += count;
    this.#holdSlots(this.#next);
    for (let k = 0; k < count; k++) {
      table[first + k] = slot + k;
      this.#unitIn[slot + k] = unit + k + 1;
    }
    this.#noteUsed(t, first, count);
    return count;
  }

  /** Units [first, first + count) of table `t` were given slots (see `used`). */
  #noteUsed(t: number, first: number, count: number): void {
    let pairs = this.used.get(t);
    if (!pairs) {
      pairs = [];
      this.used.set(t, pairs);
    }
    const n = pairs.length;
    if (n && pairs[n - 2]! + pairs[n - 1]! === first) pairs[n - 1]! += count;
    else pairs.push(first, count);
  }

  /** The unit slot `slot` holds, or -1. */
  unitIn(slot: number): number {
    return slot < this.#unitIn.length ? this.#unitIn[slot]! - 1 : -1;
  }

  /** Frees `slot`: its unit reads as zeros again. */
  release(slot: number): void {
    const unit = this.unitIn(slot);
    if (unit < 0) return;
    const t = Math.floor(unit / this.perTable);
    this.tables.get(t)![unit - t * this.perTable] = 0;
    this.#unitIn[slot] = 0;
    this.#free.push(slot);
    this.#sorted = false;
  }

  /**
   * Calls `each(guest, host, n)` once per host-contiguous piece of the
   * units of guest `[offset, offset + length)` that have a slot (all of
   * them given one first when `allocate`).
   */
  pieces(offset: number, length: number, allocate: boolean, each: (guest: number, host: number, n: number) => void): void {
    const unitBytes = this.unitBytes;
    const end = offset + length;
    let runGuest = offset;
    let runHost = -1;
    let runLength = 0;
    for (let pos = offset; pos < end;) {
      const u = Math.floor(pos / unitBytes);
      // Units that have no slot yet, while none was given back, take the next slots in one go (see #freshRun); else one unit at a time.
      const fresh = allocate && this.#free.length === 0 ? this.#freshRun(u, Math.ceil(end / unitBytes)) : 0;
      const slot = fresh > 0 ? this.#next - fresh : this.slot(u, allocate);
      const n = Math.min(end, (u + Math.max(fresh, 1)) * unitBytes) - pos;
      if (slot === 0) {
        if (runLength) each(runGuest, runHost, runLength);
        runLength = 0;
      } else {
        const at = this.position(slot) + (pos - u * unitBytes);
        if (runLength && runHost + runLength === at) runLength += n;
        else {
          if (runLength) each(runGuest, runHost, runLength);
          runGuest = pos;
          runHost = at;
          runLength = n;
        }
      }
      pos += n;
    }
    if (runLength) each(runGuest, runHost, runLength);
  }

  /**
   * Closes the gaps the given-back slots leave: the last slots move into
   * them, in guest order (last-into-first put a run in reverse), and those
   * at the end are dropped. Updates the map and `next`, and answers the
   * (from, to) moves whose bytes the caller copies; every `to` lies below
   * every `from`, so they may be copied in any order.
   */
  closeGaps(): Array<[number, number]> {
    if (!this.#free.length) return [];
    const gaps = this.#free.sort((a, b) => a - b);
    this.#free = [];
    this.#sorted = true;
    let lo = 0;
    let hi = gaps.length;
    const moved: number[] = [];
    while (lo < hi) {
      const last = --this.#next;
      if (gaps[hi - 1] === last) {
        hi--;
        continue;
      }
      lo++;
      moved.push(last);
    }
    moved.sort((a, b) => this.#unitIn[a]! - this.#unitIn[b]!);
    const moves: Array<[number, number]> = [];
    for (let k = 0; k < moved.length; k++) {
      const from = moved[k]!;
      const to = gaps[k]!;
      const unit = this.#unitIn[from]! - 1;
      const t = Math.floor(unit / this.perTable);
      this.tables.get(t)![unit - t * this.perTable] = to;
      this.#unitIn[to] = unit + 1;
      this.#unitIn[from] = 0;
      moves.push([from, to]);
    }
    return moves;
  }
}
