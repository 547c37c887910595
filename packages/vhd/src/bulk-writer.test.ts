import { MemoryStorage, openRaw, sparseCopy, type Disk, type FreshImageWriter } from '@img/block';
import { seededBytes } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { createVhdFresh } from './bulk-writer.js';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { openVhd } from './open.js';

const BLOCK = 64 * 1024;
const BLOCKS = 12;
const SIZE = BLOCK * BLOCKS;
const fixed = { uuid: '12345678-1234-4234-8234-123456789abc', timestamp: new Date(1_700_000_000_000), blockSize: BLOCK };

/** A raw source: whole blocks of data, a block written as zeros, half a block, a single sector, untouched blocks. */
async function source(): Promise<{ disk: Disk; bytes: Uint8Array }> {
  const bytes = new Uint8Array(SIZE);
  bytes.set(seededBytes(2 * BLOCK, 1), 1 * BLOCK);
  bytes.set(seededBytes(BLOCK / 2, 2), 5 * BLOCK);
  bytes.set(seededBytes(512, 3), 8 * BLOCK + 4096);
  bytes.set(seededBytes(BLOCK, 4), 10 * BLOCK);
  const storage = MemoryStorage.from(bytes, { name: 'src.raw' });
  // Block 3 is stored but reads as zeros: data in the extent map, skipped by the copy's zero scan.
  await storage.write(3 * BLOCK, new Uint8Array(BLOCK));
  return { disk: await openRaw(storage), bytes };
}

async function fresh(storage: MemoryStorage): Promise<FreshImageWriter> {
  const w = await createVhdFresh(storage, { size: SIZE, ...fixed });
  if (!w) throw new Error('no bulk writer for a dynamic disk');
  return w;
}

async function expectClean(storage: MemoryStorage): Promise<void> {
  const r = await checkVhd(MemoryStorage.from(storage.toBytes(), { name: 'x.vhd', readOnly: true }));
  expect({ corruptions: r.corruptions, leaks: r.leaks, checkErrors: r.checkErrors }).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
}

