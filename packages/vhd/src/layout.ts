/**
 * Layout validation of a dynamic or differencing VHD: the regions its
 * structures own (the footer copy at offset 0, the dynamic header, the
 * BAT, each parent locator's data, every block's bitmap and data, the
 * footer at the end of the file) may not overlap one another. An image
 * whose regions overlap is one where writing one structure destroys
 * another, so only read-only opens take it.
 */
import { hex } from '@img/block';

/** A byte range of the file a structure owns, [start, end). */
export interface LayoutRegion {
  start: number;
  end: number;
  what: string;
}

/** Do two byte ranges share a byte? */
export function regionsOverlap(a: { start: number; end: number }, b: { start: number; end: number }): boolean {
  return a.start < b.end && b.start < a.end;
}

/** "the BAT [0x600, 0x800)" */
export function describeRegion(r: LayoutRegion): string {
  return `${r.what} [${hex(r.start)}, ${hex(r.end)})`;
}

/** One overlap of two regions, in words: "parent locator 0 [...) overlaps the BAT [...)". */
export function overlapMessage(a: LayoutRegion, b: LayoutRegion): string {
  return `${describeRegion(a)} overlaps ${describeRegion(b)}`;
}

/**
 * Every overlapping pair in which at least one region is a subject
 * (`subjects` are checked against each other and against `others`;
 * `others` among themselves are known to be apart). Small lists: the
 * metadata regions, never the blocks.
 */
export function layoutOverlaps(subjects: readonly LayoutRegion[], others: readonly LayoutRegion[]): Array<[LayoutRegion, LayoutRegion]> {
  const out: Array<[LayoutRegion, LayoutRegion]> = [];
  subjects.forEach((a, i) => {
    for (const b of others) if (regionsOverlap(a, b)) out.push([a, b]);
    for (const b of subjects.slice(i + 1)) if (regionsOverlap(a, b)) out.push([a, b]);
  });
  return out;
}
