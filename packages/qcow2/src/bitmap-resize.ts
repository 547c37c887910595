/**
 * Resizing an image with its persistent bitmaps (qemu-img resize and amend
 * -o size=, which keep them, resized; spec: "Bitmaps").
 */
import { readU16Be, readU32Be, unsupported, writeU32Be } from '@img/block';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS } from './constants.js';
import { findExtension, parseBitmapsExtension } from './extensions.js';
import { hasFeature } from './header.js';
import type { Qcow2Image } from './core.js';
import type { MappingView } from './mapping-view.js';
import { bitmapCoveredLength } from './bitmaps.js';
import { BITMAP_FLAG_IN_USE, checkBitmapsExtension, parseBitmapDirectory } from './bitmap-edit-directory.js';
import { MAX_BITMAP_PHYS_BYTES, MAX_BITMAP_TABLE_SIZE, bitmapBytes, knownBitmap, readBits, writeBitmapState, zeroBits, type Planned } from './bitmap-write.js';

const FORMAT = 'qcow2';

/**
 * Changes the disk size with its persistent bitmaps, as qemu-img resize
 * and amend -o size= do (qemu keeps them, resized): a consistent bitmap
 * keeps its bits below the new end, the bits a grow adds are clear, and its
 * flags stay as they were; a bitmap qemu calls inconsistent (in use, or of
 * a kind it does not know) is left as it is, as qemu leaves it. The order
 * is qemu's: the bitmaps to resize are marked in use (directory rewritten
 * in place, flushed), `resize` changes the size, then the resized bitmaps
 * are written copy-on-write and cluster 0 switched to them (in use clear
 * again), then their old tables and data are released. A crash in between
 * leaves bitmaps in use, which qemu calls inconsistent and asks to remove,
 * never a bitmap whose table does not fit the disk. Nothing is written when
 * a bitmap cannot be read or resized. The caller holds the writer
 * exclusively and, when this returns true (bitmaps rewritten), reloads the
 * bitmap tracker afterwards.
 */
export async function resizeWithBitmaps(s: Qcow2Image, view: MappingView, newSize: number, resize: () => Promise<void>): Promise<boolean> {
  const cs = s.geom.clusterSize;
  const ext = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  // Bitmaps the image calls inconsistent are dropped on the first write (beforeFirstWrite), as qemu drops them.
  const plain = async () => {
    await resize();
    return false;
  };
  if (!ext || !hasFeature(s.header.autoclearFeatures, AUTOCLEAR_BITMAPS) || s.header.version < 3) return plain();
  await s.bitmaps?.commit(); // changes recorded so far go into the bitmaps at the old size
  checkBitmapsExtension(ext, s.fileSize, cs, s.file);
  const dir = await s.storage.read(ext.bitmapDirectoryOffset, ext.bitmapDirectorySize);
  const stored = parseBitmapDirectory(dir, ext.nbBitmaps, ext.bitmapDirectoryOffset, s.file);
  const oldSize = bitmapCoveredLength(s.header.size);
  const size = bitmapCoveredLength(newSize);
  const plan: Planned[] = [];
  for (const e of stored) {
    const p: Planned = { entry: { ...e }, replaced: false, stored: e };
    plan.push(p);
    if (e.flags & BITMAP_FLAG_IN_USE || !knownBitmap(e)) continue;
    const g = 2 ** e.granularityBits;
    const bytes = bitmapBytes(size, g);
    if (bytes > MAX_BITMAP_PHYS_BYTES || Math.ceil(bytes / cs) > MAX_BITMAP_TABLE_SIZE) {
      throw unsupported(FORMAT, s.file, `bitmap "${e.name}" would need ${bytes} bytes for ${newSize} bytes at granularity ${g}, over qemu's bound of ${MAX_BITMAP_PHYS_BYTES}`, { field: 'size' });
    }
    const old = await readBits(s, e);
    const bits = zeroBits(s, e, size);
    bits.set(old.subarray(0, Math.min(old.length, bits.length)));
    // Bits past the old end (a grow) and past the new end (a shrink) are clear.
    clearBitsFrom(bits, Math.ceil(Math.min(oldSize, size) / g));
    p.bits = bits;
    p.replaced = true;
    p.entry.tableSize = Math.ceil(bytes / cs);
  }
  if (!plan.some((p) => p.replaced)) return plain();
  await s.beforeFirstWrite();
  s.setBitmapTracker(undefined); // it would keep the old directory
  // 1. in use, in place (what a writable qemu does on open)
  const marked = dir.slice();
  for (let at = 0, i = 0; i < plan.length; i++) {
    if (plan[i]!.replaced) writeU32Be(marked, at + 12, (readU32Be(marked, at + 12) | BITMAP_FLAG_IN_USE) >>> 0); // 12: flags
    at = Math.ceil((at + 24 + readU32Be(marked, at + 20) + readU16Be(marked, at + 18)) / 8) * 8; // 18: name_size, 20: extra_data_size
  }
  await s.storage.write(ext.bitmapDirectoryOffset, marked);
  await s.storage.flush();
  // 2. the new size
  await resize();
  // 3. the resized bitmaps (flags as they were), the switch, the release of the old ones
  await writeBitmapState(s, view, { plan, removed: [], ext });
  return true;
}

/** Clears every bit from bit `first` on. */
function clearBitsFrom(bits: Uint8Array, first: number): void {
  const byte = first >> 3;
  if (byte >= bits.length) return;
  bits[byte] = bits[byte]! & ((1 << (first & 7)) - 1);
  bits.fill(0, byte + 1);
}
