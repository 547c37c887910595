/**
 * The holes of the files below an image's formats, as qemu-img asks for
 * them (map, measure): which files it asks (a fixed VHD, a qcow2 that looks
 * preallocated with metadata or its external data file, a VMDK's flat
 * extents) and the extents of a disk with the data in those holes split off.
 */
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { detectMetadataPreallocation } from '@img/qcow2';
import { FileStorage } from '@img/block/node';
import { diskExtentBatches, type Disk, type Extent, type Storage, type StorageRange } from '@img/block';
import { backingOf } from './commands/shared.js';

/**
 * How much of a file one question about its holes covers at least. Extents
 * come in guest order and their bytes mostly climb through the file, so one
 * answer serves the extents that follow: asking once per extent cost two
 * lseeks and a promise each, 90 s for the 20 M extents of a 1.2 TiB qcow2
 * whose every other cluster is allocated, where qemu-img map took 19 s.
 */
const HOLE_WINDOW = 64 * 1024 * 1024;

/** Pieces gathered before they are handed over, within one array of the disk's extents. */
const PIECES_OUT = 4096;

/** The last answer a storage gave about its holes: `ranges` covers `[start, end)` (or stops early at the end of the file). */
interface HoleWindow {
  start: number;
  end: number;
  ranges: StorageRange[];
  /** The range the last extent began in: the next one, further up the file, begins there or after it. */
  at: number;
}

/**
 * An extent as qemu-img map sees it: `inHole` marks data the format
 * stores in a hole of its file (a cluster allocated but written only in
 * part), which qemu-img map reports as data that reads as zeros.
 */
export type MapExtent = Extent & { inHole?: boolean };

/**
 * The extents of `disk` with the data that lies in holes of its layer's
 * file split off and marked, as qemu-img map asks the file below the
 * format (file system holes, by SEEK_DATA/SEEK_HOLE where the storage can
 * tell), and neighbours that then look alike merged again, as qemu-img
 * map merges them. With `holesAsZeros`, that data comes as `zero` extents
 * (without host offsets), as qemu-img measure counts it.
 */
export async function* mapExtents(disk: Disk, storages: ReadonlyMap<string, Storage>, range: { offset: number; length: number }, options: { holesAsZeros?: boolean } = {}): AsyncGenerator<MapExtent> {
  for await (const batch of mapExtentBatches(disk, storages, range, options)) yield* batch;
}

/**
 * {@link mapExtents} in arrays, as the disk's extentBatches hands them over:
 * for a caller that goes through millions of extents (img map), one await
 * per array instead of one per extent through two generators.
 */
export async function* mapExtentBatches(disk: Disk, storages: ReadonlyMap<string, Storage>, range: { offset: number; length: number }, options: { holesAsZeros?: boolean } = {}): AsyncGenerator<MapExtent[]> {
  const asZeros = options.holesAsZeros ?? false;
  let pending: MapExtent | undefined;
  const windows = new Map<Storage, HoleWindow>();
  // Whether `pending` is a copy made here (grown in place), not an extent as it came.
  let owned = false;
  const files = new FileNames();
  // One piece: merged into `pending`, or `pending` returned to be handed over (and the piece pending in its place).
  const take = (given: MapExtent): MapExtent | undefined => {
    const piece: MapExtent = asZeros && given.inHole ? { offset: given.offset, length: given.length, kind: 'zero', ...(given.depth !== undefined ? { depth: given.depth } : {}) } : given;
    if (pending && alike(pending, piece)) {
      if (owned) pending.length += piece.length;
      else pending = { ...pending, length: pending.length + piece.length };
      owned = true;
      return undefined;
    }
    const out = pending;
    pending = piece;
    owned = piece !== given;
    return out;
  };
  for await (const batch of diskExtentBatches(disk, { ...range, hostOffsets: true })) {
    let out: MapExtent[] = [];
    for (const e of batch) {
      const storage = e.kind === 'data' && e.hostOffset !== undefined && e.file !== undefined ? storages.get(files.resolve(e.file)) : undefined;
      if (!storage?.ranges) {
        const done = take(e);
        if (done) out.push(done);
        continue;
      }
      // A window of the file at a time: a run of gigabytes over millions of holes (a sparse copy of an image) is not
      // asked about, nor split, all at once. The pieces of neighbouring slices join again in `take`.
      for (let at = 0; at < e.length; at += HOLE_WINDOW) {
        const host = e.hostOffset! + at;
        const part: MapExtent = at === 0 && e.length <= HOLE_WINDOW ? e : { ...e, offset: e.offset + at, length: Math.min(HOLE_WINDOW, e.length - at), hostOffset: host };
        // Awaited only when a new answer is asked for: a promise per extent was much of a map's time.
        const w = holeWindow(storage as HoleStorage, host, host + part.length, windows);
        const pieces = splitAtFileHoles(part, w instanceof Promise ? await w : w);
        if (!Array.isArray(pieces)) {
          const done = take(pieces);
          if (done) out.push(done);
          continue;
        }
        for (const piece of pieces) {
          const done = take(piece);
          if (done) out.push(done);
        }
        if (out.length >= PIECES_OUT) {
          yield out;
          out = [];
        }
      }
    }
    if (out.length > 0) yield out;
  }
  if (pending) yield [pending];
}

