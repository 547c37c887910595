/**
 * The allocation map from metadata alone: flat extents are data, ZERO
 * extents zero; in a sparse extent each grain's GTE decides (allocated:
 * data; zeroed: zero; unallocated: the parent's extents one layer down,
 * or a hole), and an unallocated grain table skips its whole span at once.
 */
import { FileHoles, fileHolePieces, parentExtents, type Extent, type ExtentOptions, type Storage } from '@img/block';
import { extentFileName, type SparseExtent, type VmdkImage } from './image.js';
import { GTE_UNALLOCATED } from './grain-table.js';

/** Raw (unmerged) extents of guest bytes [start, end). */
export async function* extentRuns(core: VmdkImage, start: number, end: number, options: ExtentOptions): AsyncGenerator<Extent> {
  if (start >= end) return;
  let index = core.extentIndexAt(start);
  let pos = start;
  const holes = options.fileHoles ? new StoredZeros() : undefined;
  while (pos < end) {
    const e = core.extents[index]!;
    const stop = Math.min(end, e.start + e.length);
    if (e.kind === 'zero') yield { offset: pos, length: stop - pos, kind: 'zero', depth: 0 };
    else if (e.kind === 'flat') {
      const host = e.fileOffset + (pos - e.start);
      const run: Extent = { offset: pos, length: stop - pos, kind: 'data', depth: 0, ...(options.hostOffsets ? { hostOffset: host, file: extentFileName(core, e) } : {}) };
      if (holes) yield* holes.split(run, host, e.storage);
      else yield run;
    } else yield* sparseRuns(core, e, pos, stop, options, holes);
    pos = stop;
    index++;
  }
}

/** A run being gathered: grains of one kind next to each other (data ones also contiguous in the file). */
interface PendingRun {
  kind: 'data' | 'zero';
  offset: number;
  length: number;
  hostOffset?: number;
}

/**
 * One sparse extent's runs. Grains are looked at table by table without a
 * yield per grain: neighbouring grains of the same kind (data grains also
 * next to each other in the file, when host offsets are asked for) leave as
 * one extent, so a table of 512 grains costs one await, not 512.
 */
async function* sparseRuns(core: VmdkImage, e: SparseExtent, from: number, to: number, options: ExtentOptions, holes: StoredZeros | undefined): AsyncGenerator<Extent> {
  const map = e.map;
  const n = map.header.numGTEsPerGT;
  // Host offsets are followed for fileHoles too (the grains over holes of the file split off as zeros).
  const file = options.hostOffsets || holes ? extentFileName(core, e) : undefined;
  let pos = from;
  // Runs of unallocated grains are gathered and asked of the parent as one range.
  let holeStart = -1;
  let run: PendingRun | undefined;
  const take = (): Extent[] | AsyncIterable<Extent> | undefined => {
    const r = run;
    run = undefined;
    if (!r) return undefined;
    if (r.kind === 'zero') return [{ offset: r.offset, length: r.length, kind: 'zero', depth: 0 }];
    if (holes && r.hostOffset !== undefined) {
      const stored: Extent = { offset: r.offset, length: r.length, kind: 'data', depth: 0, ...(options.hostOffsets ? { hostOffset: r.hostOffset, file: file! } : {}) };
      return holes.split(stored, r.hostOffset, e.storage);
    }
    return [{ offset: r.offset, length: r.length, kind: 'data', depth: 0, ...(options.hostOffsets && r.hostOffset !== undefined ? { hostOffset: r.hostOffset, file: file! } : {}) }];
  };
  while (pos < to) {
    const inExtent = pos - e.start;
    const tableIndex = Math.floor(inExtent / map.tableSpan);
    const tableEnd = Math.min(to, e.start + (tableIndex + 1) * map.tableSpan);
    const writer = core.appendWriter;
    const table = writer ? undefined : await map.table(tableIndex);
    if (!writer && !table) {
      const done = take();
      if (done) yield* done;
      if (holeStart < 0) holeStart = pos;
      pos = tableEnd;
      continue;
    }
    while (pos < tableEnd) {
      const grain = Math.floor((pos - e.start) / map.grainBytes);
      const next = Math.min(tableEnd, e.start + (grain + 1) * map.grainBytes);
      const entry = writer ? (writer.pendingGrain(grain) || writer.appendedSector(grain) ? ({ kind: 'data', hostOffset: 0, compressed: true } as const) : ({ kind: 'unallocated' } as const)) : map.decode(table![grain % n] ?? GTE_UNALLOCATED, grain);
      if (entry.kind === 'unallocated') {
        const done = take();
        if (done) yield* done;
        if (holeStart < 0) holeStart = pos;
        pos = next;
        continue;
      }
      if (holeStart >= 0) {
        yield* extentsBelow(core, holeStart, pos, options);
        holeStart = -1;
      }
      const kind = entry.kind === 'zeroed' ? 'zero' : 'data';
      const host = entry.kind === 'data' && file !== undefined && !entry.compressed ? entry.hostOffset + (pos - e.start - grain * map.grainBytes) : undefined;
      const joins = run !== undefined && run.kind === kind && run.offset + run.length === pos && (run.hostOffset === undefined ? host === undefined : host === run.hostOffset + run.length);
      if (joins) run!.length += next - pos;
      else {
        const done = take();
        if (done) yield* done;
        run = { kind, offset: pos, length: next - pos, ...(host !== undefined ? { hostOffset: host } : {}) };
      }
      pos = next;
    }
  }
  const done = take();
  if (done) yield* done;
  if (holeStart >= 0) yield* extentsBelow(core, holeStart, to, options);
}

/**
 * The holes of each extent file, asked for in one walk that wants
 * `fileHoles`: the grains and flat bytes over them are zeros.
 */
class StoredZeros {
  readonly #holes = new Map<Storage, Promise<FileHoles | undefined>>();

  /** `run` (stored from `host` in `storage`) split at the file's holes, a slice of it at a time (a flat extent may be terabytes). */
  async *split(run: Extent, host: number, storage: Storage): AsyncGenerator<Extent> {
    let holes = this.#holes.get(storage);
    if (!holes) this.#holes.set(storage, (holes = FileHoles.of(storage)));
    const h = await holes;
    if (!h) {
      yield run;
      return;
    }
    for await (const part of fileHolePieces(run, host, storage, h)) yield* part;
  }
}

/**
 * Extents of [from, to) not stored in this image: the parent's one layer
 * down, or a hole. Over a stale parent (stale-parent.ts), a copy (the
 * caller that asks for fileHoles; `img map` does not) gets the parent's
 * data extents without their place in its file, so that it reads them
 * through this image, which refuses them as qemu-img does, instead of
 * from the parent's file directly. `img map` still shows where they lie,
 * as qemu-img map does.
 */
async function* extentsBelow(core: VmdkImage, from: number, to: number, options: ExtentOptions): AsyncGenerator<Extent> {
  if (!core.staleParent || core.staleParent.allowed || !options.hostOffsets || !options.fileHoles) {
    yield* parentExtents(core.parent, from, to, options);
    return;
  }
  for await (const e of parentExtents(core.parent, from, to, options)) {
    const { hostOffset: _offset, file: _file, ...rest } = e;
    yield rest;
  }
}
