/**
 * SlotMap: where a bulk writer (a format's FreshImageWriter) has put each
 * guest unit (a qcow2 cluster, a VMDK grain) of the image it fills: host
 * slots handed out behind the empty image in the order the copy reaches
 * them, given back when the copy wrote nothing there, handed out again
 * lowest first, and the gaps closed at the end with the last slots moved
 * in guest order (so a run stays in order in the file).
 */

/** A guest unit -> host slot map with a free list; slots are numbers from `firstSlot` (at least 1) up. */
export class SlotMap {
  /** Units per table (a qcow2 L2 table, a VMDK grain table). */
  readonly perTable: number;
  /** Table index -> the slot of each of its units (0: none). */
  readonly tables = new Map<number, Float64Array>();
  /** Slot -> unit + 1 (0: free). */
  #unitIn = new Float64Array(1024);
  #next: number;
  /** Slots given back; #sorted: in descending order, so pop() answers the lowest. */
  #free: number[] = [];
  #sorted = true;

  constructor(perTable: number, firstSlot: number) {
    this.perTable = perTable;
    this.#next = firstSlot;
  }

  /** The slot after the last one handed out. */
  get next(): number {
    return this.#next;
  }

  /** The slot of `unit`, handing one out (a given-back one first, lowest first) when `allocate`; 0: none. */
  slot(unit: number, allocate: boolean): number {
    const t = Math.floor(unit / this.perTable);
    let table = this.tables.get(t);
    if (!table) {
      if (!allocate) return 0;
      table = new Float64Array(this.perTable);
      this.tables.set(t, table);
    }
    const i = unit - t * this.perTable;
    if (table[i] === 0 && allocate) {
      if (!this.#sorted) {
        this.#free.sort((a, b) => b - a);
        this.#sorted = true;
      }
      const slot = this.#free.pop() ?? this.#next++;
      if (slot >= this.#unitIn.length) {
        const grown = new Float64Array(Math.max(slot + 1, this.#unitIn.length * 2));
        grown.set(this.#unitIn);
        this.#unitIn = grown;
      }
      this.#unitIn[slot] = unit + 1;
      table[i] = slot;
    }
    return table[i]!;
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
   * them given one first when `allocate`); `position` is a slot's byte
   * offset in the file.
   */
  pieces(offset: number, length: number, unitBytes: number, allocate: boolean, position: (slot: number) => number, each: (guest: number, host: number, n: number) => void): void {
    const end = offset + length;
    let runGuest = offset;
    let runHost = -1;
    let runLength = 0;
    for (let pos = offset; pos < end;) {
      const u = Math.floor(pos / unitBytes);
      const n = Math.min(end - pos, (u + 1) * unitBytes - pos);
      const slot = this.slot(u, allocate);
      if (slot === 0) {
        if (runLength) each(runGuest, runHost, runLength);
        runLength = 0;
      } else {
        const at = position(slot) + (pos - u * unitBytes);
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
