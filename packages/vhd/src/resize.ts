/**
 * Resizing fixed, dynamic and differencing disks.
 *
 * Dynamic and differencing disks grow within their BAT when it has room;
 * otherwise the BAT grows in place: the blocks (and parent locator data)
 * that lie where the larger BAT will go are first copied to the end of the
 * file, each one's BAT entry switched after its copy is flushed, then the
 * larger BAT, the header and the footer are written in that order. A crash
 * at any point leaves a valid image of the old or the new size (at worst
 * with leaked, unreferenced copies).
 */
import { invalidArg, unsupported } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes, serializeBat } from './bat.js';
import { FOOTER_SIZE } from './footer.js';
import { VHD_MAX_SIZE, VHD_SECTOR, chsForSectors, chsProduct, isMaxGeometry, vhdSizeRule } from './geometry.js';
import type { VhdDisk } from './image.js';
import { FORMAT, type VhdState } from './state.js';
import { locatorSpaceBytes } from './reserved-space.js';
import { writeBatEntry, writeFooters, writeHeader } from './write-metadata.js';

const COPY_CHUNK = 4 * 1024 * 1024;

async function copyWithin(s: VhdState, from: number, to: number, length: number): Promise<void> {
  for (let pos = 0; pos < length; pos += COPY_CHUNK) {
    const n = Math.min(COPY_CHUNK, length - pos);
    const bytes = await s.storage.read(from + pos, n);
    const full = bytes.length === n ? bytes : (() => {
      const b = new Uint8Array(n);
      b.set(bytes);
      return b;
    })();
    await s.storage.write(to + pos, full);
  }
}

/** Sets the footer's sizes and geometry for `newSize`, keeping the sizing rule readers apply. */
function footerForSize(s: VhdState, newSize: number): VhdState['footer'] {
  const f = { ...s.footer };
  const sectors = newSize / VHD_SECTOR;
  const byCurrentSize = vhdSizeRule(f.creatorApp, f.geometry, s.sizeMode).rule === 'current-size';
  if (byCurrentSize) {
    if (!isMaxGeometry(f.geometry)) f.geometry = chsForSectors(sectors);
  } else {
    const g = chsForSectors(sectors);
    if (chsProduct(g) !== sectors) {
      throw invalidArg(
        FORMAT,
        `${s.storage.name}: creator "${f.creatorApp}" is sized by its CHS geometry and ${newSize} bytes is not CHS-exact (nearest below: ${chsProduct(g) * VHD_SECTOR})`,
        { field: 'size' },
      );
    }
    f.geometry = g;
  }
  f.currentSize = newSize;
  return f;
}

/** Resizes an open, writable VHD (called by VhdDisk.resize with the allocator held). */
export async function resizeVhd(disk: VhdDisk, requested: number, options: { shrink?: boolean }): Promise<void> {
  const s = disk._state;
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
    s.footer = footer;
    const oldFooterAt = s.fixedFooterOffset;
    if (newSize > oldSize) {
      await s.storage.truncate(newSize + FOOTER_SIZE);
      s.fixedFooterOffset = newSize;
      await writeFooters(s);
      await s.storage.flush();
      // The old footer now lies inside the disk: it must read as zeros.
      await s.storage.write(oldFooterAt, new Uint8Array(Math.min(FOOTER_SIZE, newSize - oldFooterAt)));
    } else {
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
    // Blocks past the new end are dropped; the tail of the last block is zeroed
    // so that growing again shows zeros there.
    const tail = newSize % s.blockSize;
    const last = Math.floor(newSize / s.blockSize);
    if (tail !== 0 && s.bat[last] !== BAT_UNUSED) {
      const dataStart = s.bat[last]! * VHD_SECTOR + s.bitmapBytes;
      await s.storage.write(dataStart + tail, new Uint8Array(s.blockSize - tail));
      await s.storage.flush();
    }
    for (let i = needed; i < s.bat.length; i++) {
      if (s.bat[i] === BAT_UNUSED) continue;
      await writeBatEntry(s, i, BAT_UNUSED);
      s.bat[i] = BAT_UNUSED;
    }
    await s.storage.flush();
  } else if (needed > s.bat.length) {
    await growBat(s, needed);
  }
  s.footer = footer;
  s.size = newSize;
  await writeFooters(s);
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
    await copyWithin(s, start, to, span);
    s.nextFree = to + span;
    await writeFooters(s, { head: false });
    await s.storage.flush();
    await writeBatEntry(s, i, to / VHD_SECTOR);
    await s.storage.flush();
    s.bat[i] = to / VHD_SECTOR;
  }
  // Parent locator data in the way moves too (its entry points at the copy), and so does
  // space a locator entry only reserves (Hyper-V, vhd-util), so that no later writer puts
  // a locator into the grown BAT.
  for (const l of h.parentLocators) {
    const space = Math.max(Math.ceil(l.platformDataLength / VHD_SECTOR) * VHD_SECTOR, locatorSpaceBytes(l.platformDataSpace));
    if (space === 0 || l.platformDataOffset < VHD_SECTOR) continue;
    if (!inTheWay(l.platformDataOffset, l.platformDataOffset + space)) continue;
    const to = Math.max(s.nextFree, newEnd);
    await copyWithin(s, l.platformDataOffset, to, space);
    s.nextFree = to + space;
    await writeFooters(s, { head: false });
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
  s.nextFree = Math.max(s.nextFree, newEnd);
  const bat = new Uint32Array(entries).fill(BAT_UNUSED);
  bat.set(s.bat);
  await s.storage.write(h.tableOffset, serializeBat(bat));
  await writeFooters(s, { head: false });
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
