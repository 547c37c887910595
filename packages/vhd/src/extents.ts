/**
 * The allocation map of a VHD from its BAT and sector bitmaps (never its
 * data): dynamic disks say `zero` for what they do not hold; differencing
 * disks ask their parent (depth + 1), or say `hole` with `topOnly` or
 * without a parent.
 */
import { checkDiskRange, extentRange, isAllZero, mergeExtents, parentExtents, startedAhead, type Extent, type ExtentOptions } from '@img/block';
import { BAT_UNUSED, nextAllocated, signedEntries } from './bat.js';
import { bitRuns } from './bitmap.js';
import { HostRanges } from './host-ranges.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { FORMAT, type VhdState } from './state.js';

/** Where one sector of the disk comes from. */
export interface VhdSectorLocation {
  /** 0 = this image, 1 = its parent, ... */
  depth: number;
  /** `data`: stored at hostOffset in file; `zero`: reads as zeros; `hole`: in no layer. */
  kind: 'data' | 'zero' | 'hole';
  file?: string;
  hostOffset?: number;
  /** Block index in the layer that holds it (dynamic and differencing). */
  block?: number;
}

/** The merged extents of the requested range (see VhdDisk.extents). */
export function vhdExtents(core: VhdImage, options?: ExtentOptions): AsyncIterable<Extent> {
  core.assertOpen();
  const { start, end } = extentRange(options, core.size);
  return mergeExtents(extentRuns(core, start, end, options ?? {}));
}

/** Which layer and file offset hold the sector containing `offset`. */
export async function vhdSectorLocation(core: VhdImage, offset: number): Promise<VhdSectorLocation> {
  core.assertOpen();
  checkDiskRange(FORMAT, core.size, offset, 1);
  const s = core.state;
  const sector = Math.floor(offset / VHD_SECTOR) * VHD_SECTOR;
  for await (const e of vhdExtents(core, { offset: sector, length: Math.min(VHD_SECTOR, core.size - sector), hostOffsets: true })) {
    const loc: VhdSectorLocation = { depth: e.depth ?? 0, kind: e.kind };
    if (e.file !== undefined) loc.file = e.file;
    if (e.hostOffset !== undefined) loc.hostOffset = e.hostOffset + (offset - sector);
    if (s.type !== 'fixed' && e.kind === 'data') loc.block = Math.floor(offset / s.blockSize);
    return loc;
  }
  throw new RangeError(`vhd: no extent covers ${offset}`);
}

/** Raw (unmerged) extents of [start, end). */
async function* extentRuns(core: VhdImage, start: number, end: number, options: ExtentOptions): AsyncGenerator<Extent> {
  const s = core.state;
  if (start >= end) return;
  const host = options.fileHoles ? await holeMap(s) : undefined;
  if (s.type === 'fixed') {
    yield* fileRuns(s, start, end, start, options, host);
    return;
  }
  const bitmaps = new BitmapPrefetch(core, Math.ceil(end / s.blockSize));
  let pos = start;
  while (pos < end) {
    const block = Math.floor(pos / s.blockSize);
    const base = block * s.blockSize;
    const next = Math.min(end, base + s.blockSize);
    const entry = s.bat[block] ?? BAT_UNUSED;
    if (entry === BAT_UNUSED) {
      // A run of unallocated blocks is one question to the layer below (entries past the table are unused too).
      const stop = Math.min(Math.ceil(end / s.blockSize), s.bat.length);
      const allocated = nextAllocated(signedEntries(s.bat), block + 1, stop);
      const runEnd = allocated < stop ? allocated * s.blockSize : end;
      yield* extentsBelow(s, pos, runEnd, options);
      pos = runEnd;
      continue;
    } else {
      const bitmap = await bitmaps.get(block);
      const dataStart = entry * VHD_SECTOR + s.bitmapBytes;
      const first = Math.floor((pos - base) / VHD_SECTOR);
      const last = Math.ceil((next - base) / VHD_SECTOR);
      for (const run of bitRuns(bitmap, first, last - first)) {
        const from = Math.max(base + run.start * VHD_SECTOR, pos);
        const to = Math.min(base + (run.start + run.count) * VHD_SECTOR, next);
        if (run.set) yield* fileRuns(s, from, to, dataStart + from - base, options, host);
        else yield* extentsBelow(s, from, to, options);
      }
    }
    pos = next;
  }
}

/**
 * One map of the file's holes for the whole walk (asked a window at a
 * time, not once per block), or none where the storage cannot tell or
 * says it holds every byte of the file (then there is no hole to find, and
 * on tmpfs the question alone walks every page up to the end of the file).
 */
async function holeMap(s: VhdState): Promise<HostRanges | undefined> {
  const storage = s.storage;
  if (!storage.ranges) return undefined;
  const fileEnd = await storage.size();
  if (storage.allocatedBytes && (await storage.allocatedBytes()) >= fileEnd) return undefined;
  return new HostRanges({ ranges: (o, n) => storage.ranges!(o, n) }, fileEnd);
}

/**
 * Guest [from, to), stored at `hostOffset` in this layer's file: data, except
 * where the file has a hole (a block qemu-img allocated but wrote only in
 * part), which reads as zeros and is `zero` here, so a copy neither reads
 * nor scans it (with `fileHoles`: the file system is asked; of the data only
 * the sectors of a page beside a hole are read, to see which are zeros).
 */
