/**
 * Refcount repairs never write on metadata: a block that replaces a
 * missing one goes past clusters the overlap map holds, even where a
 * corrupt image points tables past the end of the file (issue 13 point 3).
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, readU64Be } from '@img/block';
import { OverlapMap, OVERLAP } from './overlap.js';
import { Refcounts, readRefcount } from './refcount.js';

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
