/**
 * Writing an open VHD: writes, zero writes and discards. Fixed disks write
 * straight to the file; dynamic and differencing disks write block by
 * block under each block's lock, allocating blocks through the allocator
 * (allocator.ts) and setting sector bits only after the data is durable.
 * Overlapping calls take effect in the order they were made (the core's
 * CallOrder).
 */
import { unsupported, type WriteZeroesOptions } from '@img/block';
import { allocateBlock } from './allocator.js';
import { BAT_UNUSED } from './bat.js';
import { allBitsSet, setBits } from './bitmap.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { readBlock } from './read.js';
import { FORMAT } from './state.js';

const ZERO_CHUNK = 4 * 1024 * 1024;

/**
 * Writes `data` at `offset`. Not async itself (so a bad range throws at
 * once; the facade turns that into a rejection), which keeps the hops in
 * front of the core's gate what they were.
 */
export function writeVhd(core: VhdImage, offset: number, data: Uint8Array): Promise<void> {
  core.assertWritable(offset, data.length);
  return core.shared(() =>
    core.order.run(
      offset,
      data.length,
      async () => {
        // Again once in order: a resize called earlier may have shrunk the disk.
        core.assertWritable(offset, data.length);
        await writeRange(core, offset, data.length, data);
      },
      { register: true },
    ),
  );
}

/** Makes [offset, offset + length) read as zeros (discard is the same with `mayUnmap`); not async itself, as writeVhd. */
export function writeVhdZeroes(core: VhdImage, offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
  core.assertWritable(offset, length);
  return core.shared(() => core.order.run(offset, length, () => writeZeroes(core, offset, length, options), { register: true }));
}

async function writeZeroes(core: VhdImage, offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
  core.assertWritable(offset, length);
  const s = core.state;
  if (s.type === 'fixed') {
    // The data area is a raw disk: punch a hole where the storage can.
    if (options.mayUnmap !== false && s.storage.punchHole && (await s.storage.punchHole(offset, length))) return;
    await writeRange(core, offset, length, undefined);
    return;
  }
  // Dynamic: unallocated blocks already read as zeros. Differencing: only
  // where the parent has nothing but zeros may a block stay unallocated.
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const block = Math.floor(pos / s.blockSize);
    const next = Math.min(end, (block + 1) * s.blockSize);
    if (s.bat[block] === BAT_UNUSED && (await belowIsZero(core, pos, next - pos))) {
      pos = next;
      continue;
    }
    await writeRange(core, pos, next - pos, undefined);
    pos = next;
  }
}

async function belowIsZero(core: VhdImage, offset: number, length: number): Promise<boolean> {
  const s = core.state;
  if (s.type !== 'differencing') return true;
  // Without its parent (noBacking) a differencing disk cannot know: write the zeros.
  if (!s.parent) return false;
  if (offset >= s.parent.size) return true;
  const n = Math.min(length, s.parent.size - offset);
  for await (const e of s.parent.extents({ offset, length: n })) if (e.kind === 'data') return false;
  return true;
}

/** Writes `data` (or zeros when undefined) over [offset, offset + length). */
async function writeRange(core: VhdImage, offset: number, length: number, data: Uint8Array | undefined): Promise<void> {
  const s = core.state;
  if (s.type === 'fixed') {
    if (data) return s.storage.write(offset, data);
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, length));
    for (let pos = 0; pos < length; pos += zeros.length) {
      const n = Math.min(zeros.length, length - pos);
      await s.storage.write(offset + pos, zeros.subarray(0, n));
    }
    return;
  }
  // Blocks are written side by side (each under its own lock; allocations still take turns), so a
  // chunk that spans blocks costs the slowest block, not their sum. Zeros are written a piece at a time.
  const pieces: Promise<void>[] = [];
  let done = 0;
  while (done < length) {
    const pos = offset + done;
    const block = Math.floor(pos / s.blockSize);
    const inBlock = pos - block * s.blockSize;
    const n = Math.min(s.blockSize - inBlock, length - done, ZERO_CHUNK);
    const piece = data ? data.subarray(done, done + n) : new Uint8Array(n);
    const p = core.locks.run(block, () => writeBlock(core, block, inBlock, piece));
    if (data) pieces.push(p);
    else await p;
    done += n;
  }
  const results = await Promise.allSettled(pieces);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Do the first and last sectors of [first, last) of `block` live in this layer? */
async function sectorsPresent(core: VhdImage, block: number, first: number, last: number): Promise<boolean> {
  if (core.state.bat[block] === BAT_UNUSED) return false;
  const bitmap = await core.bitmap(block);
  return allBitsSet(bitmap, first, 1) && allBitsSet(bitmap, last - 1, 1);
}

/** Writes `piece` at `inBlock` of `block`; runs under the block's lock. */
async function writeBlock(core: VhdImage, block: number, inBlock: number, piece: Uint8Array): Promise<void> {
  const s = core.state;
  const first = Math.floor(inBlock / VHD_SECTOR);
  const last = Math.ceil((inBlock + piece.length) / VHD_SECTOR);
  let sectors = piece;
  if (inBlock % VHD_SECTOR !== 0 || piece.length % VHD_SECTOR !== 0) {
    // Partial sectors: start from what the sectors read as now (in a
    // differencing disk that is the parent's data: copy-on-write).
    if (s.type === 'differencing' && !s.parent && !(await sectorsPresent(core, block, first, last))) {
      throw unsupported(FORMAT, s.storage.name, "a partial-sector write into a differencing disk opened without its parent (noBacking) would lose the parent's bytes");
    }
    sectors = new Uint8Array((last - first) * VHD_SECTOR);
    await readBlock(core, block, first * VHD_SECTOR, sectors);
    sectors.set(piece, inBlock - first * VHD_SECTOR);
  }
  if (s.bat[block] === BAT_UNUSED) {
    await core.allocator.run(() => allocateBlock(core, block, first, last, sectors));
    return;
  }
  const dataStart = s.bat[block]! * VHD_SECTOR + s.bitmapBytes;
  await s.storage.write(dataStart + first * VHD_SECTOR, sectors);
  const bitmap = await core.bitmap(block);
  if (!allBitsSet(bitmap, first, last - first)) {
    // The data must be stable before a bit says it is there.
    await s.storage.flush();
    const updated = bitmap.slice();
    setBits(updated, first, last - first);
    await s.storage.write(s.bat[block]! * VHD_SECTOR, updated);
    core.setBitmap(block, updated);
  }
}
