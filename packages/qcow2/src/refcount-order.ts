/**
 * Changing the refcount width of an image (qemu-img amend -o
 * refcount_bits=N; spec: "refcount_order", "Host cluster management"): the
 * refcount table and every refcount block are written anew at the new
 * width, then the header is switched to them.
 *
 * Crash order, as qemu's: the new blocks and table go to clusters the old
 * refcounts allocate (so until the switch they are leaks at worst); the
 * header switch (refcount_order, refcount_table_offset and
 * refcount_table_clusters, all in the first sector) is one write, flushed;
 * the new refcounts already count the old table and blocks as free, so
 * nothing is left to release after it.
 */
import { FreshClusters } from './allocator.js';
import { hex, unsupported, writeU64Be } from '@img/block';
import { writeRefcount } from './refcount-entry.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { attachWriter } from './writable.js';

const FORMAT = 'qcow2';

/**
 * Rewrites the refcount structures of `s` (version 3, writable, not dirty)
 * at 2^`order` bits per refcount. Refused before anything is written when a
 * cluster's refcount does not fit the new width (qemu's words).
 */
export async function changeRefcountOrder(s: Qcow2Image, order: number): Promise<void> {
  const cs = s.geom.clusterSize;
  const bits = 2 ** order;
  const max = bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
  const rc = s.writer!.allocator.refcounts;
  for (let c = 0; c < rc.endCluster; c++) {
    const v = await rc.get(c);
    if (v > max) throw unsupported(FORMAT, s.file, `Cannot decrease refcount entry width to ${bits} bits: Cluster at offset ${hex(c * cs)} has a refcount of ${v}`, { field: 'refcount_bits', offset: c * cs, actual: v });
  }
  await s.beforeFirstWrite();
  const perBlock = (cs * 8) / bits;
  // Until the header switch nothing reaches the new structures: a failure before it (a full device) gives them
  // back, as qemu does, instead of leaving them as leaks.
  const taken = new FreshClusters((offset, bytes) => s.writer!.allocator.release(offset, bytes));
  const blocks: number[] = [];
  let table = { offset: 0, clusters: 0 };
  try {
    // Blocks for every range up to the end of the file, and a table for them: allocating them moves the end, so until it stays.
    for (;;) {
      const needBlocks = Math.ceil(rc.endCluster / perBlock);
      const needTable = Math.max(1, Math.ceil((needBlocks * 8) / cs));
      if (needBlocks <= blocks.length && needTable <= table.clusters) break;
      if (needBlocks > blocks.length) {
        const at = await s.writer!.allocator.allocate(needBlocks - blocks.length);
        taken.add(at, (needBlocks - blocks.length) * cs);
        for (let i = 0; blocks.length < needBlocks; i++) blocks.push(at + i * cs);
      }
      if (needTable > table.clusters) {
        if (table.clusters) {
          await s.writer!.allocator.release(table.offset, table.clusters * cs);
          taken.forget(table.offset);
        }
        table = { offset: await s.writer!.allocator.allocate(needTable), clusters: needTable };
        taken.add(table.offset, needTable * cs);
      }
    }
    await s.writer!.allocator.drainReleases();
    // The old table and blocks are free in the new refcounts: nothing points at them once the header is switched.
    const old = new Set<number>();
    for (let i = 0; i < rc.tableClusters; i++) old.add(rc.tableOffset / cs + i);
    for (const b of rc.table) if (b) old.add(b / cs);
    const end = rc.endCluster;
    const block = new Uint8Array(cs);
    for (let t = 0; t < blocks.length; t++) {
      block.fill(0);
      for (let c = t * perBlock; c < Math.min(end, (t + 1) * perBlock); c++) {
        if (!old.has(c)) writeRefcount(block, c - t * perBlock, bits, await rc.get(c));
      }
      await s.storage.write(blocks[t]!, block);
    }
    const raw = new Uint8Array(table.clusters * cs);
    blocks.forEach((b, t) => writeU64Be(raw, t * 8, b));
    await s.storage.write(table.offset, raw);
    await s.storage.flush();
  } catch (error) {
    await taken.giveBack();
    throw error;
  }
  s.setHeader({ refcountOrder: order, refcountTableOffset: table.offset, refcountTableClusters: table.clusters });
  await writeHeader(s);
  await s.storage.flush();
  // The allocator and the overlap map are built again over the new structures.
  s.setRefcountBits(bits);
  await attachWriter(s);
}
