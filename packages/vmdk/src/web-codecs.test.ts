// The web platform's codecs (DecompressionStream / CompressionStream, which
// Node 20 has too), swapped in for these cases: the same grains as
// node:zlib, the same bounds, and whole streamOptimized images read
// through them equal to qemu-img's raw.
import { diskExtents, MemoryStorage } from '@img/block';
import { describeQemu, qemuImg, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync, inflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deflateGrain, inflateGrain, setVmdkCodecs, type VmdkCodecs } from './compression.js';
import { createVmdk } from './create.js';
import { openVmdk } from './open.js';
import { webCodecs } from './web-codecs.js';

let before: VmdkCodecs;
beforeAll(() => {
  before = setVmdkCodecs(webCodecs);
});
afterAll(() => {
  setVmdkCodecs(before);
});

describe('web codecs for compressed grains', () => {
  it('inflate what node:zlib deflates, also with bytes after the stream; deflate what node:zlib inflates', async () => {
    const grain = seededBytes(65536, 3);
    grain.fill(0x20, 1000, 40_000);
    const z = deflateSync(grain);
    expect(Buffer.from(await inflateGrain(z, 65536, { hostOffset: 0 })).equals(Buffer.from(grain))).toBe(true);
    const trailing = new Uint8Array(z.length + 700);
    trailing.set(z);
    trailing.fill(0xee, z.length);
    expect(Buffer.from(await inflateGrain(trailing, 65536, { hostOffset: 0 })).equals(Buffer.from(grain))).toBe(true);
    const ours = await deflateGrain(grain);
    expect(Buffer.from(inflateSync(ours)).equals(Buffer.from(grain))).toBe(true);
  });

  it('a bomb stops at one grain, garbage is ERR_IMG_CORRUPT', async () => {
    await expect(inflateGrain(deflateSync(new Uint8Array(8 << 20)), 65536, { hostOffset: 0x2000 })).rejects.toThrow(/at 0x2000 inflates to more than one grain/);
    await expect(inflateGrain(new Uint8Array(100).fill(7), 65536, { hostOffset: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
  });

  it('a streamOptimized image written and read back through them', async () => {
    const storage = new MemoryStorage({ name: 'w.vmdk' });
    const content = new Uint8Array(3 * 65536 + 4096);
    content.set(seededBytes(70_000, 5), 0);
    content.fill(0x41, 100_000, 190_000);
    const disk = await createVmdk(storage, { size: content.length, subformat: 'streamOptimized' });
    await disk.write(0, content);
    await disk.close();
    const back = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'w.vmdk', readOnly: true }));
    expect(Buffer.from(await back.read(0, back.size)).equals(Buffer.from(content))).toBe(true);
    await back.close();
  });
});

describeQemu('streamOptimized fixtures read through the web codecs equal qemu-img convert -O raw', () => {
  const dir = tempDir('vmdk-web-');
  afterAll(() => dir.cleanup());
  for (const name of ['stream-qemu.vmdk', 'stream-vmdkstream.vmdk']) {
    it(name, async () => {
      const path = join(testImagesDir, 'vmdk', name);
      const raw = join(dir.path, `${name}.raw`);
      qemuImg(['convert', '-O', 'raw', path, raw]);
      const disk = await openVmdk(MemoryStorage.from(new Uint8Array(readFileSync(path)), { name, readOnly: true }));
      try {
        expect(Buffer.from(await disk.read(0, disk.size)).equals(readFileSync(raw))).toBe(true);
        expect((await diskExtents(disk)).some((e) => e.kind === 'data')).toBe(true);
      } finally {
        await disk.close();
      }
    });
  }
});
