/**
 * Resizing the active layer (qemu-img resize): the L1 table grows (moving
 * to new clusters) or the clusters and L2 tables past the new end go.
 */
import { invalidArg, unsupported } from '@img/block';
import { MAX_L1_TABLE_BYTES, EXT_BITMAPS } from './constants.js';
import { findExtension } from './extensions.js';
import type { MappingView } from './mapping-view.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { exclusiveQcow2, writableRange } from './io.js';
import { zeroOrDiscardExclusive } from './writer.js';

const FORMAT = 'qcow2';

/** Changes the virtual size of the active layer: growing always works; shrinking needs `{ shrink: true }` and drops the data past the new end. */
export async function resizeQcow2(core: Qcow2Image, newSize: number, options: { shrink?: boolean } = {}): Promise<void> {
  writableRange(core, 0, 0);
  checkResize(core, core.active.size, newSize, options);
  // Writes in flight finish first and new ones wait: the L1 table may move.
  await exclusiveQcow2(core, () => resizeLayer(core, core.active, newSize), { refreshOverlap: true });
}

/** Refuses sizes that are not multiples of 512, need an L1 table past qemu's bound, or shrink without being asked to. */
function checkResize(s: Qcow2Image, old: number, newSize: number, options: { shrink?: boolean }): void {
  if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % 512 !== 0) {
    throw invalidArg(FORMAT, `invalid size ${newSize} (a non-negative multiple of 512)`, { field: 'size' });
  }
  if (Math.ceil(newSize / s.geom.l2Coverage) * 8 > MAX_L1_TABLE_BYTES) {
    throw invalidArg(FORMAT, `size ${newSize} needs an L1 table over qemu's 32 MiB bound with ${s.geom.clusterSize}-byte clusters`, { field: 'size' });
  }
  if (newSize < old && !options.shrink) {
    throw invalidArg(FORMAT, `shrinking from ${old} to ${newSize} bytes loses data; pass { shrink: true } to allow it`, { field: 'size' });
  }
}

/** Changes the size of the active layer `view`; the caller holds the writer exclusively. */
async function resizeLayer(s: Qcow2Image, view: MappingView, newSize: number): Promise<void> {
  const { map } = s.writer!;
  const old = view.size;
  if (findExtension(s.extensions, EXT_BITMAPS)) {
    throw unsupported(FORMAT, s.file, 'the image has persistent bitmaps, which a resize would invalidate (remove them first, as qemu requires)', { field: 'size' });
  }
  if (newSize < old) {
    // The new size reaches the disk before anything past it is freed: a crash in between leaves the
    // new size with clusters past it still referenced (unreachable, at worst leaked when dropped),
    // never the old size with part of its tail gone.
    s.setHeader({ size: newSize });
    await writeHeader(s);
    await s.storage.flush();
    const cs = s.geom.clusterSize;
    const tailEnd = Math.min(old, Math.ceil(newSize / cs) * cs);
    // Zero the tail of the last cluster so that growing again shows zeros there, then drop the rest.
    if (tailEnd > newSize) await zeroOrDiscardExclusive(s, newSize, tailEnd - newSize, 'zero', true);
    if (old > tailEnd) await zeroOrDiscardExclusive(s, tailEnd, old - tailEnd, 'discard', true);
    await map.dropTablesFrom(Math.ceil(newSize / s.geom.l2Coverage));
  } else {
    await map.growL1(Math.ceil(newSize / s.geom.l2Coverage));
  }
  s.setSize(newSize);
  await writeHeader(s);
  await s.storage.flush();
  // The new area reads as zeros even where a longer backing file has data (as qemu does).
  const backingEnd = Math.min(newSize, s.backing?.size ?? 0);
  if (backingEnd > old) await zeroOrDiscardExclusive(s, old, backingEnd - old, 'zero', true);
}