/** Whether `b` continues `a` as one extent of qemu-img map's output: the same kind, depth, file and hole state, adjacent in the guest and in the file. */
function alike(a: MapExtent, b: MapExtent): boolean {
  return a.kind === b.kind && (a.depth ?? 0) === (b.depth ?? 0) && a.inHole === b.inHole && a.file === b.file && a.offset + a.length === b.offset && (a.hostOffset === undefined ? b.hostOffset === undefined : b.hostOffset === a.hostOffset + a.length);
}

/** Extents' file names resolved, the last one remembered (an image's extents name one or two files). */
class FileNames {
  #name: string | undefined;
  #resolved = '';

  resolve(name: string): string {
    if (name !== this.#name) {
      this.#name = name;
      this.#resolved = resolve(name);
    }
    return this.#resolved;
  }
}

/** The files of a VMDK layer's flat extents (FLAT, VMFS: raw files), as its info lists them. */
async function flatExtentFiles(layer: Disk): Promise<string[]> {
  const extents = (await layer.info?.())?.formatSpecific?.extents;
  if (!Array.isArray(extents)) return [];
  return (extents as Array<{ format?: unknown; filename?: unknown }>).filter((e) => (e.format === 'FLAT' || e.format === 'VMFS') && typeof e.filename === 'string').map((e) => resolve(e.filename as string));
}

/**
 * Whether qemu-img map asks the file below this layer where its holes are:
 * it does for a fixed VHD (read as raw), and for the data clusters of a
 * qcow2 image that looks preallocated with metadata (more clusters counted
 * in its refcounts than its file occupies); not for a dynamic VHD's blocks
 * or a VMDK's grains.
 */
async function asksFileBelow(layer: Disk): Promise<boolean> {
  if (layer.format === 'qcow2') {
    const allocated = await stat(layer.storage.name).then(
      (st) => st.blocks * 512,
      () => undefined,
    );
    return allocated !== undefined && (await detectMetadataPreallocation(layer.storage, allocated));
  }
  if (layer.format !== 'vhd') return false;
  return (await layer.info?.())?.formatSpecific?.type === 'fixed';
}

/** A storage that can tell its holes. */
type HoleStorage = Storage & { ranges: NonNullable<Storage['ranges']> };

/** The window of `storage`'s last answer when it covers `[start, end)`, else a new answer that starts at `start` and reaches at least a window further. */
function holeWindow(storage: HoleStorage, start: number, end: number, windows: Map<Storage, HoleWindow>): HoleWindow | Promise<HoleWindow> {
  const w = windows.get(storage);
  if (w && start >= w.start && end <= w.end) return w;
  const length = Math.max(end - start, HOLE_WINDOW);
  return storage.ranges(start, length).then((ranges) => {
    const fresh = { start, end: start + length, ranges, at: 0 };
    windows.set(storage, fresh);
    return fresh;
  });
}

/** The index of the first range of `w` that ends after `start` (the ranges' count if none does). */
function firstRangeAfter(w: HoleWindow, start: number): number {
  const ranges = w.ranges;
  // Extents mostly climb through the file: the range the last one began in, or the next, is usually the one.
  for (let i = w.at; i < ranges.length && i < w.at + 2; i++) {
    if (ranges[i]!.offset + ranges[i]!.length > start) {
      if (i === 0 || ranges[i - 1]!.offset + ranges[i - 1]!.length <= start) return (w.at = i);
      break;
    }
  }
  // Otherwise by binary search.
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ranges[mid]!.offset + ranges[mid]!.length <= start) lo = mid + 1;
    else hi = mid;
  }
  w.at = Math.min(lo, Math.max(0, ranges.length - 1));
  return lo;
}

