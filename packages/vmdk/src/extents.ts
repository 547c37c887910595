/**
 * The allocation map from metadata alone: flat extents are data, ZERO
 * extents zero; in a sparse extent each grain's GTE decides (allocated:
 * data; zeroed: zero; unallocated: the parent's extents one layer down,
 * or a hole), and an unallocated grain table skips its whole span at once.
 */
import { parentExtents, type Extent, type ExtentOptions } from '@img/block';
import { extentFileName, type SparseExtent, type VmdkImage } from './image.js';
import { GTE_UNALLOCATED } from './grain-table.js';

/** Raw (unmerged) extents of guest bytes [start, end). */
export async function* extentRuns(core: VmdkImage, start: number, end: number, options: ExtentOptions): AsyncGenerator<Extent> {
  if (start >= end) return;
  let index = core.extentIndexAt(start);
  let pos = start;
  while (pos < end) {
    const e = core.extents[index]!;
    const stop = Math.min(end, e.start + e.length);
    if (e.kind === 'zero') yield { offset: pos, length: stop - pos, kind: 'zero', depth: 0 };
    else if (e.kind === 'flat') {
      yield { offset: pos, length: stop - pos, kind: 'data', depth: 0, ...(options.hostOffsets ? { hostOffset: e.fileOffset + (pos - e.start), file: extentFileName(core, e) } : {}) };
    } else yield* sparseRuns(core, e, pos, stop, options);
    pos = stop;
    index++;
  }
}

async function* sparseRuns(core: VmdkImage, e: SparseExtent, from: number, to: number, options: ExtentOptions): AsyncGenerator<Extent> {
  const map = e.map;
  const n = map.header.numGTEsPerGT;
  let pos = from;
  // Runs of unallocated grains are gathered and asked of the parent as one range.
  let holeStart = -1;
  const flushHole = async function* (until: number): AsyncGenerator<Extent> {
    if (holeStart < 0) return;
    yield* extentsBelow(core, holeStart, until, options);
    holeStart = -1;
  };
  while (pos < to) {
    const inExtent = pos - e.start;
    const grain = Math.floor(inExtent / map.grainBytes);
    const tableIndex = Math.floor(grain / n);
    const table = core.appendWriter ? new Uint32Array(n) : await map.table(tableIndex);
    if (!table) {
      const next = Math.min(to, e.start + (tableIndex + 1) * map.tableSpan);
      if (holeStart < 0) holeStart = pos;
      pos = next;
      continue;
    }
    const gte = table[grain % n] ?? GTE_UNALLOCATED;
    const next = Math.min(to, e.start + (grain + 1) * map.grainBytes);
    const writer = core.appendWriter;
    const entry = writer ? (writer.pendingGrain(grain) || writer.appendedSector(grain) ? ({ kind: 'data', hostOffset: 0, compressed: true } as const) : ({ kind: 'unallocated' } as const)) : map.decode(gte, grain);
    if (entry.kind === 'unallocated') {
      if (holeStart < 0) holeStart = pos;
    } else {
      yield* flushHole(pos);
      if (entry.kind === 'zeroed') yield { offset: pos, length: next - pos, kind: 'zero', depth: 0 };
      else {
        const host = options.hostOffsets && !entry.compressed ? { hostOffset: entry.hostOffset + (inExtent - grain * map.grainBytes), file: extentFileName(core, e) } : {};
        yield { offset: pos, length: next - pos, kind: 'data', depth: 0, ...host };
      }
    }
    pos = next;
  }
  yield* flushHole(to);
}

/** Extents of [from, to) not stored in this image: the parent's one layer down, or a hole. */
async function* extentsBelow(core: VmdkImage, from: number, to: number, options: ExtentOptions): AsyncGenerator<Extent> {
  yield* parentExtents(core.parent, from, to, options);
}
