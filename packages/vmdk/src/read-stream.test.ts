import { MemoryStorage, openRaw } from '@img/block';
import { chunked, loadManifest, seededBytes, testImagesDir } from '@img/testkit';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readVmdkStream } from './read-stream.js';
import { streamVmdk } from './stream.js';
import { createVmdk } from './create.js';

async function assemble(input: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const source = await readVmdkStream(input);
  const out = new Uint8Array(source.size);
  let last = -1;
  for await (const { offset, data } of source.pieces) {
    expect(offset).not.toBe(last);
    last = offset;
    out.set(data, offset);
  }
  return out;
}

describe('readVmdkStream: streamOptimized read front to back, as from a pipe', () => {
  for (const entry of loadManifest().images.filter((e) => e.file.startsWith('vmdk/stream-'))) {
    it(`${entry.file}: the pieces hash as qemu-img convert -O raw`, async () => {
      const bytes = new Uint8Array(readFileSync(join(testImagesDir, entry.file)));
      const out = await assemble(chunked(bytes, 7));
      expect(out.length).toBe(entry.virtualSize);
      expect(createHash('sha256').update(out).digest('hex')).toBe(entry.sha256);
    });
  }

  it('reads an image createVmdk wrote, whose partly written grains come after later ones', async () => {
    const storage = new MemoryStorage({ name: 'c.vmdk' });
    const disk = await createVmdk(storage, { size: 4 * 65536, subformat: 'streamOptimized' });
    const content = new Uint8Array(4 * 65536);
    content.set(seededBytes(1000, 1), 100); // grain 0, in part: appended last
    content.set(seededBytes(65536, 2), 2 * 65536); // grain 2, whole: appended first
    await disk.write(100, content.subarray(100, 1100));
    await disk.write(2 * 65536, content.subarray(2 * 65536, 3 * 65536));
    await disk.close();
    const out = await assemble(chunked(storage.toBytes(), 5));
    expect(Buffer.from(out).equals(Buffer.from(content))).toBe(true);
    // The same grain twice is refused.
    const twice = storage.toBytes();
    const view = new DataView(twice.buffer);
    const second = 128 * 512 + Math.ceil((12 + view.getUint32(128 * 512 + 8, true)) / 512) * 512;
    view.setUint32(second, 2 * 128, true);
    await expect(assemble(chunked(twice, 5))).rejects.toThrow(/already seen/);
  });

  it('reads what streamVmdk writes', async () => {
    const content = new Uint8Array(3 * 65536 + 1024);
    content.set(seededBytes(70_000, 5), 10_000);
    content.set(seededBytes(1024, 6), content.length - 1024);
    const src = await openRaw(MemoryStorage.from(content));
    const s = await streamVmdk(src);
    const out = await assemble(s.chunks);
    expect(Buffer.from(out).equals(Buffer.from(content))).toBe(true);
  });

  it('refuses grains out of order, an absurd marker, and a sparse image that is not streamOptimized', async () => {
    const bytes = new Uint8Array(readFileSync(join(testImagesDir, 'vmdk/stream-vmdkstream.vmdk')));
    // The first grain marker sits at overHead (sector 128): point it past the disk.
    const bad = bytes.slice();
    new DataView(bad.buffer).setUint32(128 * 512, 0x7fff_0000, true);
    await expect(assemble(chunked(bad, 3))).rejects.toThrow(/not the start of a grain inside the disk/);
    const huge = bytes.slice();
    new DataView(huge.buffer).setUint32(128 * 512 + 8, 0x7fff_ffff, true);
    await expect(assemble(chunked(huge, 3))).rejects.toThrow(/announces 2147483647 compressed bytes/);
    const sparse = new Uint8Array(readFileSync(join(testImagesDir, 'vmdk/sparse.vmdk')));
    await expect(assemble(chunked(sparse, 3))).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
  });
});
