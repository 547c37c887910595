import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, concatBytes, diskExtents } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCompare, qemuInfo, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';
import { streamVhd, type VhdStreamOptions } from './stream.js';
import { readVhdLayout } from './read-layout.js';

async function collect(disk: VhdDisk, options?: VhdStreamOptions): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of streamVhd(disk, options)) parts.push(p.slice());
  return concatBytes(parts);
}

describe('streamVhd', () => {
  it('a chain streams into one dynamic VHD with the same content and only the blocks that hold data', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b' }), { size: 5_000_000, blockSize: 65536 });
    await base.write(0, seededBytes(70_000, 1));
    const top = await createVhd(new MemoryStorage({ name: 't' }), { parent: { disk: base, relativePath: 'b' }, blockSize: 4096 });
    await top.write(3_000_000, seededBytes(5000, 2));
    const bytes = await collect(top, { blockSize: 65536 });
    const out = await openVhd(MemoryStorage.from(bytes, { name: 's.vhd' }));
    expect(out.size).toBe(top.size);
    expect(Buffer.from(await out.read(0, out.size)).equals(Buffer.from(await top.read(0, top.size)))).toBe(true);
    expect((await readVhdLayout(out.storage)).bat.filter((e) => e !== 0xffffffff).length).toBe(3); // 2 blocks for 70000 bytes, 1 for 5000
    expect(await checkVhd(MemoryStorage.from(bytes))).toMatchObject({ corruptions: 0, leaks: 0 });
    const fixed = await openVhd(MemoryStorage.from(await collect(top, { type: 'fixed' })));
    expect(Buffer.from(await fixed.read(0, fixed.size)).equals(Buffer.from(await top.read(0, top.size)))).toBe(true);
  });
});

describeQemu('streamed images in qemu-img', () => {
  const tmp = tempDir('vhd-stream-');
  afterAll(() => tmp.cleanup());
  for (const type of ['dynamic', 'fixed'] as const) {
    it(`${type}: a streamed copy of a qemu fixture compares identical`, async () => {
      const src = join(testImagesDir, 'vhd/dynamic-default.vhd');
      const disk = await openVhd(await FileStorage.open(src));
      const out = join(tmp.path, `${type}.vhd`);
      writeFileSync(out, await collect(disk, { type }));
      expect(qemuInfo(out, 'vpc')['virtual-size']).toBe(disk.size);
      expect(qemuCompare(src, out, 'vpc', 'vpc')).toBe(true);
      const again = await openVhd(await FileStorage.open(out));
      if (type === 'dynamic') expect(await diskExtents(again)).toEqual(await diskExtents(disk));
      await again.close();
      await disk.close();
    });
  }
});
