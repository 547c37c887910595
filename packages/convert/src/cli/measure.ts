/**
 * What `img measure` adds to a format driver's measure(), as qemu-img 7.2
 * prints it: raw output (which has no driver measure: every byte of the
 * virtual size, in whole sectors), and the "bitmaps" figure of a qcow2
 * output measured from a qcow2 source — the space `convert --bitmaps`
 * would need for the source's persistent dirty bitmaps.
 */
import { alignUp, parseSize, type Disk } from '@img/block';

const DEFAULT_QCOW2_CLUSTER = 65536;

/** qemu's raw measure: required and fully allocated are both the size rounded up to a 512-byte sector. */
export function measureRaw(size: number): { required: number; fullyAllocated: number } {
  const bytes = alignUp(size, 512);
  return { required: bytes, fullyAllocated: bytes };
}

interface BitmapInfo {
  name: string;
  granularity: number;
}

/** A bitmap directory entry: 24 fixed bytes and the name, padded to 8 (qcow2 spec, "Bitmap directory"). */
function directoryEntrySize(name: string): number {
  return alignUp(24 + new TextEncoder().encode(name).length, 8);
}

/**
 * The bytes a qcow2 image with clusters of `options.clusterSize` needs for
 * `source`'s persistent bitmaps: per bitmap, its data clusters (one bit per
 * granule of the virtual size) and its bitmap table, and the directory.
 * `undefined` when the source cannot hold persistent bitmaps (not qcow2,
 * or a version 2 qcow2) or the output cannot (`compat=0.10`): qemu-img then
 * leaves the field out.
 */
export async function measureBitmaps(source: Disk, options: Record<string, unknown>): Promise<number | undefined> {
  if (source.format !== 'qcow2') return undefined;
  if (options.compat !== undefined && ['v2', '0.10', '2'].includes(String(options.compat))) return undefined;
  const info = await source.info?.();
  if (info?.formatSpecific?.compat === '0.10') return undefined;
  const clusterSize = options.clusterSize === undefined ? DEFAULT_QCOW2_CLUSTER : parseSize(String(options.clusterSize), 'clusterSize');
  const bitmaps = ((info?.formatSpecific?.bitmaps as BitmapInfo[] | undefined) ?? []).filter((b) => Number.isSafeInteger(b.granularity) && b.granularity > 0);
  if (bitmaps.length === 0) return 0;
  let bytes = 0;
  let directory = 0;
  for (const b of bitmaps) {
    const bits = Math.ceil(source.size / b.granularity);
    const clusters = Math.ceil(bits / (clusterSize * 8));
    bytes += alignUp(clusters * 8, clusterSize) + clusters * clusterSize;
    directory += directoryEntrySize(b.name);
  }
  return bytes + alignUp(directory, clusterSize);
}
