/**
 * compactVhd: shrink a dynamic or differencing VHD in place to the space
 * its metadata and allocated blocks take, by moving the blocks nearest the
 * end of the file into holes lower down (space no block, metadata region
 * or reservation uses: blocks freed by sparsify, leaks, a gap left by a
 * writer), then moving the footer behind the last block and cutting the
 * file there.
 *
 * Crash safety, one block at a time:
 *
 * 1. The block (sector bitmap and data) is copied into the hole, then a
 *    flush. Until its BAT entry changes, the copy is unreferenced space (a
 *    leak), and the image reads as before.
 * 2. The BAT sector holding the block's entry is rewritten (one sector, so
 *    a torn write leaves the old or the new entry), then a flush. Both
 *    copies hold the same bytes, so either entry reads the same; the old
 *    location is now a leak.
 * 3. After the last move: the footer is written at the new end of the
 *    data, a flush, and the file is cut behind it. Until the cut, the old
 *    footer still ends the file (the space between is junk, a leak).
 *
 * Running compactVhd again after a crash or an abort finds the old
 * locations as holes and goes on. Fixed disks have nothing to compact.
 */
import { throwIfAborted, type Storage } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { FOOTER_SIZE } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { blockAlignment } from './reserved-space.js';
import { loadVhdImage } from './open.js';
import type { VhdState } from './state.js';
import { writeBatEntry, writeFooters } from './write-metadata.js';

/** Bytes copied per read/write while a block moves (a block may be up to 1 GiB). */
const COPY_CHUNK = 4 * 1024 * 1024;

/** Options of compactVhd. */
export interface VhdCompactOptions {
  /** Called after each block moved, with the bytes moved so far and in all (sector bitmaps and data). */
  onProgress?: (done: number, total: number) => void;
  /** Stops before the next block move (ERR_IMG_ABORTED); the file stays consistent, and running compactVhd again finishes. */
  signal?: AbortSignal;
}

/** What compactVhd did. */
export interface VhdCompactResult {
  /** The disk type; a fixed disk is left as it is. */
  type: 'fixed' | 'dynamic' | 'differencing';
  /** Blocks moved into lower holes. */
  blocksMoved: number;
  /** Bytes copied (sector bitmap and data of each moved block). */
  bytesMoved: number;
  /** File size before and after. */
  sizeBefore: number;
  sizeAfter: number;
  /** Bytes the image needs: its metadata, reservations, allocated blocks and the footer. */
  allocatedBytes: number;
  /** Set when there was nothing to do, saying why ("a fixed disk has no blocks to move"). */
  nothingToDo?: string;
}

interface Range {
  start: number;
  end: number;
}

interface Move {
  block: number;
  from: number;
  to: number;
}

/**
 * Moves blocks from the end of the VHD in `storage` into free space lower
 * down and truncates the file (see the module comment for the write
 * order). The storage must be writable; it is flushed and left open.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('disk.vhd', { readOnly: false });
 * const r = await compactVhd(storage);
 * console.log(`${r.bytesMoved} bytes moved, ${r.sizeBefore} -> ${r.sizeAfter}`);
 * await storage.close();
 * ```
 */
export async function compactVhd(storage: Storage, options: VhdCompactOptions = {}): Promise<VhdCompactResult> {
  const sizeBefore = await storage.size();
  // The file alone: moving blocks never reads the parent.
  const core = await loadVhdImage(storage, { readOnly: false, noBacking: true });
  const s = core.state;
  if (s.type === 'fixed') {
    return { type: 'fixed', blocksMoved: 0, bytesMoved: 0, sizeBefore, sizeAfter: sizeBefore, allocatedBytes: sizeBefore, nothingToDo: 'a fixed disk has no blocks to move' };
  }
  const span = s.bitmapBytes + s.blockSize;
  const moves = planMoves(s, span);
  let bytesMoved = 0;
  let done = 0;
  let aborted: unknown;
  for (const move of moves) {
    try {
      throwIfAborted(options.signal);
    } catch (e) {
      aborted = e;
      break;
    }
    await moveBlock(core, move, span);
    bytesMoved += span;
    done++;
    options.onProgress?.(done * span, moves.length * span);
  }
  // Footer at the new end, flush, cut (also after an abort: what was moved already is returned).
  const end = dataEnd(s, span);
  let sizeAfter = sizeBefore;
  if (sizeBefore !== end + FOOTER_SIZE || s.nextFree !== end) {
    s.nextFree = end;
    await core.allocator.run(async () => {
      await writeFooters(s, { head: false });
      await storage.flush();
      await storage.truncate(end + FOOTER_SIZE);
      await storage.flush();
    });
    core.dropCaches();
    sizeAfter = await storage.size();
  }
  if (aborted) throw aborted;
  return {
    type: s.type,
    blocksMoved: done,
    bytesMoved,
    sizeBefore,
    sizeAfter,
    allocatedBytes: allocatedBytes(s, span),
    ...(moves.length === 0 && sizeAfter === sizeBefore ? { nothingToDo: 'no block lies behind a hole it fits in, and nothing follows the footer' } : {}),
  };
}

