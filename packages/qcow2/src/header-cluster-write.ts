/**
 * Cluster 0 of an open image written again (header, extensions, backing
 * file name) after amend, a backing file change or a bitmap edit: laid
 * out as qemu lays it out (header-cluster.ts), and written in an order
 * that leaves the old header or the new one after a crash. The header
 * fields alone are rewritten by core.ts's writeHeader.
 */
import type { ImageError } from '@img/block';
import { serializeHeader, type Qcow2Header } from './header.js';
import { headerClusterBytes, layoutHeaderCluster } from './header-cluster.js';
import { OVERLAP } from './overlap.js';
import { checkedWrite } from './image-overlap.js';
import type { Qcow2Image } from './core.js';

const SECTOR = 512;

/**
 * Cluster 0 as the image's header, extensions and backing file name lay
 * it out (at least `size` bytes; see layoutHeaderCluster). The layout
 * places the backing file name: the header's backing_file_offset and
 * backing_file_size are set to match (in memory).
 */
export function layoutCluster0(s: Qcow2Image, size: number): Uint8Array {
  const h = { ...s.header };
  const area = layoutHeaderCluster(h, s.extensions, s.backingName, size);
  s.setHeader({ backingFileOffset: h.backingFileOffset, backingFileSize: h.backingFileSize });
  return area;
}

/**
 * How writeHeaderCluster orders a layout that reaches past the first
 * sector, for callers whose crash safety needs another order than qemu's.
 */
export interface HeaderClusterOrder {
  /**
   * Write the part past the first sector first (then flush) and the first
   * sector last, whatever the old layout was, instead of one write where
   * both layouts reach past the first sector.
   */
  sectorZeroLast: true;
  /**
   * Header fields written first, in the header alone over the layout still
   * on disk (then flush), so that a crash while the rest is rewritten
   * leaves a header that disowns what is being rewritten (bitmap edits: the
   * autoclear bitmaps bit clear). Only where the layout reaches past the
   * first sector; none by default.
   */
  interim?: Partial<Qcow2Header>;
}

/**
 * Writes cluster 0 again after a change of the header, its extensions or
 * the backing file name (the one writer of cluster 0 in an open image:
 * amend, backing file changes, bitmap edits), laid out as qemu lays it
 * out. A crash leaves the old header or the new one: a sector is written
 * whole or not at all, so whatever the header in sector 0 refers to beyond
 * it is written (and flushed) first where the old layout does not use it,
 * and stale bytes past the new layout are cleared only after the new
 * header is on disk. Where both layouts reach past the first sector it is
 * one write, as qemu's, unless `order` asks for the first sector last (see
 * HeaderClusterOrder). Everything before it is flushed first. `tooBig`
 * makes the caller's error for a layout that does not fit in one cluster.
 */
export async function writeHeaderCluster(s: Qcow2Image, tooBig: (need: number, clusterSize: number) => ImageError, order?: HeaderClusterOrder): Promise<void> {
  const cs = s.geom.clusterSize;
  const end = headerClusterBytes(s.header, s.extensions, s.backingName);
  if (end > cs) throw tooBig(end, cs);
  const oldEnd = s.headerAreaEnd;
  // The header as the layout on disk has it (layoutCluster0 moves the backing file name's offset).
  const onDisk = { ...s.header };
  const area = layoutCluster0(s, Math.min(cs, Math.max(end, oldEnd)));
  const write = (offset: number, bytes: Uint8Array) => checkedWrite(s, offset, bytes, OVERLAP.HEADER);
  await s.storage.flush();
  if (order && area.length > SECTOR) {
    if (order.interim) {
      await write(0, serializeHeader({ ...onDisk, ...order.interim }));
      await s.storage.flush();
    }
    await write(SECTOR, area.subarray(SECTOR));
    await s.storage.flush();
    await write(0, area.subarray(0, SECTOR));
  } else if (order) {
    await write(0, area);
  } else if (end <= SECTOR) {
    await write(0, area.subarray(0, Math.min(SECTOR, area.length)));
    await s.storage.flush();
    if (area.length > SECTOR) await write(SECTOR, area.subarray(SECTOR));
  } else if (oldEnd <= SECTOR) {
    await write(SECTOR, area.subarray(SECTOR));
    await s.storage.flush();
    await write(0, area.subarray(0, SECTOR));
  } else {
    await write(0, area);
  }
  await s.storage.flush();
  s.setHeaderAreaEnd(end);
}
