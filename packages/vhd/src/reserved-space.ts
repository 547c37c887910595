/**
 * Space a VHD holds without referencing it from the BAT, as real writers
 * leave it: parent locator space reserved beyond its data (the spec's
 * "platform data space"; Hyper-V and vhd-util reserve it in dynamic disks
 * too, with no locator in it yet), blktap's batmap behind the BAT, and
 * alignment padding (the BAT padded to a sector, 4 KiB or 2 MiB; blocks
 * aligned to 4 KiB or 2 MiB as Windows and Hyper-V place them). None of it
 * is a leak, and a repair never cuts it.
 */
import { readU32Be, type Storage } from '@img/block';
import { FOOTER_SIZE, readCookie } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdState } from './state.js';
import { blockOverlaps, type BlockStarts } from './block-starts.js';

/** A byte range of the file, [start, end). */
export interface VhdRegion {
  start: number;
  end: number;
  what: string;
}

/** Cookie of blktap's batmap header, one sector right behind the BAT ("tdbatmap"). */
export const BATMAP_COOKIE = 'tdbatmap';

/** Only blktap (creator "tap\0") writes a batmap: other images cost no read for it. */
const BATMAP_CREATOR = 'tap\0';

/** Alignments writers place the BAT's end and blocks on (besides the sector). */
export const WRITER_ALIGNMENTS: readonly number[] = [4096, 64 * 1024, 1024 * 1024, 2 * 1024 * 1024];

/** Largest space one locator may reserve: a 32767-character UTF-16 path and slack. */
const MAX_LOCATOR_SPACE = 64 * 1024;

/**
 * Bytes a parent locator's platform data space field reserves. The spec
 * counts sectors; Windows writes bytes. As other readers do: a value below
 * 512 counts sectors, a multiple of 512 counts bytes, anything else
 * reserves nothing beyond the data.
 */
export function locatorSpaceBytes(space: number): number {
  if (space > 0 && space < VHD_SECTOR) return space * VHD_SECTOR;
  if (space >= VHD_SECTOR && space % VHD_SECTOR === 0) return space;
  return 0;
}

function roundUp(value: number, to: number): number {
  return Math.ceil(value / to) * to;
}

function overlaps(a: { start: number; end: number }, b: { start: number; end: number }): boolean {
  return a.start < b.end && b.start < a.end;
}

async function batmapRegions(storage: Storage, at: number, limit: number): Promise<VhdRegion[]> {
  if (at + VHD_SECTOR > limit) return [];
  const header = await storage.read(at, VHD_SECTOR);
  if (header.length < VHD_SECTOR || readCookie(header) !== BATMAP_COOKIE) return [];
  // +8: batmap offset (u64), +16: batmap size in sectors (u32).
  const offset = readU32Be(header, 8) * 0x1_0000_0000 + readU32Be(header, 12);
  const sectors = readU32Be(header, 16);
  const regions: VhdRegion[] = [{ start: at, end: at + VHD_SECTOR, what: 'the batmap header' }];
  const end = offset + sectors * VHD_SECTOR;
  if (sectors > 0 && offset >= at + VHD_SECTOR && Number.isSafeInteger(end) && end <= limit) regions.push({ start: offset, end, what: 'the batmap' });
  return regions;
}

/**
 * The regions a dynamic or differencing disk reserves beyond the data its
 * metadata describes. A reservation that would overlap the footer copy,
 * the header, the BAT or a block, or reach into the footer at the end, is
 * not one (the writer cannot have meant it) and is left out.
 */
export async function reservedSpace(s: VhdState, fileSize: number, blocks: BlockStarts): Promise<VhdRegion[]> {
  const h = s.header;
  if (!h) return [];
  const limit = fileSize - FOOTER_SIZE;
  const fixed = s.metadata.slice(0, 3);
  const clear = (r: VhdRegion) => r.start >= VHD_SECTOR && r.end <= limit && !fixed.some((m) => overlaps(m, r)) && !blockOverlaps(blocks, r);
  const out: VhdRegion[] = [];
  h.parentLocators.forEach((l, i) => {
    const start = l.platformDataOffset;
    const bytes = Math.max(locatorSpaceBytes(l.platformDataSpace), roundUp(l.platformDataLength, VHD_SECTOR));
    if (bytes === 0 || bytes > MAX_LOCATOR_SPACE || !Number.isSafeInteger(start + bytes)) return;
    const r = { start, end: start + bytes, what: `parent locator ${i}'s reserved space` };
    if (clear(r)) out.push(r);
  });
  if (s.footer.creatorApp === BATMAP_CREATOR) {
    const batEnd = roundUp(h.tableOffset + s.bat.length * 4, VHD_SECTOR);
    for (const r of await batmapRegions(s.storage, batEnd, limit)) if (clear(r)) out.push(r);
  }
  return out;
}

/**
 * The alignment the writer placed blocks on, read from the first block
 * (the lowest in the file, which the image's creator placed; blocks added
 * later by another writer such as this one may follow with no gap and no
 * alignment). Anchored at the block (its sector bitmap) or at its data:
 * Windows aligns data to 4 KiB, Hyper-V blocks to 2 MiB. 0 when there are
 * no blocks or the first is not aligned to 4 KiB or more.
 */
export function blockAlignment(blockStarts: ArrayLike<number>, bitmapBytes: number): { alignment: number; anchor: number } {
  let best = { alignment: 0, anchor: 0 };
  if (blockStarts.length === 0) return best;
  let first = Infinity;
  for (let i = 0; i < blockStarts.length; i++) first = Math.min(first, blockStarts[i]!);
  for (const anchor of [0, bitmapBytes]) {
    for (const a of WRITER_ALIGNMENTS) if (a > best.alignment && (first + anchor) % a === 0) best = { alignment: a, anchor };
  }
  return best;
}

/**
 * Is the unreferenced gap [start, end) padding a writer leaves?
 * - less than a sector up to a sector boundary (a BAT padded to a sector);
 * - before the first block (or, with no blocks, before the footer):
 *   too small to hold a block, or padding up to a 4 KiB .. 2 MiB boundary;
 * - elsewhere: padding up to the next block's place under the writer's
 *   alignment (`blockAlignment`), or up to the footer under it.
 */
export function isWriterPadding(gap: { start: number; end: number }, where: { beforeFirstBlock: boolean; nextIsBlock: boolean; blockSpan: number; alignment: number; anchor: number }): boolean {
  const { start, end } = gap;
  if (end - start < VHD_SECTOR && end % VHD_SECTOR === 0) return true;
  if (where.beforeFirstBlock) {
    if (end - start < where.blockSpan) return true;
    if (WRITER_ALIGNMENTS.some((a) => roundUp(start, a) === end)) return true;
  }
  const a = where.alignment;
  if (a === 0) return false;
  if (where.nextIsBlock) return roundUp(start + where.anchor, a) === end + where.anchor;
  return roundUp(start, a) === end || roundUp(start + where.anchor, a) - where.anchor === end;
}
