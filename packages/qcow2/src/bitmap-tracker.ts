/**
 * Keeping persistent dirty bitmaps (spec: "Bitmaps", "Dirty tracking
 * bitmaps") up to date while writing: enabled ('auto') bitmaps are marked
 * in_use before the first change, the changed ranges are collected in
 * memory, and flush() sets their bits in the bitmap data clusters and
 * clears in_use again. A crash in between leaves in_use set, which is what
 * the spec asks for (the bitmap is then known to be inconsistent).
 */
import { Mutex, readU16Be, readU32Be, writeU32Be, writeU64Be } from '@img/block';
import type { Storage } from '@img/block';
import type { BitmapsExtension } from './extensions.js';
import { entryOffset } from './mapping.js';
import { bitmapCoveredLength } from './bitmaps.js';

const ENTRY_FIXED = 24;
const FLAG_IN_USE = 1;
const FLAG_AUTO = 2;
const FLAG_EXTRA_COMPATIBLE = 4;
const TYPE_DIRTY_TRACKING = 1;

/** One bitmap this tracker keeps up to date. */
interface Tracked {
  /** Offset of its entry in the directory. */
  entryAt: number;
  tableOffset: number;
  tableSize: number;
  granularity: number;
  name: string;
}

/** What the tracker needs from the writer. */
export interface TrackerHooks {
  storage: Storage;
  clusterSize: number;
  /** Allocates `count` clusters (refcount 1) and grows the file over them. */
  allocate(count: number): Promise<number>;
  /** Runs `write` into clusters just allocated; gives them back if it fails (Allocator.writeFresh). */
  writeFresh(offset: number, bytes: number, write: () => Promise<void>): Promise<void>;
  flush(): Promise<void>;
}

/** Keeps the enabled persistent dirty bitmaps of an image up to date as guest ranges change (spec: "Bitmaps extension"). */
export class BitmapTracker {
  #hooks: TrackerHooks;
  #dir: Uint8Array;
  #dirOffset: number;
  #tracked: Tracked[];
  #ranges: Array<[number, number]> = [];
  #inUse = false;
  #lock = new Mutex();

  private constructor(hooks: TrackerHooks, dir: Uint8Array, dirOffset: number, tracked: Tracked[]) {
    this.#hooks = hooks;
    this.#dir = dir;
    this.#dirOffset = dirOffset;
    this.#tracked = tracked;
  }

  /** Reads the directory; undefined when no bitmap is enabled (nothing to track). */
  static async load(hooks: TrackerHooks, ext: BitmapsExtension, fileSize: number, diskSize: number): Promise<BitmapTracker | undefined> {
    const { bitmapDirectoryOffset: offset, bitmapDirectorySize: size, nbBitmaps } = ext;
    if (offset + size > fileSize || size > 64 * 1024 * 1024) return undefined;
    const dir = await hooks.storage.read(offset, size);
    const tracked: Tracked[] = [];
    for (let at = 0, i = 0; i < nbBitmaps && at + ENTRY_FIXED <= dir.length; i++) {
      const tableOffset = entryOffset(readU32Be(dir, at), readU32Be(dir, at + 4));
      const tableSize = readU32Be(dir, at + 8);
      const flags = readU32Be(dir, at + 12);
      const type = dir[at + 16]!;
      const granularityBits = dir[at + 17]!;
      const nameSize = readU16Be(dir, at + 18);
      const extra = readU32Be(dir, at + 20);
      const usable = (flags & FLAG_AUTO) !== 0 && (flags & FLAG_IN_USE) === 0 && type === TYPE_DIRTY_TRACKING && (extra === 0 || (flags & FLAG_EXTRA_COMPATIBLE) !== 0);
      // The table must have exactly the entries the disk size needs (which also bounds what is read).
      const expected = Math.ceil(Math.ceil(bitmapCoveredLength(diskSize) / 2 ** granularityBits) / (hooks.clusterSize * 8));
      if (usable && granularityBits >= 9 && granularityBits <= 31 && tableSize === expected && tableOffset + tableSize * 8 <= fileSize) {
        const name = new TextDecoder().decode(dir.subarray(at + ENTRY_FIXED + extra, at + ENTRY_FIXED + extra + nameSize));
        tracked.push({ entryAt: at, tableOffset, tableSize, granularity: 2 ** granularityBits, name });
      }
      at = Math.ceil((at + ENTRY_FIXED + extra + nameSize) / 8) * 8;
    }
    return tracked.length ? new BitmapTracker(hooks, dir, offset, tracked) : undefined;
  }

