import { describe, expect, it } from 'vitest';
import { MemoryStorage, validateExtentCover, type Extent, type ExtentOptions } from '@img/block';
import { seededBytes } from '@img/testkit';
import { createVhd } from './create.js';
import { openVhd } from './open.js';

const BLOCK = 4096;
const BLOCKS = 100; // more than the walk reads ahead

/** A dynamic parent full of data and a differencing child with partial sector bitmaps in scattered blocks. */
async function partialChain() {
  const ps = new MemoryStorage({ name: 'p.vhd' });
  const parent = await createVhd(ps, { size: BLOCK * BLOCKS, blockSize: BLOCK });
  await parent.write(0, seededBytes(BLOCK * BLOCKS, 7));
  const cs = new MemoryStorage({ name: 'c.vhd' });
  const child = await createVhd(cs, { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: BLOCK });
  // The sectors the child holds: a model independent of the walk.
  const held = new Uint8Array(BLOCKS * (BLOCK / 512));
  for (let b = 0; b < BLOCKS; b += 3) {
    // Sectors 1-2 of each third block, and the whole of every ninth.
    const [first, count] = b % 9 === 0 ? [0, 8] : [1, 2];
    await child.write(b * BLOCK + first * 512, seededBytes(count * 512, b));
    held.fill(1, b * 8 + first, b * 8 + first + count);
  }
  await child.close();
  await parent.close();
  return { parent: ps.toBytes(), child: cs.toBytes(), held };
}

/** Runs of held sectors as [offset, length] pairs in bytes. */
function heldRuns(held: Uint8Array): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < held.length; i++) {
    if (!held[i]) continue;
    const last = out.at(-1);
    if (last && last[0] + last[1] === i * 512) last[1] += 512;
    else out.push([i * 512, 512]);
  }
  return out;
}

describe('vhd extents over sector bitmaps', () => {
  it('reports exactly the sectors a differencing disk holds (partial bitmaps, more blocks than are read ahead)', async () => {
    const { child, held } = await partialChain();
    const disk = await openVhd(MemoryStorage.from(child, { name: 'c.vhd', readOnly: true }), { noBacking: true });
    try {
      const top: Extent[] = [];
      for await (const e of disk.extents({ topOnly: true, hostOffsets: true })) top.push(e);
      expect(top.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length])).toEqual(heldRuns(held));
      // Windows that start and stop inside blocks say the same, clipped.
      for (const [a, n] of [
        [700, 20_000],
        [BLOCK * 33 + 512, BLOCK * 40],
        [BLOCK * 90, BLOCK * 10],
      ] as const) {
        const got: Array<[number, number]> = [];
        for await (const e of disk.extents({ offset: a, length: n, topOnly: true })) if (e.kind === 'data') got.push([e.offset, e.length]);
        const want = heldRuns(held)
          .map(([o, l]): [number, number] => [Math.max(o, a), Math.min(o + l, a + n) - Math.max(o, a)])
          .filter(([, l]) => l > 0);
        expect(got).toEqual(want);
      }
    } finally {
      await disk.close();
    }
  });

  it('hands the extents over in arrays that make the same merged cover as extents() (chain, child alone, dynamic, windows)', async () => {
    const { parent, child } = await partialChain();
    const ps = MemoryStorage.from(parent, { name: 'p.vhd', readOnly: true });
    const open = async (bytes: Uint8Array, name: string) => openVhd(MemoryStorage.from(bytes, { name, readOnly: true }), { resolver: async () => ps });
    for (const [bytes, name] of [
      [child, 'c.vhd'],
      [parent, 'p.vhd'],
    ] as const) {
      const disk = await open(bytes, name);
      try {
        const cases: ExtentOptions[] = [{}, { hostOffsets: true, fileHoles: true }, { topOnly: true, hostOffsets: true }, { offset: 700, length: BLOCK * 50 }];
        for (const options of cases) {
          const arrays: Extent[][] = [];
          for await (const a of disk.extentBatches(options)) arrays.push(a.map((e) => ({ ...e })));
          expect(arrays.every((a) => a.length > 0)).toBe(true);
          const flat = arrays.flat();
          expect(validateExtentCover(flat, options.offset ?? 0, options.length ?? disk.size)).toEqual([]);
          const single: Extent[] = [];
          for await (const e of disk.extents(options)) single.push({ ...e });
          expect(single).toEqual(flat);
        }
        // The child's hundred blocks of runs come in more than one array (the first ones small, for a copy to start on).
        if (name === 'c.vhd') {
          let n = 0;
          for await (const a of disk.extentBatches({ topOnly: true })) n += a.length > 0 ? 1 : 0;
          expect(n).toBeGreaterThan(1);
        }
      } finally {
        await disk.close();
      }
    }
  });

  it('hands a parent\u2019s many extents under one unallocated run over in bounded arrays', async () => {
    const ps = new MemoryStorage({ name: 'p.vhd' });
    const parent = await createVhd(ps, { size: BLOCK * 8192, blockSize: BLOCK });
    // Every other block: 4096 runs of data and as many of zeros.
    for (let b = 0; b < 8192; b += 2) await parent.write(b * BLOCK, seededBytes(512, b));
    const cs = new MemoryStorage({ name: 'c.vhd' });
    const child = await createVhd(cs, { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: BLOCK });
    await child.close();
    await parent.close();
    const pr = MemoryStorage.from(ps.toBytes(), { name: 'p.vhd', readOnly: true });
    const disk = await openVhd(MemoryStorage.from(cs.toBytes(), { name: 'c.vhd', readOnly: true }), { resolver: async () => pr });
    try {
      const sizes: number[] = [];
      for await (const a of disk.extentBatches()) sizes.push(a.length);
      expect(sizes.reduce((x, y) => x + y, 0)).toBe(8192);
      expect(Math.max(...sizes)).toBeLessThanOrEqual(1025);
    } finally {
      await disk.close();
    }
  });

  it('a walk stopped early leaves no bitmap read behind to fail unheard', async () => {
    const { child } = await partialChain();
    const storage = MemoryStorage.from(child, { name: 'c.vhd', readOnly: true });
    const disk = await openVhd(storage, { noBacking: true });
    // From now on every read fails: the walk's own read must report it, the reads ahead must not crash the process.
    const fail = async () => {
      throw new Error('injected read failure');
    };
    storage.read = fail;
    storage.readInto = fail;
    let error: unknown;
    try {
      for await (const _ of disk.extents({ topOnly: true }));
    } catch (e) {
      error = e;
    }
    expect(String(error)).toMatch(/injected read failure/);
    await new Promise((r) => setTimeout(r, 20));
    await disk.close();
  });
});

