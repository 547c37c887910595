/**
 * sparsifyVhd: release the sectors of a dynamic or differencing VHD that
 * hold only zeros. A sector's bit in its block's sector bitmap is cleared
 * where it reads the same without it: in a dynamic disk a clear bit reads
 * as zeros; in a differencing disk it reads as the parent's sector, so a
 * zero sector is released only where the parent reads zeros too. A block
 * whose bits are all clear is freed (its BAT entry becomes 0xFFFFFFFF);
 * compactVhd then gives its space back.
 *
 * Crash safety: every update preserves the guest's view on its own. A
 * bitmap write clears bits of zero sectors only (a torn write leaves each
 * sector of the bitmap old or new, both reading the same), and a block is
 * freed by one BAT sector write once all its bits would be clear (the BAT
 * entry is old or new; both read the same). No update depends on another
 * having reached the disk, so they need no flush between them; one flush
 * ends the run. Running it again after a crash finishes the job.
 */
import { bytesEqual, findZeroRuns, invalidArg, startedAhead, throwIfAborted, type Resolver, type Storage } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { setBits, testBit } from './bitmap.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { loadVhdImage } from './open.js';
import { FORMAT } from './state.js';
import { writeBatEntry } from './write-metadata.js';

/** Bytes of a block scanned at a time (a block may be up to 1 GiB). */
const SCAN_CHUNK = 4 * 1024 * 1024;

/** Blocks scanned ahead of the one being released. */
const SCAN_AHEAD = 4;

/** The default zero-run granularity (qemu-img convert's -S default). */
export const DEFAULT_MIN_ZERO_RUN = 4096;

/** Options of sparsifyVhd. */
export interface VhdSparsifyOptions {
  /**
   * Shortest run of zero bytes released (a multiple of 512; default 4096,
   * as qemu-img convert -S). Shorter zero runs inside data stay data.
   */
  minZeroRun?: number;
  /** Opens the parent of a differencing disk (needed: zero sectors over non-zero parent sectors stay). */
  resolver?: Resolver;
  /** Directories to look for the parent in (see openVhdChain). */
  searchPath?: readonly string[];
  /** Called after each allocated block, with the bytes of allocated blocks scanned so far and in all. */
  onProgress?: (done: number, total: number) => void;
  /** Stops before the next block (ERR_IMG_ABORTED); what was released stays released. */
  signal?: AbortSignal;
}

/** What sparsifyVhd did. */
export interface VhdSparsifyResult {
  /** The disk type; a fixed disk is left as it is. */
  type: 'fixed' | 'dynamic' | 'differencing';
  /** Allocated blocks scanned. */
  blocksScanned: number;
  /** Blocks freed (BAT entry cleared): their space is a hole for compactVhd. */
  blocksFreed: number;
  /** Sector bits cleared in blocks that stay allocated, and in freed ones. */
  sectorsReleased: number;
  /** Bytes of the file freed blocks held (sector bitmap and data): what a compaction can give back. */
  bytesReleased: number;
  /** Set when there was nothing to do, saying why. */
  nothingToDo?: string;
}

/**
 * Releases the all-zero sectors of the VHD in `storage` (see the module
 * comment). The storage must be writable; it is flushed and left open.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('disk.vhd', { readOnly: false });
 * const r = await sparsifyVhd(storage, { resolver: fileResolver });
 * await compactVhd(storage);
 * await storage.close();
 * ```
 */
export async function sparsifyVhd(storage: Storage, options: VhdSparsifyOptions = {}): Promise<VhdSparsifyResult> {
  const minZeroRun = options.minZeroRun ?? DEFAULT_MIN_ZERO_RUN;
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < VHD_SECTOR || minZeroRun % VHD_SECTOR !== 0) {
    throw invalidArg(FORMAT, `minZeroRun must be a positive multiple of ${VHD_SECTOR} bytes, not ${minZeroRun}`, { field: 'minZeroRun' });
  }
  const core = await loadVhdImage(storage, {
    readOnly: false,
    ...(options.resolver ? { resolver: options.resolver } : {}),
    ...(options.searchPath ? { searchPath: options.searchPath } : {}),
  });
  const s = core.state;
  const scans: Array<Promise<Scan>> = [];
  try {
    if (s.type === 'fixed') {
      return { type: 'fixed', blocksScanned: 0, blocksFreed: 0, sectorsReleased: 0, bytesReleased: 0, nothingToDo: 'a fixed disk has no blocks to release' };
    }
    const blocks = [...s.bat.keys()].filter((i) => s.bat[i] !== BAT_UNUSED);
    const result: VhdSparsifyResult = { type: s.type, blocksScanned: 0, blocksFreed: 0, sectorsReleased: 0, bytesReleased: 0 };
    let aborted: unknown;
    // Blocks are scanned (read) a few ahead of the one whose updates are written: reads overlap the
    // scanning, while the writes stay one block at a time, in order (two BAT entries in one sector).
    const scan = (k: number) => startedAhead(scanBlock(core, blocks[k]!));
    for (let k = 0; k < Math.min(SCAN_AHEAD, blocks.length); k++) scans.push(scan(k));
    for (let k = 0; k < blocks.length; k++) {
      try {
        throwIfAborted(options.signal);
      } catch (e) {
        aborted = e;
        break;
      }
      const scanned = await scans[k]!;
      if (k + SCAN_AHEAD < blocks.length) scans.push(scan(k + SCAN_AHEAD));
      const cleared = await releaseBlock(core, blocks[k]!, scanned, minZeroRun / VHD_SECTOR);
      result.blocksScanned++;
      result.sectorsReleased += cleared.sectors;
      if (cleared.freed) {
        result.blocksFreed++;
        result.bytesReleased += s.bitmapBytes + s.blockSize;
      }
      options.onProgress?.(result.blocksScanned * s.blockSize, blocks.length * s.blockSize);
    }
    await storage.flush();
    if (aborted) throw aborted;
    if (blocks.length === 0) result.nothingToDo = 'no block is allocated';
    return result;
  } finally {
    // Reads still in flight after an error or an abort finish before the parent closes.
    await Promise.allSettled(scans);
    await s.parent?.close();
  }
}

