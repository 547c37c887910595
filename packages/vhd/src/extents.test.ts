import { describe, expect, it } from 'vitest';
import { MemoryStorage, type Extent } from '@img/block';
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
