/**
 * Resizing fixed, dynamic and differencing disks.
 *
 * Fixed disks: growing writes the unchanged footer at the new end, zeros
 * over the old one, then the new size; shrinking writes the new size in
 * place, the footer at the new end, then cuts the file. Each step is one
 * sector (or zeros behind the disk's end) and is flushed.
 *
 * Dynamic and differencing disks grow within their BAT when it has room;
 * otherwise the BAT grows in place: the blocks (and parent locator data)
 * that lie where the larger BAT will go are first copied to the end of the
 * file, each one's BAT entry switched after its copy is flushed, then the
 * larger BAT, the header and the footer are written in that order. Whenever
 * a write goes where the footer at the end of the file is, the footer moves
 * behind it first (and is flushed), so the file always ends with a footer.
 * A shrink writes the new size first, then clears what lies behind it. A
 * crash at any point leaves a valid image of the old or the new size (at
 * worst with leaked, unreferenced copies).
 */
import { invalidArg, unsupported } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes, serializeBat } from './bat.js';
import { FOOTER_SIZE } from './footer.js';
import { VHD_MAX_SIZE, VHD_SECTOR, chsForSectors, chsProduct, isMaxGeometry, vhdSizeRule } from './geometry.js';
import type { VhdImage } from './image.js';
import { FORMAT, type VhdState } from './state.js';
import { locatorSpaceBytes } from './reserved-space.js';
import { writeBatEntry, writeFooters, writeHeader } from './write-metadata.js';

const COPY_CHUNK = 4 * 1024 * 1024;

async function copyWithin(s: VhdState, from: number, to: number, length: number): Promise<void> {
  for (let pos = 0; pos < length; pos += COPY_CHUNK) {
    const n = Math.min(COPY_CHUNK, length - pos);
    const bytes = await s.storage.read(from + pos, n);
    const full =
      bytes.length === n
        ? bytes
        : (() => {
            const b = new Uint8Array(n);
            b.set(bytes);
            return b;
          })();
    await s.storage.write(to + pos, full);
  }
}

async function writeZeros(s: VhdState, at: number, length: number): Promise<void> {
  for (let pos = 0; pos < length; pos += COPY_CHUNK) await s.storage.write(at + pos, new Uint8Array(Math.min(COPY_CHUNK, length - pos)));
}

/** Sets the footer's sizes (current and original) and geometry for `newSize`, keeping the sizing rule readers apply. */
function footerForSize(s: VhdState, newSize: number): VhdState['footer'] {
  const f = { ...s.footer };
  const sectors = newSize / VHD_SECTOR;
  const byCurrentSize = vhdSizeRule(f.creatorApp, f.geometry, s.sizeMode).rule === 'current-size';
  if (byCurrentSize) {
    if (!isMaxGeometry(f.geometry)) f.geometry = chsForSectors(sectors);
  } else {
    const g = chsForSectors(sectors);
    if (chsProduct(g) !== sectors) {
      throw invalidArg(FORMAT, `${s.storage.name}: creator "${f.creatorApp}" is sized by its CHS geometry and ${newSize} bytes is not CHS-exact (nearest below: ${chsProduct(g) * VHD_SECTOR})`, { field: 'size' });
    }
    f.geometry = g;
  }
  f.currentSize = newSize;
  // The original size too: the spec calls it informational, but libvhdi (vhdiinfo, vhdimount) takes the disk's size
  // from it, and would show a grown disk at its old size (and a shrunk one past its end).
  f.originalSize = newSize;
  return f;
}

/**
 * Resizes an open, writable VHD. Blocks may move: it runs alone (no read
 * or write in flight) with the allocator held, and the caches are dropped
 * afterwards.
 */
export async function resizeVhd(core: VhdImage, requested: number, options: { shrink?: boolean }): Promise<void> {
  core.assertMutable();
  await core.exclusive(() =>
    core.allocator.run(async () => {
      await resize(core.state, requested, options);
      core.dropCaches();
    }),
  );
}

