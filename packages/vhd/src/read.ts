/**
 * Reading an open VHD: fixed disks straight from the file; dynamic and
 * differencing disks block by block (blocks side by side), honouring the
 * sector bitmap; what this layer does not hold reads as zeros or, in a
 * differencing disk, as its parent's bytes.
 */
import { checkDiskRange } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { bitRuns } from './bitmap.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { FORMAT } from './state.js';

/**
 * Reads [offset, offset + target.length) of the disk into `target` (waits
 * while resize or rebase runs). Not async itself: the facade's call is the
 * only hop in front of the core's gate, as before the split.
 */
export function readVhdInto(core: VhdImage, offset: number, target: Uint8Array): Promise<void> {
  return core.shared(() => readRange(core, offset, target));
}

async function readRange(core: VhdImage, offset: number, target: Uint8Array): Promise<void> {
  core.assertOpen();
  checkDiskRange(FORMAT, core.size, offset, target.length, core.name);
  const s = core.state;
  if (s.type === 'fixed') {
    const n = await s.storage.readInto(offset, target);
    if (n < target.length) target.fill(0, n);
    return;
  }
  // The blocks of a request are read side by side.
  const reads: Promise<void>[] = [];
  let done = 0;
  while (done < target.length) {
    const pos = offset + done;
    const block = Math.floor(pos / s.blockSize);
    const inBlock = pos - block * s.blockSize;
    const n = Math.min(s.blockSize - inBlock, target.length - done);
    reads.push(readBlock(core, block, inBlock, target.subarray(done, done + n)));
    done += n;
  }
  const results = await Promise.allSettled(reads);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Reads `out.length` bytes at `inBlock` of `block` (inside the block). */
export async function readBlock(core: VhdImage, block: number, inBlock: number, out: Uint8Array): Promise<void> {
  const s = core.state;
  const base = block * s.blockSize;
  const entry = block < s.bat.length ? s.bat[block]! : BAT_UNUSED;
  if (entry === BAT_UNUSED) return readBelow(core, base + inBlock, out);
  const dataStart = entry * VHD_SECTOR + s.bitmapBytes;
  if (s.type === 'dynamic' && !core.hasBitmap(block)) {
    // Dynamic disk, bitmap not cached: read it and the data together (blocks are mostly whole),
    // then zero the sectors the bitmap says are not stored. One wait instead of two.
    const [bitmap, n] = await Promise.all([core.bitmap(block), s.storage.readInto(dataStart + inBlock, out)]);
    if (n < out.length) out.fill(0, n);
    const first = Math.floor(inBlock / VHD_SECTOR);
    const last = Math.ceil((inBlock + out.length) / VHD_SECTOR);
    for (const run of bitRuns(bitmap, first, last - first)) {
      if (run.set) continue;
      const from = Math.max(run.start * VHD_SECTOR, inBlock);
      const to = Math.min((run.start + run.count) * VHD_SECTOR, inBlock + out.length);
      out.fill(0, from - inBlock, to - inBlock);
    }
    return;
  }
  const bitmap = await core.bitmap(block);
  const first = Math.floor(inBlock / VHD_SECTOR);
  const last = Math.ceil((inBlock + out.length) / VHD_SECTOR);
  for (const run of bitRuns(bitmap, first, last - first)) {
    const from = Math.max(run.start * VHD_SECTOR, inBlock);
    const to = Math.min((run.start + run.count) * VHD_SECTOR, inBlock + out.length);
    const piece = out.subarray(from - inBlock, to - inBlock);
    if (run.set) {
      const n = await s.storage.readInto(dataStart + from, piece);
      if (n < piece.length) piece.fill(0, n);
    } else {
      await readBelow(core, base + from, piece);
    }
  }
}

/** What a sector not stored in this layer reads as: zeros, or the parent's bytes. */
async function readBelow(core: VhdImage, offset: number, out: Uint8Array): Promise<void> {
  const s = core.state;
  const parent = s.type === 'differencing' ? s.parent : undefined;
  if (!parent || offset >= parent.size) {
    out.fill(0);
    return;
  }
  const n = Math.min(out.length, parent.size - offset);
  await parent.readInto(offset, out.subarray(0, n));
  if (n < out.length) out.fill(0, n);
}
