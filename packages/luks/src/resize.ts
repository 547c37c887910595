/**
 * Resizing a luks image, as qemu's luks driver does it: the file is cut
 * or extended to the payload offset plus the new size. Nothing is
 * encrypted: new space holds the file's zeros, which read as their
 * decryption (noise, as in an image qemu-img resize grew), and
 * preallocation `falloc` and `full` give the new space its place in the
 * file as they do for the file below qemu's luks driver; `metadata` is
 * refused in qemu-img's words (a luks image has none).
 */
import { alignUp, invalidArg, preallocateRange, readOnlyError, unsupported, type ResizeOptions } from '@img/block';
import { SECTOR } from '@img/qcow2/luks';
import type { LuksImage } from './image.js';
import { FORMAT } from './luks-errors.js';

/** Changes the guest size to `newSize` bytes (shrinking only with `options.shrink`). */
export async function resizeLuks(core: LuksImage, newSize: number, options: ResizeOptions = {}): Promise<void> {
  if (core.readOnly) throw readOnlyError(FORMAT, core.file);
  if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize + core.payloadOffset > Number.MAX_SAFE_INTEGER) throw invalidArg(FORMAT, `invalid size ${newSize}`, { field: 'size' });
  const prealloc = options.preallocation ?? 'off';
  if (prealloc === 'metadata') throw unsupported(FORMAT, core.file, 'Unsupported preallocation mode: metadata', { field: 'preallocation', actual: prealloc });
  const rounded = alignUp(newSize, SECTOR);
  if (rounded < core.size && !options.shrink) throw invalidArg(FORMAT, `shrinking from ${core.size} to ${rounded} bytes loses data; pass shrink to allow it`, { field: 'size' });
  if (rounded < core.size && prealloc !== 'off') throw invalidArg(FORMAT, 'preallocation is for growing only', { field: 'preallocation' });
  const oldEnd = core.payloadOffset + core.size;
  const newEnd = core.payloadOffset + newSize;
  await core.storage.truncate(newEnd);
  core.size = rounded;
  if (prealloc !== 'off' && newEnd > oldEnd) await preallocateRange(core.storage, oldEnd, newEnd - oldEnd, prealloc, options.signal);
}