async function resize(s: VhdState, requested: number, options: { shrink?: boolean }): Promise<void> {
  if (!Number.isSafeInteger(requested) || requested < 0) throw invalidArg(FORMAT, `invalid size ${requested}`, { field: 'size' });
  const newSize = Math.ceil(requested / VHD_SECTOR) * VHD_SECTOR;
  if (newSize > VHD_MAX_SIZE) throw invalidArg(FORMAT, `size ${newSize} is larger than the VHD maximum of 2040 GiB`, { field: 'size' });
  if (newSize < s.size && !options.shrink) {
    throw invalidArg(FORMAT, `shrinking from ${s.size} to ${newSize} bytes loses data; pass shrink to allow it`, { field: 'size' });
  }
  if (newSize === s.size) return;
  const oldSize = s.size;
  const footer = footerForSize(s, newSize);
  if (s.type === 'fixed') {
    // Every step writes one sector (or zeros behind the disk's end) and is flushed; a footer may
    // describe a disk smaller than the data area in front of it, which is what bridges the steps.
    const oldFooterAt = s.fixedFooterOffset;
    if (newSize > oldSize) {
      // 1. The footer as it is at the new end of the file: the file grows, the disk not yet.
      s.fixedFooterOffset = newSize;
      await writeFooters(s);
      await s.storage.flush();
      // 2. The old footer (and anything else behind the old end) must read as zeros once inside the disk.
      await writeZeros(s, oldSize, Math.min(newSize, oldFooterAt + FOOTER_SIZE) - oldSize);
      await s.storage.flush();
      // 3. The new size.
      s.footer = footer;
      await writeFooters(s);
    } else {
      // 1. The new size in the footer where it is: the disk shrinks, the file not yet.
      s.footer = footer;
      await writeFooters(s);
      await s.storage.flush();
      // 2. The footer at the new end, 3. the file cut behind it.
      s.fixedFooterOffset = newSize;
      await writeFooters(s);
      await s.storage.flush();
      await s.storage.truncate(newSize + FOOTER_SIZE);
    }
    await s.storage.flush();
    s.size = newSize;
    return;
  }
  const needed = Math.ceil(newSize / s.blockSize);
  if (needed > MAX_BAT_ENTRIES) {
    throw invalidArg(FORMAT, `${newSize} bytes of ${s.blockSize}-byte blocks need ${needed} BAT entries, more than readers accept (${MAX_BAT_ENTRIES})`, { field: 'size' });
  }
  if (newSize < oldSize) {
    if (s.type === 'differencing') throw unsupported(FORMAT, s.storage.name, 'shrinking a differencing disk is not supported');
    // The new size first: until it is durable the disk reads as before. A crash after it leaves
    // the dropped blocks referenced past the end (a leak) and old bytes behind the end in the
    // last block, which clearPastEnd (here, or before a later grow) removes before they can show.
    s.footer = footer;
    s.size = newSize;
    await writeFooters(s);
    await s.storage.flush();
    await clearPastEnd(s, newSize);
    return;
  }
  // What a shrink (maybe interrupted) left behind the old end must read as zeros once the disk grows.
  await clearPastEnd(s, oldSize);
  if (needed > s.bat.length) await growBat(s, needed);
  s.footer = footer;
  s.size = newSize;
  await writeFooters(s);
  await s.storage.flush();
}

/**
 * Makes everything behind `size` read as zeros: the rest of the last
 * block's data is zeroed (only when it is not zero already) and BAT
 * entries past it are cleared, each followed by a flush.
 */
async function clearPastEnd(s: VhdState, size: number): Promise<void> {
  const tail = size % s.blockSize;
  const last = Math.floor(size / s.blockSize);
  if (tail !== 0 && last < s.bat.length && s.bat[last] !== BAT_UNUSED) {
    const at = s.bat[last]! * VHD_SECTOR + s.bitmapBytes + tail;
    const old = await s.storage.read(at, s.blockSize - tail);
    if (old.some((b) => b !== 0)) {
      await s.storage.write(at, new Uint8Array(s.blockSize - tail));
      await s.storage.flush();
    }
  }
  let cleared = false;
  for (let i = Math.ceil(size / s.blockSize); i < s.bat.length; i++) {
    if (s.bat[i] === BAT_UNUSED) continue;
    await writeBatEntry(s, i, BAT_UNUSED);
    s.bat[i] = BAT_UNUSED;
    cleared = true;
  }
  if (cleared) await s.storage.flush();
}