  /** Names of the bitmaps kept up to date. */
  get names(): string[] {
    return this.#tracked.map((t) => t.name);
  }

  async #setInUse(on: boolean): Promise<void> {
    for (const t of this.#tracked) {
      const flags = readU32Be(this.#dir, t.entryAt + 12);
      writeU32Be(this.#dir, t.entryAt + 12, on ? flags | FLAG_IN_USE : flags & ~FLAG_IN_USE);
    }
    await this.#hooks.storage.write(this.#dirOffset, this.#dir);
    await this.#hooks.flush();
    this.#inUse = on;
  }

  /** Records a change of guest bytes [offset, offset + length); marks the bitmaps in_use first. */
  async change(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    // Under the lock: a change recorded while a commit runs would otherwise be left out of it after
    // in_use was cleared, and a crash would then go unnoticed.
    await this.#lock.run(async () => {
      if (!this.#inUse) await this.#setInUse(true);
      this.#ranges.push([offset, offset + length]);
      if (this.#ranges.length > 4096) this.#ranges = merge(this.#ranges);
    });
  }

  /** Writes the collected changes into every tracked bitmap and clears in_use (on flush and close). */
  commit(): Promise<void> {
    return this.#lock.run(async () => {
      if (!this.#inUse) return;
      const ranges = merge(this.#ranges);
      this.#ranges = [];
      for (const t of this.#tracked) await this.#apply(t, ranges);
      await this.#hooks.flush();
      await this.#setInUse(false);
    });
  }

  async #apply(t: Tracked, ranges: Array<[number, number]>): Promise<void> {
    const cs = this.#hooks.clusterSize;
    const bitsPerCluster = cs * 8;
    const table = await this.#hooks.storage.read(t.tableOffset, t.tableSize * 8);
    // Bit ranges per bitmap data cluster.
    const perCluster = new Map<number, Array<[number, number]>>();
    for (const [a, b] of ranges) {
      const first = Math.floor(a / t.granularity);
      const last = Math.floor((b - 1) / t.granularity);
      for (let c = Math.floor(first / bitsPerCluster); c <= Math.floor(last / bitsPerCluster) && c < t.tableSize; c++) {
        const lo = Math.max(first, c * bitsPerCluster) - c * bitsPerCluster;
        const hi = Math.min(last, (c + 1) * bitsPerCluster - 1) - c * bitsPerCluster;
        const list = perCluster.get(c) ?? [];
        list.push([lo, hi]);
        perCluster.set(c, list);
      }
    }
    let tableChanged = false;
    for (const [c, bits] of perCluster) {
      const hi = readU32Be(table, c * 8);
      const lo = readU32Be(table, c * 8 + 4);
      let host = entryOffset(hi, lo);
      if (!host && lo & 1) continue; // already all ones
      const data = new Uint8Array(cs);
      if (host) await this.#hooks.storage.readInto(host, data);
      for (const [from, to] of bits) setBits(data, from, to);
      if (host) {
        await this.#hooks.storage.write(host, data);
        continue;
      }
      // A new data cluster: written, then named by the table (a failed write gives it back: no leak, no entry).
      const fresh = await this.#hooks.allocate(1);
      await this.#hooks.writeFresh(fresh, cs, () => this.#hooks.storage.write(fresh, data));
      writeU64Be(table, c * 8, fresh);
      tableChanged = true;
    }
    if (tableChanged) {
      // The data clusters are written before the table points at them.
      await this.#hooks.flush();
      await this.#hooks.storage.write(t.tableOffset, table);
    }
  }
}

/** Sets bits [from, to] (inclusive) of a little-endian bitmap. */
function setBits(data: Uint8Array, from: number, to: number): void {
  for (let bit = from; bit <= to;) {
    if (bit % 8 === 0 && bit + 7 <= to) {
      const end = Math.floor((to + 1) / 8);
      data.fill(0xff, bit / 8, end);
      bit = end * 8;
    } else {
      data[bit >> 3] = data[bit >> 3]! | (1 << (bit & 7));
      bit++;
    }
  }
}

function merge(ranges: Array<[number, number]>): Array<[number, number]> {
  const sorted = [...ranges].sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}