/** The ranges of `w` that meet `[start, end)`. */
function rangesIn(w: HoleWindow, start: number, end: number): StorageRange[] {
  const ranges = w.ranges;
  const lo = firstRangeAfter(w, start);
  let last = lo;
  while (last < ranges.length && ranges[last]!.offset < end) last++;
  return ranges.slice(lo, last);
}

/** `e` (data at an offset of a file, whose holes `w` covers) cut where its bytes lie in a hole of the file (or past its end): those pieces are marked `inHole`. One piece comes back as itself, not in an array. */
function splitAtFileHoles(e: Extent, w: HoleWindow): MapExtent | MapExtent[] {
  const start = e.hostOffset!;
  const end = start + e.length;
  // Most extents lie in one range of the file, all data or all hole: answered without a list.
  const first = w.ranges[firstRangeAfter(w, start)];
  if (first && first.offset <= start && first.offset + first.length >= end) return first.data ? e : { ...e, inHole: true };
  const ranges = rangesIn(w, start, end);
  const pieces: MapExtent[] = [];
  let pos = start;
  const push = (from: number, to: number, inHole: boolean) => {
    if (to <= from) return;
    const last = pieces.at(-1);
    if (last && (last.inHole === true) === inHole) last.length += to - from;
    else pieces.push({ ...e, offset: e.offset + from - start, length: to - from, hostOffset: from, ...(inHole ? { inHole: true } : {}) });
  };
  for (const r of ranges) {
    const from = Math.max(pos, r.offset);
    const to = Math.min(end, r.offset + r.length);
    if (from > pos) push(pos, from, false);
    push(from, to, !r.data);
    pos = Math.max(pos, to);
  }
  // What the answer does not cover lies past the end of the file: it reads as zeros.
  push(pos, end, true);
  return pieces;
}

/**
 * The files of `disk`'s chain that qemu-img asks for holes, keyed by
 * resolved path (what an extent's `file` resolves to); `close` closes the
 * ones opened here (data files, flat extents).
 */
export async function fileHoleStorages(disk: Disk): Promise<{ storages: Map<string, Storage>; close: () => Promise<void> }> {
  const storages = new Map<string, Storage>();
  const opened: Storage[] = [];
  const close = async () => {
    for (const st of opened.splice(0)) await st.close();
  };
  try {
    for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer)) {
      if (await asksFileBelow(layer)) {
        // The file below a qcow2's data clusters is its external data file when it has one: that one is asked.
        const dataFile = layer.format === 'qcow2' ? (await layer.info?.())?.formatSpecific?.['data-file'] : undefined;
        if (typeof dataFile === 'string') {
          const file = resolve(dirname(resolve(layer.storage.name)), dataFile);
          const st = await FileStorage.open(file, { readOnly: true, forceShare: true });
          opened.push(st);
          storages.set(file, st);
        } else storages.set(resolve(layer.storage.name), layer.storage);
      }
      // A VMDK's flat extents (monolithicFlat, twoGbMaxExtentFlat, vmfs) are raw files: qemu-img map asks them for holes.
      if (layer.format === 'vmdk') {
        // Sparse extents keep grains: not asked, as qemu-img does not ask them.
        for (const file of await flatExtentFiles(layer)) {
          // A file named by several extent lines (or layers) is opened once: a descriptor may repeat one 32,000 times.
          if (storages.has(file)) continue;
          const st = await FileStorage.open(file, { readOnly: true, forceShare: true });
          opened.push(st);
          storages.set(file, st);
        }
      }
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { storages, close };
}

/**
 * `disk` as qemu-img measure sees its source: data that lies in a hole of
 * the file below (see fileHoleStorages) reads as zeros and counts as such.
 * Every other member is the disk's own.
 */
export function withFileHoles(disk: Disk, storages: ReadonlyMap<string, Storage>): Disk {
  if (storages.size === 0) return disk;
  const extents = (options?: { offset?: number; length?: number }): AsyncGenerator<Extent> => {
    const offset = options?.offset ?? 0;
    return mapExtents(disk, storages, { offset, length: options?.length ?? disk.size - offset }, { holesAsZeros: true });
  };
  return new Proxy(disk, {
    get(target, key) {
      if (key === 'extents') return extents;
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}
