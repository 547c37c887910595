import { MemoryStorage, openRaw } from '@img/block';
import { chunked, loadManifest, seededBytes, testImagesDir } from '@img/testkit';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readVmdkStream } from './read-stream.js';
import { streamVmdk } from './stream.js';
import { createVmdk } from './create.js';
import { setVmdkCodecs, vmdkCodecs } from './compression.js';

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

  it('grains inflated in batches yield what grain by grain yields, up to and including the first error', async () => {
    // 40 grains of 64 KiB: text-like, a random one, zeros between, and a short last grain.
    const content = new Uint8Array(40 * 65536 - 3072);
    const line = new TextEncoder().encode('a grain of words, and then some more words 0123456789\n');
    for (let at = 0; at < content.length; at += line.length) content.set(line.subarray(0, Math.min(line.length, content.length - at)), at);
    content.set(seededBytes(65536, 7), 5 * 65536);
    content.fill(0, 9 * 65536, 12 * 65536);
    const src = await openRaw(MemoryStorage.from(content));
    const chunks: Uint8Array[] = [];
    for await (const c of (await streamVmdk(src)).chunks) chunks.push(c.slice());
    const image = new Uint8Array(Buffer.concat(chunks));
    // The grain markers, walked from overHead: [file offset, compressed size].
    const view = new DataView(image.buffer);
    const grains: [number, number][] = [];
    for (let at = Number(view.getBigUint64(64, true)) * 512; at + 512 <= image.length;) {
      const value = Number(view.getBigUint64(at, true));
      const size = view.getUint32(at + 8, true);
      if (size === 0) {
        if (view.getUint32(at + 12, true) === 0) break;
        at += 512 + value * 512;
        continue;
      }
      grains.push([at, size]);
      at += Math.ceil((12 + size) / 512) * 512;
    }
    expect(grains.length).toBeGreaterThan(30);
    /** Offsets and bytes of the pieces until the end or an error, and the error's message. */
    const collect = async (bytes: Uint8Array, batches: boolean) => {
      const saved = batches ? undefined : setVmdkCodecs({ ...vmdkCodecs(), inflateGrains: undefined });
      const got: string[] = [];
      let error = '';
      try {
        const source = await readVmdkStream(chunked(bytes, 7));
        for await (const { offset, data } of source.pieces) got.push(`${offset}:${createHash('sha256').update(data).digest('hex')}`);
      } catch (e) {
        error = (e as Error).message;
      } finally {
        if (saved) setVmdkCodecs(saved);
      }
      return { got, error };
    };
    const good = await collect(image, true);
    expect(good.error).toBe('');
    expect(good).toEqual(await collect(image, false));
    const whole = new Uint8Array(content.length);
    const source = await readVmdkStream(chunked(image, 5));
    for await (const { offset, data } of source.pieces) whole.set(data, offset);
    expect(Buffer.from(whole).equals(Buffer.from(content))).toBe(true);
    // Garbage inside grain 20's stream; grain 27's marker pointed past the disk.
    const badStream = image.slice();
    badStream.fill(0xff, grains[20]![0] + 12, grains[20]![0] + 30);
    const badMarker = image.slice();
    new DataView(badMarker.buffer).setUint32(grains[27]![0], 0x7fff_0000, true);
    for (const [bytes, pattern] of [
      [badStream, /compressed grain at 0x[0-9a-f]+ is not a valid zlib stream/],
      [badMarker, /not the start of a grain inside the disk/],
    ] as const) {
      const many = await collect(bytes, true);
      const one = await collect(bytes, false);
      expect(many.error).toMatch(pattern);
      expect(many).toEqual(one);
      expect(many.got.length).toBeGreaterThan(15);
    }
  });
});
