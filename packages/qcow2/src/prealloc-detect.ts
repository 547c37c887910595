/**
 * Whether a qcow2 image looks preallocated with metadata only: its
 * refcounts name clearly more clusters than its file occupies on the
 * device (clusters allocated in the tables but left as holes). qemu-img
 * map asks the file system about the data clusters of such an image and
 * reports their holes as zeros; img map does the same, on the same rule.
 */
import { readU32Be, type Storage } from '@img/block';
import { parseHeader } from './header.js';
import { entryOffset } from './mapping.js';
import { readRefcount } from './refcount-entry.js';

/** Header bytes read to parse it (the fields this needs lie in the first 104). */
const HEADER_BYTES = 112;

/**
 * Whether the qcow2 image in `storage`, whose file occupies
 * `allocatedBytes` on its device (st_blocks * 512), counts at least
 * max(10/9 of the allocated clusters, the allocated clusters + 2) clusters
 * with a nonzero refcount: qemu's test for metadata preallocation, which
 * decides whether `qemu-img map` looks for holes inside data clusters.
 * Counting stops at that threshold (qemu's does too, so reaching it is
 * enough: an image that reaches it exactly is preallocated to qemu).
 */
export async function detectMetadataPreallocation(storage: Storage, allocatedBytes: number): Promise<boolean> {
  const fileSize = await storage.size();
  const head = new Uint8Array(Math.min(HEADER_BYTES, fileSize));
  await storage.readInto(0, head);
  const h = parseHeader(head, storage.name);
  const cs = 2 ** h.clusterBits;
  const bits = 2 ** h.refcountOrder;
  const perBlock = (cs * 8) / bits;
  const real = Math.floor(allocatedBytes / cs);
  const threshold = Math.max(Math.floor((real * 10) / 9), real + 2);
  const endCluster = Math.ceil(fileSize / cs);
  const tableBytes = h.refcountTableClusters * cs;
  if (h.refcountTableOffset + tableBytes > fileSize) return false;
  const table = new Uint8Array(tableBytes);
  await storage.readInto(h.refcountTableOffset, table);
  const block = new Uint8Array(cs);
  let counted = 0;
  for (let b = 0; b * perBlock < endCluster && (b + 1) * 8 <= table.length && counted < threshold; b++) {
    const off = entryOffset(readU32Be(table, b * 8), readU32Be(table, b * 8 + 4));
    if (!off || off % cs || off + cs > fileSize) continue;
    await storage.readInto(off, block);
    for (let k = 0; k < perBlock && b * perBlock + k < endCluster && counted < threshold; k++) if (readRefcount(block, k, bits) > 0) counted++;
  }
  return counted >= threshold;
}