describe('the bulk writer (a new dynamic VHD written by one copy)', () => {
  it('answers undefined for fixed and differencing disks, and for a backing file', async () => {
    expect(await createVhdFresh(new MemoryStorage(), { size: SIZE, type: 'fixed' })).toBeUndefined();
    expect(await createVhdFresh(new MemoryStorage(), { size: SIZE, backingFile: 'p.vhd' })).toBeUndefined();
  });

  it('writes the same bytes as the general writer, block for block', async () => {
    const { disk: src, bytes } = await source();
    const general = new MemoryStorage({ name: 'g.vhd' });
    const g = await createVhd(general, { size: SIZE, ...fixed });
    // One request at a time: the general writer then places blocks in guest order, as the bulk writer always does.
    await sparseCopy(src, g, { concurrency: 1 });
    await g.close();
    const bulk = new MemoryStorage({ name: 'b.vhd' });
    const w = await fresh(bulk);
    await sparseCopy(src, w);
    const done = await w.finish();
    expect(Buffer.compare(await done.read(0, SIZE), bytes)).toBe(0);
    await done.close();
    expect(Buffer.compare(bulk.toBytes(), general.toBytes())).toBe(0);
    await expectClean(bulk);
  });

  it('finish() answers the disk an open of the file would: the same map, and writes after it allocate behind the last block', async () => {
    const { disk: src, bytes } = await source();
    const storage = new MemoryStorage({ name: 'f.vhd' });
    const w = await fresh(storage);
    await sparseCopy(src, w);
    const done = await w.finish();
    const reopened = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'f.vhd', readOnly: true }));
    const map = async (d: Disk) => {
      const out: unknown[] = [];
      for await (const e of d.extents({ hostOffsets: true })) out.push(e);
      return out;
    };
    expect(await map(done)).toEqual(await map(reopened));
    expect(Buffer.compare(await done.read(0, SIZE), await reopened.read(0, SIZE))).toBe(0);
    await reopened.close();
    // Block 7 was never written: it goes behind the last block, the footer behind it.
    const more = seededBytes(BLOCK, 9);
    await done.write(7 * BLOCK, more);
    await done.close();
    const expected = bytes.slice();
    expected.set(more, 7 * BLOCK);
    const back = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'f.vhd', readOnly: true }));
    expect(Buffer.compare(await back.read(0, SIZE), expected)).toBe(0);
    await back.close();
    await expectClean(storage);
  });

  it('until finish() the file is the empty image; abort() leaves it so', async () => {
    const storage = new MemoryStorage({ name: 'a.vhd' });
    const w = await fresh(storage);
    await w.write(4 * BLOCK, seededBytes(BLOCK, 5));
    const during = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'd.vhd', readOnly: true }));
    expect((await during.read(0, SIZE)).every((b) => b === 0)).toBe(true);
    await during.close();
    await w.abort();
    const after = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'e.vhd', readOnly: true }));
    expect((await after.read(0, SIZE)).every((b) => b === 0)).toBe(true);
    await after.close();
    await expectClean(storage);
  });

  it('gives back placed blocks a zero-skipping copy wrote nothing into, and moves the last block into the gap', async () => {
    const storage = new MemoryStorage({ name: 'p.vhd' });
    const w = await fresh(storage);
    // As sparseCopy's file-to-file loop does: place runs, copy into the host positions, settle.
    const placed = w.placeRuns!(0, 4 * BLOCK);
    expect(placed.length).toBe(12);
    const one = seededBytes(BLOCK, 6);
    const three = seededBytes(BLOCK, 7);
    // Blocks 0 and 2 get nothing (all zeros), block 1 a sector, block 3 all of it.
    await storage.write(placed[4]! + 4096, one.subarray(0, 512));
    await storage.write(placed[10]!, three);
    await w.settleRuns!(Float64Array.from(placed));
    const disk = await w.finish();
    const expected = new Uint8Array(SIZE);
    expected.set(one.subarray(0, 512), BLOCK + 4096);
    expected.set(three, 3 * BLOCK);
    expect(Buffer.compare(await disk.read(0, SIZE), expected)).toBe(0);
    const data: Array<[number, number]> = [];
    for await (const e of disk.extents()) if (e.kind === 'data') data.push([e.offset / BLOCK, e.length / BLOCK]);
    expect(data).toEqual([
      [1, 1],
      [3, 1],
    ]);
    await disk.close();
    // Two blocks in the file and the footer, no gap (check counts a gap between blocks or junk behind them as a leak).
    await expectClean(storage);
  });

  it('moves the blocks that close the gaps in guest order (written zeros first, then data: not reversed)', async () => {
    const storage = new MemoryStorage({ name: 'o.vhd' });
    const w = await fresh(storage);
    const zeros = w.placeRuns!(0, 4 * BLOCK);
    const data = w.placeRuns!(6 * BLOCK, 4 * BLOCK);
    const expected = new Uint8Array(SIZE);
    for (let k = 0; k < data.length; k += 3) {
      const d = seededBytes(data[k + 2]!, 20 + k);
      expected.set(d, data[k]!);
      await storage.write(data[k + 1]!, d);
    }
    await w.settleRuns!(Float64Array.from(zeros));
    const disk = await w.finish();
    expect(Buffer.compare(await disk.read(0, SIZE), expected)).toBe(0);
    // Host positions rise with guest offsets: the four data blocks lie in the first four slots, in order.
    const hosts: number[] = [];
    for await (const e of disk.extents({ hostOffsets: true })) if (e.kind === 'data') for (let b = 0; b < e.length / BLOCK; b++) hosts.push(e.hostOffset! + b * BLOCK);
    expect(hosts.length).toBe(4);
    expect([...hosts].sort((a, b) => a - b)).toEqual(hosts);
    await disk.close();
    await expectClean(storage);
  });
});
