/**
 * The block allocator: a new block goes at the end of the data (where the
 * footer is), behind every structure the image owns. Called with the
 * core's allocator mutex held.
 */
import { corrupt } from '@img/block';
import { setBits } from './bitmap.js';
import { FOOTER_SIZE, serializeFooter } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { overlapMessage, regionsOverlap } from './layout.js';
import { FORMAT } from './state.js';
import { writeBatEntry, writeFooters } from './write-metadata.js';

const ZERO_CHUNK = 4 * 1024 * 1024;

/**
 * Allocates `block` at the end of the data with `sectors` written over
 * sectors [first, last): bitmap and data, the footer moved behind them, a
 * flush, then the BAT entry and another flush. A crash before the BAT
 * write leaves an unreferenced block (a leak), never a BAT entry pointing
 * at unwritten data.
 */
export async function allocateBlock(core: VhdImage, block: number, first: number, last: number, sectors: Uint8Array): Promise<void> {
  const s = core.state;
  const at = s.nextFree;
  const span = s.bitmapBytes + s.blockSize;
  const known = core.sizeAfterAlloc;
  core.sizeAfterAlloc = undefined;
  const fileSize = known && known.nextFree === at ? known.size : await s.storage.size();
  // The block and the footer behind it land in space no structure owns (open validated the layout; this keeps it so).
  const target = { start: at, end: at + span + FOOTER_SIZE, what: `block ${block} and the footer behind it` };
  const taken = [...s.metadata, ...(s.reserved ?? [])].find((m) => regionsOverlap(target, m));
  if (taken) throw corrupt(FORMAT, s.storage.name, `a new block would be written where it overlaps: ${overlapMessage(target, taken)}`, { field: `BAT entry ${block}`, offset: at });
  const bitmap = new Uint8Array(s.bitmapBytes);
  // Dynamic disks: every sector present, as qemu does (it ignores bitmaps
  // on read); the block's unwritten sectors are zeros. Differencing disks:
  // only the sectors written.
  if (s.type === 'dynamic') bitmap.fill(0xff);
  else setBits(bitmap, first, last - first);
  const dataStart = at + s.bitmapBytes;
  const nextFree = at + span;
  // Bitmap, data, zeros and the moved footer all land before the flush that precedes the BAT
  // entry: they are started together (in this order) and awaited once. Where they touch (data
  // from the block's first sector follows the bitmap, data to its last sector meets the footer)
  // they go out as one writev: a whole block, bitmap and footer included, is one system call.
  const joinHead = first === 0 && s.storage.writev !== undefined;
  const joinTail = last * VHD_SECTOR === s.blockSize && s.storage.writev !== undefined;
  const footer = joinTail ? serializeFooter(s.footer) : undefined;
  const writes: Promise<void>[] = [];
  const pieces = [...(joinHead ? [bitmap] : []), sectors, ...(footer ? [footer] : [])];
  if (!joinHead) writes.push(s.storage.write(at, bitmap));
  writes.push(pieces.length > 1 ? s.storage.writev!(joinHead ? at : dataStart + first * VHD_SECTOR, pieces) : s.storage.write(dataStart + first * VHD_SECTOR, sectors));
  // Space past the old end of the file reads as zeros; anything before it (an
  // old footer, junk) is zeroed where the block's data will be read.
  for (const [from, to] of [
    [dataStart, dataStart + first * VHD_SECTOR],
    [dataStart + last * VHD_SECTOR, at + span],
  ] as const) {
    const stop = Math.min(to, fileSize);
    for (let pos = from; pos < stop; pos += ZERO_CHUNK) {
      writes.push(s.storage.write(pos, new Uint8Array(Math.min(ZERO_CHUNK, stop - pos))));
    }
  }
  s.nextFree = nextFree;
  if (!footer) writes.push(writeFooters(s, { head: false }));
  const results = await Promise.allSettled(writes);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    // A full device (or another write error) before the BAT names the block: the file goes back to what it
    // was, footer at the end, so that every reader (qemu's footer copy at 0 or not, libvhdi) opens it as before.
    await restoreEnd(core, at, fileSize).catch(() => undefined);
    throw failed.reason;
  }
  if (fileSize > nextFree + VHD_SECTOR) await s.storage.truncate(nextFree + VHD_SECTOR);
  await s.storage.flush();
  await writeBatEntry(s, block, at / VHD_SECTOR);
  await s.storage.flush();
  s.bat[block] = at / VHD_SECTOR;
  core.setBitmap(block, bitmap);
  core.sizeAfterAlloc = { nextFree, size: nextFree + VHD_SECTOR };
}

/**
 * Undoes an allocation whose writes failed: the file is cut back to its old
 * size (which needs no space) and the footer written where it was, over
 * whatever of the block landed there.
 */
async function restoreEnd(core: VhdImage, at: number, fileSize: number): Promise<void> {
  const s = core.state;
  s.nextFree = at;
  core.sizeAfterAlloc = undefined;
  await s.storage.truncate(Math.max(fileSize, at + FOOTER_SIZE));
  await writeFooters(s, { head: false });
  await s.storage.flush();
}
