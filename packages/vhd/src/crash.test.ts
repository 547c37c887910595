/**
 * Crash consistency: every write, truncate and flush the VHD code issues
 * is recorded, and the image is rebuilt as a crash would leave it: every
 * prefix of the operations, and, within the last unflushed stretch, every
 * subset of its writes (the device may reorder writes between
 * barriers). Every such image must open, check without BAT or bitmap
 * damage, keep every flushed write, and show every sector as either its
 * old or its new content: never a block or sector bit that points at
 * unwritten data.
 */
import { MemoryStorage, type Storage } from '@img/block';
import { seededBytes } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { openVhd } from './open.js';

type Op = { kind: 'write'; pos: number; data: Uint8Array } | { kind: 'truncate'; size: number } | { kind: 'flush' };

class RecordingStorage extends MemoryStorage {
  ops: Op[] = [];
  recording = false;
  override async write(position: number, data: Uint8Array): Promise<void> {
    if (this.recording) this.ops.push({ kind: 'write', pos: position, data: data.slice() });
    return super.write(position, data);
  }
  override async truncate(size: number): Promise<void> {
    if (this.recording) this.ops.push({ kind: 'truncate', size });
    return super.truncate(size);
  }
  override async flush(): Promise<void> {
    if (this.recording) this.ops.push({ kind: 'flush' });
    return super.flush();
  }
}

async function replay(start: Uint8Array, ops: Op[]): Promise<MemoryStorage> {
  const s = MemoryStorage.from(start, { name: 'crash.vhd' });
  for (const op of ops) {
    if (op.kind === 'write') await s.write(op.pos, op.data);
    else if (op.kind === 'truncate') await s.truncate(op.size);
  }
  return s;
}

function rng(seed: number): () => number {
  let x = seed;
  return () => ((x = (x * 1103515245 + 12345) >>> 0), x / 2 ** 32);
}

describe('crash consistency of writes', () => {
  it('differencing child over a parent of 0x77: every crash point reads old-or-new per sector', async () => {
    const SIZE = 256 * 1024;
    const parent = await createVhd(new MemoryStorage({ name: 'p.vhd' }), { size: SIZE, blockSize: 16384 });
    await parent.write(0, new Uint8Array(SIZE).fill(0x77));
    const storage = new RecordingStorage({ name: 'crash.vhd' });
    const child = await createVhd(storage, { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: 16384 });
    const start = storage.toBytes();
    storage.recording = true;
    const writes: Array<{ offset: number; data: Uint8Array }> = [
      { offset: 1000, data: seededBytes(3000, 1) },
      { offset: 40_000, data: seededBytes(40_000, 2) },
      { offset: 9000, data: seededBytes(1600, 3) },
      { offset: 200_000, data: seededBytes(10, 4) },
    ];
    const flushedAfter: number[] = [];
    for (const w of writes) {
      await child.write(w.offset, w.data);
      await child.flush();
      flushedAfter.push(storage.ops.length);
    }
    await child.writeZeroes(100_000, 20_000);
    const ops = storage.ops;
    const old = new Uint8Array(SIZE).fill(0x77);
    const models: Uint8Array[] = [old.slice()];
    for (const w of writes) {
      const m = models[models.length - 1]!.slice();
      m.set(w.data, w.offset);
      models.push(m);
    }
    const final = models[models.length - 1]!.slice();
    final.fill(0, 100_000, 120_000);
    const random = rng(5);
    const resolver = async () => MemoryStorage.from(await parent.read(0, 0).then(() => parentBytes), { name: 'p.vhd' });
    const parentBytes = (parent.storage as MemoryStorage).toBytes();
    let images = 0;
    for (let k = 0; k <= ops.length; k++) {
      const lastFlush = ops.slice(0, k).map((o) => o.kind).lastIndexOf('flush');
      const variants: Op[][] = [ops.slice(0, k)];
      const tail = ops.slice(lastFlush + 1, k);
      // Writes since the last barrier may land in any order: all subsets of a short stretch, a sample of a long one.
      const subsets = tail.length <= 8 ? [...Array(2 ** tail.length).keys()] : [...Array(16)].map(() => Math.floor(random() * 2 ** Math.min(tail.length, 30)));
      if (tail.length > 1) for (const mask of subsets) variants.push([...ops.slice(0, lastFlush + 1), ...tail.filter((_, i) => (mask >> i) & 1)]);
      for (const applied of variants) {
        images++;
        const s = await replay(start, applied);
        const report = await checkVhd(MemoryStorage.from(s.toBytes(), { name: 'crash.vhd' }));
        const damage = report.messages.filter((m) => !/footer/.test(m) && !/unreferenced|junk/.test(m));
        expect(damage, `ops ${k}`).toEqual([]);
        const disk = await openVhd(s, { resolver });
        const got = await disk.read(0, SIZE);
        // Writes flushed before the crash point are all there.
        const done = flushedAfter.filter((n) => n <= lastFlush + 1).length;
        const floor = models[done]!;
        const ceiling = done < writes.length ? models[done + 1]! : final;
        for (let sector = 0; sector < SIZE; sector += 512) {
          const g = got.subarray(sector, sector + 512);
          const a = Buffer.from(floor.subarray(sector, sector + 512));
          const b = Buffer.from(ceiling.subarray(sector, sector + 512));
          const ok = a.equals(g) || b.equals(g);
          if (!ok) expect.fail(`ops ${k}: sector ${sector} is neither old nor new`);
        }
        await disk.close();
      }
    }
    expect(images).toBeGreaterThan(ops.length);
  });
});

export type { Storage };