async function* fileRuns(s: VhdState, from: number, to: number, hostOffset: number, options: ExtentOptions, host: HostRanges | undefined): AsyncGenerator<Extent> {
  const data = (at: number, n: number): Extent => ({ offset: at, length: n, kind: 'data', depth: 0, ...(options.hostOffsets ? { hostOffset: hostOffset + at - from, file: s.storage.name } : {}) });
  if (!host) {
    yield data(from, to - from);
    return;
  }
  // What lies past the end of the file is a hole too: it reads as zeros.
  const holes = await host.holes(hostOffset, to - from);
  const pieces: Extent[] = [];
  let pos = from;
  for (const [holeStart, holeEnd] of holes) {
    // Holes are pages, sectors 512 bytes: only whole sectors become zero (a partial one stays data).
    const start = Math.max(pos, Math.ceil((from + holeStart - hostOffset) / VHD_SECTOR) * VHD_SECTOR);
    const stop = Math.min(to, Math.floor((from + holeEnd - hostOffset) / VHD_SECTOR) * VHD_SECTOR);
    if (stop <= start) continue;
    if (start > pos) pieces.push(data(pos, start - pos));
    pieces.push({ offset: start, length: stop - start, kind: 'zero', depth: 0 });
    pos = stop;
  }
  if (pos < to) pieces.push(data(pos, to - pos));
  if (pieces.length === 1) {
    yield pieces[0]!;
    return;
  }
  // A hole starts and ends on a page boundary, so the data beside it may end (or start) with the
  // zeros of a page written in part: those sectors (at most a page's worth) are read and become
  // zero too, so a copy finds no zero edge to leave out and nothing to give back afterwards.
  for (let i = 0; i < pieces.length; i++) {
    const e = pieces[i]!;
    if (e.kind !== 'data') {
      yield e;
      continue;
    }
    let head = e.offset;
    let tail = e.offset + e.length;
    if (i + 1 < pieces.length) tail -= await zeroSectors(s, hostOffset + tail - from, Math.min(EDGE, tail - head), 'tail');
    if (i > 0 && tail > head) head += await zeroSectors(s, hostOffset + head - from, Math.min(EDGE, tail - head), 'head');
    if (head > e.offset) yield { offset: e.offset, length: head - e.offset, kind: 'zero', depth: 0 };
    if (tail > head) yield data(head, tail - head);
    if (tail < e.offset + e.length) yield { offset: Math.max(head, tail), length: e.offset + e.length - Math.max(head, tail), kind: 'zero', depth: 0 };
  }
}

/** The most bytes read beside a hole (a page of the common file systems). */
const EDGE = 4096;

/** How many whole zero sectors end (`tail`: the bytes before `at`) or start (`head`: from `at`) a `length`-byte window of the file. */
async function zeroSectors(s: VhdState, at: number, length: number, side: 'head' | 'tail'): Promise<number> {
  const bytes = new Uint8Array(length);
  const n = await s.storage.readInto(side === 'tail' ? at - length : at, bytes);
  if (n < length) bytes.fill(0, n);
  let zero = 0;
  for (let k = 0; k + VHD_SECTOR <= length; k += VHD_SECTOR) {
    const sector = side === 'tail' ? bytes.subarray(length - k - VHD_SECTOR, length - k) : bytes.subarray(k, k + VHD_SECTOR);
    if (!isAllZero(sector)) break;
    zero += VHD_SECTOR;
  }
  return zero;
}

/** Bitmaps asked for ahead of the walk (allocated blocks only). */
const BITMAPS_AHEAD = 32;

/**
 * The sector bitmaps of the next allocated blocks, read side by side: the
 * walk needs one per allocated block, and one read at a time made a
 * 16 GiB image's map wait for a thousand reads in a row.
 */
class BitmapPrefetch {
  readonly #core: VhdImage;
  readonly #endBlock: number;
  #next = 0;
  #pending = new Map<number, Promise<Uint8Array>>();

  constructor(core: VhdImage, endBlock: number) {
    this.#core = core;
    this.#endBlock = endBlock;
  }

  /** The bitmap of allocated block `block`; starts the reads of the allocated blocks after it. */
  get(block: number): Promise<Uint8Array> {
    const bat = this.#core.state.bat;
    if (this.#next <= block) this.#next = block + 1;
    for (const stop = Math.min(this.#endBlock, block + 1 + BITMAPS_AHEAD); this.#next < stop; this.#next++) {
      if ((bat[this.#next] ?? BAT_UNUSED) === BAT_UNUSED || this.#core.hasBitmap(this.#next)) continue;
      // Read ahead and maybe never awaited (the caller stops early): its failure is reported when it is awaited.
      this.#pending.set(this.#next, startedAhead(this.#core.bitmap(this.#next)));
    }
    const p = this.#pending.get(block);
    if (!p) return this.#core.bitmap(block);
    this.#pending.delete(block);
    return p;
  }
}

async function* extentsBelow(s: VhdState, from: number, to: number, options: ExtentOptions): AsyncGenerator<Extent> {
  if (s.type === 'dynamic') {
    yield { offset: from, length: to - from, kind: 'zero', depth: 0 };
    return;
  }
  yield* parentExtents(s.parent, from, to, options);
}
