/**
 * The allocation map of a VHD from its BAT and sector bitmaps (never its
 * data): dynamic disks say `zero` for what they do not hold; differencing
 * disks ask their parent (depth + 1), or say `hole` with `topOnly` or
 * without a parent.
 */
import { checkDiskRange, extentRange, FileHoles, fileHolePieces, flattenExtentBatches, mergeExtentBatches, parentExtents, splitAtFileHoles, startedAhead, type Extent, type ExtentOptions } from '@img/block';
import { BAT_UNUSED, nextAllocated, signedEntries } from './bat.js';
import { bitRuns } from './bitmap.js';
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
  return flattenExtentBatches(vhdExtentBatches(core, options));
}

/** The same extents in arrays, a few blocks' worth at a time (see Disk.extentBatches). */
export function vhdExtentBatches(core: VhdImage, options?: ExtentOptions): AsyncIterable<Extent[]> {
  core.assertOpen();
  const { start, end } = extentRange(options, core.size);
  return mergeExtentBatches(extentRuns(core, start, end, options ?? {}));
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

/** The first array of raw extents holds up to this many; each next one twice as many, up to BATCH_MAX. */
const BATCH_FIRST = 16;
const BATCH_MAX = 1024;

/**
 * Raw (unmerged) extents of [start, end), in arrays: the first small, so
 * that a copy starts on them while the walk reads the next blocks'
 * bitmaps, then larger (one generator step per array, not per extent).
 */
async function* extentRuns(core: VhdImage, start: number, end: number, options: ExtentOptions): AsyncGenerator<Extent[]> {
  const s = core.state;
  if (start >= end) return;
  const host = options.fileHoles ? await FileHoles.of(s.storage) : undefined;
  let out: Extent[] = [];
  if (s.type === 'fixed') {
    // The whole disk is one run of the file: over its holes (qemu-img leaves a fixed disk sparse) it is split a
    // slice at a time, not all at once.
    const e = storedExtent(s, start, end, start, options);
    if (host) yield* fileHolePieces(e, start, s.storage, host);
    else yield [e];
    return;
  }
  let limit = BATCH_FIRST;
  /**
   * What [from, to) of this layer reads from below, into `out`: zeros
   * (dynamic), or the parent's extents one layer down, handed over
   * whenever `out` is full (a run of unallocated blocks may cover millions
   * of them).
   */
  async function* below(from: number, to: number): AsyncGenerator<Extent[]> {
    if (s.type === 'dynamic') {
      out.push({ offset: from, length: to - from, kind: 'zero', depth: 0 });
      return;
    }
    for await (const e of parentExtents(s.parent, from, to, options)) {
      out.push(e);
      if (out.length >= BATCH_MAX) {
        yield out;
        out = [];
      }
    }
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
      yield* below(pos, runEnd);
      pos = runEnd;
    } else {
      const bitmap = await bitmaps.get(block);
      const dataStart = entry * VHD_SECTOR + s.bitmapBytes;
      const first = Math.floor((pos - base) / VHD_SECTOR);
      const last = Math.ceil((next - base) / VHD_SECTOR);
      for (const run of bitRuns(bitmap, first, last - first)) {
        const from = Math.max(base + run.start * VHD_SECTOR, pos);
        const to = Math.min(base + (run.start + run.count) * VHD_SECTOR, next);
        if (run.set) await fileRuns(s, from, to, dataStart + from - base, options, host, out);
        else yield* below(from, to);
      }
      pos = next;
    }
    if (out.length >= limit) {
      yield out;
      out = [];
      limit = Math.min(BATCH_MAX, limit * 2);
    }
  }
  if (out.length) yield out;
}

/**
 * Guest [from, to), stored at `hostOffset` in this layer's file, into
 * `out`: data, except where the file has a hole (a block qemu-img
 * allocated but wrote only in part), which reads as zeros and is `zero`
 * here, so a copy neither reads nor scans it (with `fileHoles`: the file
 * system is asked).
 */
async function fileRuns(s: VhdState, from: number, to: number, hostOffset: number, options: ExtentOptions, host: FileHoles | undefined, out: Extent[]): Promise<void> {
  const e = storedExtent(s, from, to, hostOffset, options);
  if (!host) {
    out.push(e);
    return;
  }
  const split = splitAtFileHoles(e, hostOffset, s.storage, host);
  for (const piece of split instanceof Promise ? await split : split) out.push(piece);
}

/** Guest [from, to) as data stored at `hostOffset` of this layer's file. */
function storedExtent(s: VhdState, from: number, to: number, hostOffset: number, options: ExtentOptions): Extent {
  return { offset: from, length: to - from, kind: 'data', depth: 0, ...(options.hostOffsets ? { hostOffset, file: s.storage.name } : {}) };
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
