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

/** Refcounts of `bytes` (header at 0, a one-cluster refcount table at CS) with `held` clusters in the overlap map as L2 tables. */
async function loadFrom(bytes: Uint8Array, name: string, refcountBits: number, held: number[]): Promise<{ rc: Refcounts; storage: MemoryStorage; map: OverlapMap }> {
  const storage = MemoryStorage.from(bytes, { name });
  const map = new OverlapMap(CS);
  map.add(OVERLAP.HEADER, 0, CS);
  for (const c of held) map.add(OVERLAP.L2, c * CS, CS);
  const rc = await Refcounts.load({
    storage,
    file: name,
    clusterSize: CS,
    refcountBits,
    tableOffset: CS,
    tableClusters: 1,
    fileSize: bytes.length,
    onTableMoved: () => Promise.resolve(),
    barrier: () => Promise.resolve(),
    overlap: map,
  });
  return { rc, storage, map };
}

function load(held: number[]): Promise<{ rc: Refcounts; storage: MemoryStorage; map: OverlapMap }> {
  // Header, refcount table (entry 0 empty: its block is missing), two data clusters.
  const bytes = new Uint8Array(4 * CS);
  bytes.fill(0x5a, 2 * CS);
  return loadFrom(bytes, 'r.qcow2', 16, held);
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

describe('free cluster search', () => {
  it.each([1, 2, 4, 8, 16, 32, 64])('refcount_bits=%i: allocations land where first fit from the hints of the allocator puts them, never on held clusters (the native search for a 0 count, at 8-64 bits, finds what the scan of each count finds)', async (bits) => {
    // Header, refcount table, one refcount block, then clusters in use or free in a seeded pattern, up to 400
    // (what is allocated past them stays within the one block at 64 bits: 512 clusters).
    const clusters = 400;
    const bytes = new Uint8Array(clusters * CS);
    writeU64Be(bytes, CS, 2 * CS);
    const block = bytes.subarray(2 * CS, 3 * CS);
    const used = new Array<boolean>(clusters).fill(false);
    let seed = bits * 7919;
    const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) / 65536;
    for (let c = 0; c < clusters; c++) {
      used[c] = c < 3 || c === clusters - 1 || random() < (c < 200 ? 0.85 : 0.5);
      if (used[c]) writeRefcount(block, c, bits, 1);
    }
    // A few free clusters the overlap map holds (metadata a damaged image points at): never handed out.
    const held = [40, 41, 260, 300, 350].filter((c) => !used[c]);
    const { rc } = await loadFrom(bytes, 'f.qcow2', bits, held);
    const taken = (c: number) => used[c] === true || held.includes(c);
    // First fit from the allocator's hints (AllocationFrontier: single clusters and runs keep separate ones).
    let freeHint = 0;
    let runHint = 0;
    const model = (count: number): number => {
      const from = count === 1 ? freeHint : Math.max(freeHint, runHint);
      let run = 0;
      let firstFree = -1;
      let start = -1;
      for (let c = from; c < used.length && start < 0; c++) {
        if (taken(c)) run = 0;
        else {
          if (firstFree < 0) firstFree = c;
          if (++run === count) start = c - count + 1;
        }
      }
      // A free run touching the end goes on past it.
      if (start < 0) start = used.length - run;
      if (count === 1) freeHint = start + 1;
      else {
        runHint = start + count;
        if (firstFree === start) freeHint = Math.max(freeHint, start + count);
      }
      return start;
    };
    for (const count of [1, 1, 3, 1, 2, 5, 1, 1, 8, 2, 1, 13, 1, 4, 1, 1, 30, 1]) {
      const expected = model(count);
      expect({ count, at: (await rc.allocate(count)) / CS }).toEqual({ count, at: expected });
      for (let c = expected; c < expected + count; c++) used[c] = true;
    }
  });
});
