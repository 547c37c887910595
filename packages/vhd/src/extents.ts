/**
 * The allocation map of a VHD from its BAT and sector bitmaps (never its
 * data): dynamic disks say `zero` for what they do not hold; differencing
 * disks ask their parent (depth + 1), or say `hole` with `topOnly` or
 * without a parent.
 */
import type { Extent, ExtentOptions } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { bitRuns } from './bitmap.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdDisk } from './image.js';
import type { VhdState } from './state.js';

/** Raw (unmerged) extents of [start, end). */
export async function* extentRuns(disk: VhdDisk, start: number, end: number, options: ExtentOptions): AsyncGenerator<Extent> {
  const s = disk._state;
  const host = (hostOffset: number) => (options.hostOffsets ? { hostOffset, file: s.storage.name } : {});
  if (start >= end) return;
  if (s.type === 'fixed') {
    yield { offset: start, length: end - start, kind: 'data', depth: 0, ...host(start) };
    return;
  }
  let pos = start;
  while (pos < end) {
    const block = Math.floor(pos / s.blockSize);
    const base = block * s.blockSize;
    const next = Math.min(end, base + s.blockSize);
    const entry = s.bat[block] ?? BAT_UNUSED;
    if (entry === BAT_UNUSED) {
      // A run of unallocated blocks is one question to the layer below.
      let last = block;
      while ((last + 1) * s.blockSize < end && (s.bat[last + 1] ?? BAT_UNUSED) === BAT_UNUSED) last++;
      const runEnd = Math.min(end, (last + 1) * s.blockSize);
      yield* extentsBelow(s, pos, runEnd, options);
      pos = runEnd;
      continue;
    } else {
      const bitmap = await disk._bitmap(block);
      const dataStart = entry * VHD_SECTOR + s.bitmapBytes;
      const first = Math.floor((pos - base) / VHD_SECTOR);
      const last = Math.ceil((next - base) / VHD_SECTOR);
      for (const run of bitRuns(bitmap, first, last - first)) {
        const from = Math.max(base + run.start * VHD_SECTOR, pos);
        const to = Math.min(base + (run.start + run.count) * VHD_SECTOR, next);
        if (run.set) yield { offset: from, length: to - from, kind: 'data', depth: 0, ...host(dataStart + from - base) };
        else yield* extentsBelow(s, from, to, options);
      }
    }
    pos = next;
  }
}

async function* extentsBelow(s: VhdState, from: number, to: number, options: ExtentOptions): AsyncGenerator<Extent> {
  if (s.type === 'dynamic') {
    yield { offset: from, length: to - from, kind: 'zero', depth: 0 };
    return;
  }
  const parent = s.parent;
  if (options.topOnly || !parent) {
    yield { offset: from, length: to - from, kind: 'hole', depth: 0 };
    return;
  }
  const stop = Math.min(to, parent.size);
  if (from < stop) {
    for await (const e of parent.extents({ offset: from, length: stop - from, hostOffsets: options.hostOffsets ?? false })) {
      yield { ...e, depth: (e.depth ?? 0) + 1 };
    }
  }
  if (stop < to) yield { offset: Math.max(from, stop), length: to - Math.max(from, stop), kind: 'hole', depth: 1 };
}
