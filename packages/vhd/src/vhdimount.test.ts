/**
 * libvhdi (vhdimount, FUSE) as a second, independent reader. This libvhdi
 * version (20210425) misreads partially set sector bitmaps, so the chains
 * here write whole blocks only. vhdimount shows every layer of a chain:
 * vhdi1 is the deepest parent and the highest number is the image itself.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith, seededBytes, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import type { VhdDisk } from './disk.js';
import { createVhdFile, openVhdFile } from './node.js';

const fuse = existsSync('/dev/fuse');

function mountRead(image: string, mountPoint: string): Buffer {
  mkdirSync(mountPoint, { recursive: true });
  const r = spawnSync('vhdimount', [image, mountPoint], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`vhdimount failed (${r.status}): ${r.stderr}`);
  try {
    const layers = readdirSync(mountPoint)
      .filter((n) => /^vhdi\d+$/.test(n))
      .sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    return readFileSync(join(mountPoint, layers[layers.length - 1]!));
  } finally {
    spawnSync('umount', [mountPoint]);
  }
}

describeWith('vhdimount', 'vhdimount (libvhdi) reads our images', () => {
  const tmp = tempDir('vhd-vhdi-');
  afterAll(() => tmp.cleanup());
  const BLOCK = 2 * 1024 * 1024;
  const SIZE = 8 * BLOCK + 5 * 512;

  async function whole(disk: VhdDisk, block: number, seed: number, model: Uint8Array): Promise<void> {
    const length = Math.min(BLOCK, disk.size - block * BLOCK);
    const data = seededBytes(length, seed);
    await disk.write(block * BLOCK, data);
    model.set(data, block * BLOCK);
  }

  it.skipIf(!fuse)('a 3-deep differencing chain with whole-block writes reads the same as ours', async () => {
    const model = new Uint8Array(SIZE);
    const base = await createVhdFile(join(tmp.path, 'base.vhd'), { size: SIZE });
    for (const b of [0, 1, 2, 8]) await whole(base, b, b + 1, model);
    await base.close();
    const mid = await createVhdFile(join(tmp.path, 'mid.vhd'), { parentPath: join(tmp.path, 'base.vhd') });
    for (const b of [1, 3]) await whole(mid, b, b + 11, model);
    await mid.close();
    const top = await createVhdFile(join(tmp.path, 'top.vhd'), { parentPath: join(tmp.path, 'mid.vhd') });
    for (const b of [2, 3, 5]) await whole(top, b, b + 21, model);
    await top.close();
    const ours = await openVhdFile(join(tmp.path, 'top.vhd'));
    expect(Buffer.from(await ours.read(0, SIZE)).equals(Buffer.from(model))).toBe(true);
    await ours.close();
    const theirs = mountRead(join(tmp.path, 'top.vhd'), join(tmp.path, 'mnt1'));
    expect(theirs.length).toBe(SIZE);
    expect(theirs.equals(Buffer.from(model))).toBe(true);
  });

  it.skipIf(!fuse)('dynamic (size not CHS-exact) and fixed disks', async () => {
    for (const type of ['dynamic', 'fixed'] as const) {
      const path = join(tmp.path, `${type}.vhd`);
      const disk = await createVhdFile(path, { type, size: 5_000_000 });
      const model = new Uint8Array(disk.size);
      const data = seededBytes(100_000, 3);
      await disk.write(1_234_567 - (1_234_567 % 512), data);
      model.set(data, 1_234_567 - (1_234_567 % 512));
      await disk.close();
      const theirs = mountRead(path, join(tmp.path, `mnt-${type}`));
      expect(theirs.length).toBe(model.length);
      expect(theirs.equals(Buffer.from(model))).toBe(true);
    }
  });
});
