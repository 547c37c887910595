/**
 * The extents of a view (active layer or snapshot), from L1/L2 metadata
 * only: unallocated ranges are resolved through the backing chain (depth
 * = layer), unless the caller asks for the top layer alone.
 */
import { extentRange, mergeExtents } from '@img/block';
import type { Extent, ExtentOptions } from '@img/block';
import { segmentExtent } from './reader.js';
import type { MappingView } from './mapping-view.js';
import { segments } from './segments.js';
import type { Qcow2Image } from './core.js';

/** The merged extents of `view` over the requested range. */
export function qcow2Extents(core: Qcow2Image, view: MappingView, options?: ExtentOptions): AsyncIterable<Extent> {
  core.assertOpen();
  const { start, end } = extentRange(options, view.size);
  return mergeExtents(extentRuns(core, view, start, end, options?.topOnly ?? false, options?.hostOffsets ?? false));
}

async function* extentRuns(core: Qcow2Image, view: MappingView, start: number, end: number, topOnly: boolean, hostOffsets: boolean): AsyncGenerator<Extent> {
  const fileName = core.dataFile?.name ?? core.storage.name;
  for await (const seg of segments(core, view, start, end)) {
    const backing = core.backing;
    if (seg.kind !== 'hole' || topOnly || !backing) {
      // An encrypted image's bytes at a host offset are not the guest's: no host offsets (qemu-img map shows none either).
      yield segmentExtent(seg, hostOffsets && !core.encryption, fileName);
      continue;
    }
    const inBacking = Math.max(0, Math.min(seg.length, backing.size - seg.offset));
    if (inBacking > 0) {
      for await (const e of backing.extents({ offset: seg.offset, length: inBacking, hostOffsets })) {
        yield { ...e, depth: (e.depth ?? 0) + 1 };
      }
    }
    // Past the backing file's end the hole is this layer's own; an unallocated subcluster keeps its cluster's host offset (as qemu-img map shows it).
    if (inBacking < seg.length) {
      const host = seg.host !== undefined ? seg.host + inBacking : undefined;
      yield segmentExtent({ ...seg, offset: seg.offset + inBacking, length: seg.length - inBacking, ...(host !== undefined ? { host } : {}) }, hostOffsets && !core.encryption, fileName);
    }
  }
}