/** Regions nothing may be written over: metadata, reservations, blocks; sorted by start. */
function occupied(s: VhdState, span: number): Range[] {
  const out: Range[] = [...s.metadata, ...(s.reserved ?? [])].map((m) => ({ start: m.start, end: roundUp(m.end) }));
  s.bat.forEach((e) => {
    if (e !== BAT_UNUSED) out.push({ start: e * VHD_SECTOR, end: e * VHD_SECTOR + span });
  });
  return out.sort((a, b) => a.start - b.start);
}

/**
 * The moves, highest block first, each into the lowest hole below it that
 * holds a whole block. A block's old place lies above every block still to
 * move, so it never becomes a hole for them: the holes are computed once.
 * Where the image's creator aligned every block (Hyper-V, Windows: see
 * blockAlignment), a block goes on that alignment when the hole has room
 * for it there, so that the gaps left between blocks stay padding, not
 * leaks; otherwise (and in packed layouts) at the start of the hole.
 */
function planMoves(s: VhdState, span: number): Move[] {
  const regions = occupied(s, span);
  const holes: Range[] = [];
  let at = 0;
  for (const r of regions) {
    if (r.start - at >= span) holes.push({ start: at, end: r.start });
    at = Math.max(at, r.end);
  }
  const blocks = [...s.bat.keys()].filter((i) => s.bat[i] !== BAT_UNUSED).sort((a, b) => s.bat[b]! - s.bat[a]!);
  const starts = blocks.map((i) => s.bat[i]! * VHD_SECTOR);
  const found = blockAlignment(starts, s.bitmapBytes);
  // Only a layout whose every block sits on the alignment was laid out on it (blocks packed one after
  // another, as qemu and img append them, may have a first block on a boundary by chance).
  const aligned = found.alignment > 0 && starts.every((b) => (b + found.anchor) % found.alignment === 0);
  const { alignment, anchor } = aligned ? found : { alignment: 0, anchor: 0 };
  const place = (h: Range): number | undefined => {
    if (alignment > 0) {
      const aligned = Math.ceil((h.start + anchor) / alignment) * alignment - anchor;
      if (aligned + span <= h.end) return aligned;
    }
    return h.start + span <= h.end ? h.start : undefined;
  };
  const moves: Move[] = [];
  for (const block of blocks) {
    const from = s.bat[block]! * VHD_SECTOR;
    let to: number | undefined;
    let hole: Range | undefined;
    for (const h of holes) {
      if (h.start >= from) break;
      to = place(h);
      if (to !== undefined) {
        hole = h;
        break;
      }
    }
    if (!hole || to === undefined || to >= from) break;
    moves.push({ block, from, to });
    hole.start = to + span;
  }
  return moves;
}

/** Copies a block to its hole, flushes, points its BAT entry there, flushes. */
async function moveBlock(core: VhdImage, move: Move, span: number): Promise<void> {
  const s = core.state;
  const buffer = new Uint8Array(Math.min(COPY_CHUNK, span));
  for (let pos = 0; pos < span; pos += buffer.length) {
    const chunk = buffer.subarray(0, Math.min(buffer.length, span - pos));
    const n = await s.storage.readInto(move.from + pos, chunk);
    if (n < chunk.length) chunk.fill(0, n);
    await s.storage.write(move.to + pos, chunk);
  }
  await s.storage.flush();
  await writeBatEntry(s, move.block, move.to / VHD_SECTOR);
  await s.storage.flush();
  s.bat[move.block] = move.to / VHD_SECTOR;
}

/** The end of the last region the image owns (where the footer goes). */
function dataEnd(s: VhdState, span: number): number {
  let end = 0;
  for (const r of occupied(s, span)) end = Math.max(end, r.end);
  return roundUp(end);
}

/** Bytes the image's regions take, plus the footer. */
function allocatedBytes(s: VhdState, span: number): number {
  let total = FOOTER_SIZE;
  let at = 0;
  for (const r of occupied(s, span)) {
    const start = Math.max(r.start, at);
    if (r.end > start) total += r.end - start;
    at = Math.max(at, r.end);
  }
  return total;
}

function roundUp(n: number): number {
  return Math.ceil(n / VHD_SECTOR) * VHD_SECTOR;
}