/** What a block's scan found: its bitmap, and per sector inside the disk whether it may go. */
interface Scan {
  bitmap: Uint8Array;
  /** 1: the sector is stored and may go (it, and in a differencing disk the parent below it, read as zeros). */
  releasable: Uint8Array;
}

/** Reads one block (and the parent under its zero sectors) and finds the sectors that may go. */
async function scanBlock(core: VhdImage, block: number): Promise<Scan> {
  const s = core.state;
  const base = block * s.blockSize;
  // Sectors of the block inside the disk; bits past the disk's end are never read.
  const count = Math.max(0, Math.min(s.sectorsPerBlock, Math.ceil((s.size - base) / VHD_SECTOR)));
  // The bitmap is copied: the one in the cache changes when the release writes it.
  const bitmap = (await core.bitmap(block)).slice();
  const releasable = new Uint8Array(count);
  const dataStart = s.bat[block]! * VHD_SECTOR + s.bitmapBytes;
  const parent = s.type === 'differencing' ? s.parent : undefined;
  for (let first = 0; first < count; first += SCAN_CHUNK / VHD_SECTOR) {
    const sectors = Math.min(SCAN_CHUNK / VHD_SECTOR, count - first);
    const data = new Uint8Array(sectors * VHD_SECTOR);
    const n = await s.storage.readInto(dataStart + first * VHD_SECTOR, data);
    if (n < data.length) data.fill(0, n);
    let any = false;
    for (const run of findZeroRuns(data, VHD_SECTOR, VHD_SECTOR)) {
      if (!run.zero) continue;
      for (let i = run.start / VHD_SECTOR; i < run.end / VHD_SECTOR; i++) {
        if (testBit(bitmap, first + i)) {
          releasable[first + i] = 1;
          any = true;
        }
      }
    }
    if (!any || s.type !== 'differencing') continue;
    // A zero sector over a parent sector that is not zero must stay: clearing it would show the parent's.
    if (!parent) {
      releasable.fill(0, first, first + sectors);
      continue;
    }
    const from = base + first * VHD_SECTOR;
    const below = new Uint8Array(data.length);
    if (from < parent.size) await parent.readInto(from, below.subarray(0, Math.min(below.length, parent.size - from)));
    for (const run of findZeroRuns(below, VHD_SECTOR, VHD_SECTOR)) {
      if (run.zero) continue;
      releasable.fill(0, first + run.start / VHD_SECTOR, first + run.end / VHD_SECTOR);
    }
  }
  return { bitmap, releasable };
}

/** Releases what a scan found: the BAT entry when nothing stays, else the bitmap sectors that changed. */
async function releaseBlock(core: VhdImage, block: number, { bitmap, releasable }: Scan, minSectors: number): Promise<{ sectors: number; freed: boolean }> {
  const s = core.state;
  const count = releasable.length;
  let whole = true;
  let stored = 0;
  for (let k = 0; k < count; k++) {
    stored += releasable[k]!;
    if (!releasable[k] && testBit(bitmap, k)) whole = false;
  }
  if (whole) {
    // Nothing stays (whatever the granularity: the whole block goes): free it with one BAT sector.
    await writeBatEntry(s, block, BAT_UNUSED);
    s.bat[block] = BAT_UNUSED;
    return { sectors: stored, freed: true };
  }
  // Runs shorter than the granularity stay data; sectors not stored here count towards a run.
  const updated = bitmap.slice();
  let released = 0;
  let i = 0;
  while (i < count) {
    if (!releasable[i] && testBit(bitmap, i)) {
      i++;
      continue;
    }
    let j = i;
    let inRun = 0;
    while (j < count && (releasable[j] || !testBit(bitmap, j))) inRun += releasable[j++]!;
    if (j - i >= minSectors && inRun > 0) {
      for (let k = i; k < j; k++) if (releasable[k]) setBits(updated, k, 1, false);
      released += inRun;
    }
    i = j;
  }
  if (released === 0) return { sectors: 0, freed: false };
  // Only the bitmap sectors that changed, each a whole sector.
  const at = s.bat[block]! * VHD_SECTOR;
  for (let off = 0; off < updated.length; off += VHD_SECTOR) {
    const piece = updated.subarray(off, off + VHD_SECTOR);
    if (!bytesEqual(piece, bitmap.subarray(off, off + VHD_SECTOR))) await s.storage.write(at + off, piece);
  }
  core.setBitmap(block, updated);
  return { sectors: released, freed: false };
}