/**
 * Moves the footer at the end of the file to `at` (behind where the
 * caller is about to write), and flushes, so that the file ends with a
 * footer whatever part of the following writes a crash keeps.
 */
async function footerTo(s: VhdState, at: number): Promise<void> {
  s.nextFree = at;
  await writeFooters(s, { head: false });
  await s.storage.flush();
}

async function growBat(s: VhdState, entries: number): Promise<void> {
  const h = s.header!;
  const oldEnd = h.tableOffset + batBytes(s.bat.length);
  const newEnd = h.tableOffset + batBytes(entries);
  const span = s.bitmapBytes + s.blockSize;
  const inTheWay = (start: number, end: number) => start < newEnd && end > oldEnd;
  // Move blocks out of the way, one at a time: copy, flush, switch the entry.
  const order = [...s.bat.keys()].filter((i) => s.bat[i] !== BAT_UNUSED).sort((a, b) => s.bat[a]! - s.bat[b]!);
  for (const i of order) {
    const start = s.bat[i]! * VHD_SECTOR;
    if (!inTheWay(start, start + span)) continue;
    const to = Math.max(s.nextFree, newEnd);
    await footerTo(s, to + span);
    await copyWithin(s, start, to, span);
    await s.storage.flush();
    await writeBatEntry(s, i, to / VHD_SECTOR);
    await s.storage.flush();
    s.bat[i] = to / VHD_SECTOR;
  }
  // Parent locator data in the way moves too (its entry points at the copy), and so does
  // space a locator entry only reserves (Hyper-V, vhd-util), so that no later writer puts
  // a locator into the grown BAT.
  for (const l of h.parentLocators) {
    const claimed = Math.max(Math.ceil(l.platformDataLength / VHD_SECTOR) * VHD_SECTOR, locatorSpaceBytes(l.platformDataSpace));
    // Only what lies before the footer moves: a hostile data length (4 GiB behind a 4 KiB file) made the resize
    // copy 4 GiB and leave a 4 GiB file (hostile campaign seed 1024 case 377).
    const space = Math.min(claimed, Math.max(0, s.nextFree - l.platformDataOffset));
    if (space === 0 || l.platformDataOffset < VHD_SECTOR) continue;
    if (!inTheWay(l.platformDataOffset, l.platformDataOffset + space)) continue;
    const to = Math.max(s.nextFree, newEnd);
    await footerTo(s, to + space);
    await copyWithin(s, l.platformDataOffset, to, space);
    await s.storage.flush();
    const old = l.platformDataOffset;
    l.platformDataOffset = to;
    const meta = s.metadata.find((m) => m.start === old);
    if (meta) {
      meta.start = to;
      meta.end = to + space;
    } else {
      s.reserved = [...(s.reserved ?? []), { start: to, end: to + space, what: 'reserved parent locator space' }];
    }
    await writeHeader(s);
    await s.storage.flush();
  }
  if (newEnd > s.nextFree) await footerTo(s, newEnd);
  const bat = new Uint32Array(entries).fill(BAT_UNUSED);
  bat.set(s.bat);
  await s.storage.write(h.tableOffset, serializeBat(bat));
  await s.storage.flush();
  h.maxTableEntries = entries;
  await writeHeader(s);
  await s.storage.flush();
  s.bat = bat;
  const meta = s.metadata.find((m) => m.what === 'the BAT');
  if (meta) meta.end = newEnd;
  // What the BAT grew over is no longer reserved (blktap's batmap header right behind it, for one).
  s.reserved = (s.reserved ?? []).filter((r) => !inTheWay(r.start, r.end));
}
