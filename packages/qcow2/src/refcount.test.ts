/**
 * Refcount repairs never write on metadata: a block that replaces a
 * missing one goes past clusters the overlap map holds, even where a
 * corrupt image points tables past the end of the file (issue 13 point 3).
 * Counts changed in a batch survive the block cache dropping their block
 * before the batch is written.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, readU64Be, writeU64Be } from '@img/block';
import { OverlapMap, OVERLAP } from './overlap.js';
import { RefcountBatch } from './pending-writes.js';
import { Refcounts } from './refcount.js';
import { readRefcount, writeRefcount } from './refcount-entry.js';

const CS = 4096;

async function load(held: number[]): Promise<{ rc: Refcounts; storage: MemoryStorage; map: OverlapMap }> {
  // Header, refcount table (entry 0 empty: its block is missing), two data clusters.
  const bytes = new Uint8Array(4 * CS);
  bytes.fill(0x5a, 2 * CS);
  const storage = MemoryStorage.from(bytes, { name: 'r.qcow2' });
  const map = new OverlapMap(CS);
  map.add(OVERLAP.HEADER, 0, CS);
  for (const c of held) map.add(OVERLAP.L2, c * CS, CS);
  const rc = await Refcounts.load({
    storage,
    file: 'r.qcow2',
    clusterSize: CS,
    refcountBits: 16,
    tableOffset: CS,
    tableClusters: 1,
    fileSize: bytes.length,
    onTableMoved: () => Promise.resolve(),
    barrier: () => Promise.resolve(),
    overlap: map,
  });
  return { rc, storage, map };
}

describe('refcount repairs and the overlap map', () => {
  it('a missing block is rebuilt past L2 tables a corrupt image puts past the end of the file', async () => {
    const { rc, storage } = await load([4, 5]);
    expect(rc.untrustedBlocks.map((b) => b.index)).toEqual([0]);
    await rc.set(3, 2);
    const at = readU64Be(await storage.read(CS, 8), 0);
    expect(at).toBe(6 * CS);
    expect(rc.table[0]).toBe(6 * CS);
    // The held clusters were never written (a write past them fills them with zeros only).
    expect((await storage.read(4 * CS, 2 * CS)).every((b) => b === 0)).toBe(true);
    const block = await storage.read(6 * CS, CS);
    // Every cluster of the old file counts as used, the one set is 2, the block counts itself, the held clusters are not counted.
    expect([0, 1, 2, 3, 4, 5, 6].map((c) => readRefcount(block, c, 16))).toEqual([1, 1, 1, 2, 0, 0, 1]);
    expect(rc.untrustedBlocks).toEqual([]);
  });

  it('without held clusters the block goes at the end of the file', async () => {
    const { rc, storage } = await load([]);
    await rc.set(2, 1);
    expect(readU64Be(await storage.read(CS, 8), 0)).toBe(4 * CS);
  });
});

describe('refcount batches', () => {
  it('a block a batch changed stays in memory until the batch is written, however many blocks are read meanwhile', async () => {
    // 2 MiB clusters: the block cache holds 4 blocks. Header, refcount table, then 6 blocks of 1M clusters each.
    const cs = 2 * 1024 * 1024;
    const blocks = 6;
    const bytes = new Uint8Array((2 + blocks) * cs);
    for (let t = 0; t < blocks; t++) writeU64Be(bytes, cs + t * 8, (2 + t) * cs);
    for (let c = 0; c < 2 + blocks; c++) writeRefcount(bytes.subarray(2 * cs, 3 * cs), c, 16, 1);
    const storage = MemoryStorage.from(bytes, { name: 'b.qcow2' });
    const rc = await Refcounts.load({
      storage,
      file: 'b.qcow2',
      clusterSize: cs,
      refcountBits: 16,
      tableOffset: cs,
      tableClusters: 1,
      fileSize: bytes.length,
      onTableMoved: () => Promise.resolve(),
      barrier: () => Promise.resolve(),
    });
    const batch = new RefcountBatch();
    await rc.add(20, 1, 1, batch);
    // A long search for free clusters reads every other block: block 0 leaves the cache.
    for (let t = 1; t < blocks; t++) await rc.get(t * rc.perBlock);
    await rc.add(21, 1, 1, batch);
    await rc.writeBatch(batch);
    const block = await storage.read(2 * cs, cs);
    expect([19, 20, 21, 22].map((c) => readRefcount(block, c, 16))).toEqual([0, 1, 1, 0]);
    expect([20, 21].map((c) => readRefcount(block, c, 16))).toEqual([await rc.get(20), await rc.get(21)]);
  });
});