describe('vhd block allocation', () => {
  it('writes a whole new block, its bitmap and the footer behind it with one writev, and the image reads back', async () => {
    const storage = new MemoryStorage({ name: 'w.vhd' });
    const disk = await createVhd(storage, { size: 8 * BLOCK, blockSize: BLOCK });
    const calls: string[] = [];
    const write = storage.write.bind(storage);
    const writev = storage.writev.bind(storage);
    storage.write = async (at, data) => {
      calls.push(`write ${data.length}`);
      return write(at, data);
    };
    storage.writev = async (at, chunks) => {
      calls.push(`writev ${chunks.map((c) => c.length).join('+')}`);
      return writev(at, chunks);
    };
    const whole = seededBytes(BLOCK, 1);
    await disk.write(2 * BLOCK, whole);
    // Bitmap (one sector), the block, the footer: one call. Then the BAT sector.
    expect(calls).toEqual([`writev 512+${BLOCK}+512`, 'write 512']);
    calls.length = 0;
    // The first half of a block: bitmap and data joined, the footer on its own.
    await disk.write(5 * BLOCK, whole.subarray(0, BLOCK / 2));
    expect(calls).toEqual([`writev 512+${BLOCK / 2}`, 'write 512', 'write 512']);
    calls.length = 0;
    // The second half: bitmap on its own, data and footer joined.
    await disk.write(6 * BLOCK + BLOCK / 2, whole.subarray(BLOCK / 2));
    expect(calls).toEqual(['write 512', `writev ${BLOCK / 2}+512`, 'write 512']);
    await disk.close();
    const back = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'w.vhd', readOnly: true }));
    expect(Buffer.compare(await back.read(2 * BLOCK, BLOCK), whole)).toBe(0);
    expect(Buffer.compare(await back.read(5 * BLOCK, BLOCK / 2), whole.subarray(0, BLOCK / 2))).toBe(0);
    expect((await back.read(5 * BLOCK + BLOCK / 2, BLOCK / 2)).every((b) => b === 0)).toBe(true);
    expect(Buffer.compare(await back.read(6 * BLOCK + BLOCK / 2, BLOCK / 2), whole.subarray(BLOCK / 2))).toBe(0);
    const blocks: Extent[] = [];
    for await (const e of back.extents()) if (e.kind === 'data') blocks.push(e);
    // Dynamic disks mark every sector of a new block present: blocks 5 and 6 are one extent.
    expect(blocks.map((e) => [e.offset / BLOCK, e.length / BLOCK])).toEqual([
      [2, 1],
      [5, 2],
    ]);
    await back.close();
  });
});

