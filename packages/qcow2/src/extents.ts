/**
 * The extents of a view (active layer or snapshot), from L1/L2 metadata
 * only: unallocated ranges are resolved through the backing chain (depth
 * = layer), unless the caller asks for the top layer alone.
 */
import { extentRange, FILE_HOLES_SLICE, FileHoles, fileHolePieces, flattenExtentBatches, splitAtFileHoles } from '@img/block';
import type { Extent, ExtentOptions } from '@img/block';
import { segmentExtent } from './reader.js';
import type { MappingView } from './mapping-view.js';
import { segmentBatches } from './segments.js';
import type { Qcow2Image } from './core.js';

/** An array handed over holds at most about this many extents (the segments of one L2 table aside). */
const BATCH_MAX = 1024;

/** The merged extents of `view` over the requested range. */
export function qcow2Extents(core: Qcow2Image, view: MappingView, options?: ExtentOptions): AsyncIterable<Extent> {
  return flattenExtentBatches(qcow2ExtentBatches(core, view, options));
}

/** The same extents in arrays, one per batch of segments (Disk.extentBatches). */
export function qcow2ExtentBatches(core: Qcow2Image, view: MappingView, options?: ExtentOptions): AsyncIterable<Extent[]> {
  core.assertOpen();
  const { start, end } = extentRange(options, view.size);
  return extentRuns(core, view, start, end, options?.topOnly ?? false, options?.hostOffsets ?? false, options?.fileHoles ?? false);
}

/**
 * The extents, merged as `mergeExtents` merges them, in this one generator
 * over batches of segments, an array per batch: an image of tens of
 * millions of extents paid a promise per extent in each of three
 * generators (segments, runs, merge), more than the walk itself.
 */
async function* extentRuns(core: Qcow2Image, view: MappingView, start: number, end: number, topOnly: boolean, hostOffsets: boolean, fileHoles: boolean): AsyncGenerator<Extent[]> {
  const file = core.dataFile ?? core.storage;
  const fileName = file.name;
  // An encrypted image's bytes at a host offset are not the guest's: no host offsets (qemu-img map shows none either),
  // and a hole of its file reads as zeros before decryption, not after.
  const hosts = hostOffsets && !core.encryption;
  // With fileHoles, clusters stored over holes of the file (preallocation=metadata, a sparse copy of the image) are zeros.
  const holes = fileHoles && !core.encryption ? await FileHoles.of(file) : undefined;
  let pending: Extent | undefined;
  let out: Extent[] = [];
  /** Merges `e` into the pending extent, or puts the pending one out (and `e` pending in its place). */
  const next = (e: Extent): void => {
    if (e.length === 0) return;
    if (pending && canMerge(pending, e)) {
      pending.length += e.length;
      return;
    }
    if (pending) out.push(pending);
    pending = e;
  };
  for await (const batch of segmentBatches(core, view, start, end)) {
    for (const seg of batch) {
      const backing = core.backing;
      if (seg.kind !== 'hole' || topOnly || !backing) {
        const e = segmentExtent(seg, hosts, fileName);
        if (holes && seg.kind === 'data' && seg.host !== undefined) {
          if (e.length <= FILE_HOLES_SLICE) {
            const split = splitAtFileHoles(e, seg.host, file, holes);
            for (const piece of split instanceof Promise ? await split : split) next(piece);
            continue;
          }
          // A run of gigabytes over a file of millions of holes: its pieces go out a slice at a time.
          for await (const part of fileHolePieces(e, seg.host, file, holes)) {
            for (const piece of part) next(piece);
            if (out.length >= BATCH_MAX) {
              yield out;
              out = [];
            }
          }
          continue;
        }
        next(e);
        continue;
      }
      const inBacking = Math.max(0, Math.min(seg.length, backing.size - seg.offset));
      const { offset, length, host } = seg;
      if (inBacking > 0) {
        for await (const e of backing.extents({ offset, length: inBacking, hostOffsets, fileHoles })) {
          next({ ...e, depth: (e.depth ?? 0) + 1 });
          // A hole of this layer may cover millions of the backing file's extents: they go out as they come.
          if (out.length >= BATCH_MAX) {
            yield out;
            out = [];
          }
        }
      }
      // Past the backing file's end the hole is this layer's own; an unallocated subcluster keeps its cluster's host offset (as qemu-img map shows it).
      if (inBacking < length) {
        const rest = host !== undefined ? host + inBacking : undefined;
        next(segmentExtent({ kind: 'hole', offset: offset + inBacking, length: length - inBacking, ...(rest !== undefined ? { host: rest } : {}) }, hosts, fileName));
      }
    }
    if (out.length) {
      yield out;
      out = [];
    }
  }
  if (pending) yield [pending];
}

/** Whether `b` continues `a` as one extent (mergeExtents' rule): same kind, depth and file, adjacent, host offsets both absent or contiguous. */
function canMerge(a: Extent, b: Extent): boolean {
  if (a.kind !== b.kind || a.depth !== b.depth || a.file !== b.file || a.offset + a.length !== b.offset) return false;
  if (a.hostOffset === undefined || b.hostOffset === undefined) return a.hostOffset === b.hostOffset;
  return a.hostOffset + a.length === b.hostOffset;
}
