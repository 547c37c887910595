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