describe('fileHoles: blocks written in part', () => {
  const MiB = 1024 * 1024;
  const collect = async (it: AsyncIterable<Extent>) => {
    const out: Extent[] = [];
    for await (const e of it) out.push(e);
    return out;
  };

  it('a dynamic block whose file has a hole: data as qemu-img map says, zero behind the written half with fileHoles', async () => {
    const storage = new MemoryStorage({ name: 'h.vhd' });
    const disk = await createVhd(storage, { size: 8 * MiB });
    const half = seededBytes(MiB, 3);
    await disk.write(2 * MiB, half);
    expect((await collect(disk.extents())).filter((e) => e.kind === 'data')).toEqual([{ offset: 2 * MiB, length: 2 * MiB, kind: 'data', depth: 0 }]);
    const refined = await collect(disk.extents({ fileHoles: true, hostOffsets: true }));
    const data = refined.filter((e) => e.kind === 'data');
    // The written megabyte (plus what the storage's page around its end holds), and the page the footer shares with the block's end.
    expect(data[0]!.offset).toBe(2 * MiB);
    expect(data[0]!.length).toBeGreaterThanOrEqual(MiB);
    expect(Buffer.compare(await storage.read(data[0]!.hostOffset!, MiB), half)).toBe(0);
    for (const e of data) expect(e.offset + e.length).toBeLessThanOrEqual(4 * MiB);
    const zeroInBlock = refined.filter((e) => e.kind === 'zero' && e.offset >= 2 * MiB && e.offset < 4 * MiB).reduce((n, e) => n + e.length, 0);
    expect(zeroInBlock).toBeGreaterThanOrEqual(MiB - 128 * 1024);
    for (const e of refined) {
      if (e.kind !== 'zero') continue;
      expect((await disk.read(e.offset, e.length)).every((b) => b === 0)).toBe(true);
    }
    await disk.close();
  });

  it('a large sparse fixed disk: split at the holes of its file a slice at a time, in bounded arrays', async () => {
    const page = 64 * 1024; // MemoryStorage's page: a page never written is a hole
    const size = 160 * MiB;
    const storage = new MemoryStorage({ name: 'big-fixed.vhd' });
    const disk = await createVhd(storage, { type: 'fixed', size });
    // Data in every other page: 1280 runs of data and 1280 holes under the one run of a fixed disk.
    for (let p = page; p < size; p += 2 * page) await disk.write(p, seededBytes(page, p / page));
    const sizes: number[] = [];
    const flat: Extent[] = [];
    for await (const a of disk.extentBatches({ fileHoles: true })) {
      sizes.push(a.length);
      flat.push(...a);
    }
    const expected: Extent[] = [];
    for (let p = 0; p < size; p += page) expected.push({ offset: p, length: page, kind: (p / page) % 2 === 0 ? 'zero' : 'data', depth: 0 });
    expect(flat).toEqual(expected);
    // 64 MiB of the file at a time (1024 pieces), not the 2560 pieces of the whole disk in one array.
    expect(Math.max(...sizes)).toBeLessThanOrEqual(1024);
    await disk.close();
  });

  it('a fixed disk: the holes of its data area are zero with fileHoles', async () => {
    const storage = new MemoryStorage({ name: 'f.vhd' });
    const disk = await createVhd(storage, { type: 'fixed', size: 4 * MiB });
    await disk.write(MiB, seededBytes(64 * 1024, 4));
    // One sector in a 64 KiB page of the storage: the zero sectors beside it, up to 4 KiB from each hole, are read and become zero.
    await disk.write(2 * MiB + 1024, seededBytes(512, 5));
    expect(await collect(disk.extents())).toEqual([{ offset: 0, length: 4 * MiB, kind: 'data', depth: 0 }]);
    const refined = await collect(disk.extents({ fileHoles: true }));
    expect(refined).toEqual([
      { offset: 0, length: MiB, kind: 'zero', depth: 0 },
      { offset: MiB, length: 64 * 1024, kind: 'data', depth: 0 },
      { offset: MiB + 64 * 1024, length: MiB - 64 * 1024 + 1024, kind: 'zero', depth: 0 },
      { offset: 2 * MiB + 1024, length: 64 * 1024 - 4096 - 1024, kind: 'data', depth: 0 },
      { offset: 2 * MiB + 64 * 1024 - 4096, length: 2 * MiB - 64 * 1024 + 4096, kind: 'zero', depth: 0 },
    ]);
    await disk.close();
  });
});
