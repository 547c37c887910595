import { MemoryStorage, openRaw } from '@img/block';
import { chunked, collectBytes, describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openVmdk } from './open.js';
import { readOvaStream } from './ova-read-stream.js';
import { streamOva } from './ova-write.js';
import { readTar } from './ova.js';
import { serializeTarHeader } from './ova-write-tar.js';
import { readVmdkStream } from './read-stream.js';
import { streamVmdk } from './stream.js';

/** The guest bytes a stream yields, or the error it ends with. */
async function viaStream(bytes: Uint8Array): Promise<Uint8Array> {
  const source = await readVmdkStream(chunked(bytes, 11));
  const out = new Uint8Array(source.size);
  for await (const { offset, data } of source.pieces) out.set(data, offset);
  return out;
}

/** The guest bytes read from `bytes` as a file (open, then read the whole disk). */
async function viaFile(bytes: Uint8Array): Promise<Uint8Array> {
  const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'x.vmdk' }));
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
  }
}

/** File offsets of the grain markers and of the first metadata marker after them, walked from overHead. */
function layout(image: Uint8Array): { grains: number[]; metadata: number[] } {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const grains: number[] = [];
  const metadata: number[] = [];
  for (let at = Number(view.getBigUint64(64, true)) * 512; at + 512 <= image.length;) {
    const value = Number(view.getBigUint64(at, true));
    const size = view.getUint32(at + 8, true);
    if (size === 0) {
      metadata.push(at);
      if (view.getUint32(at + 12, true) === 0) break;
      at += 512 + value * 512;
      continue;
    }
    grains.push(at);
    at += Math.ceil((12 + size) / 512) * 512;
  }
  return { grains, metadata };
}

function zeroFilled(cut: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(cut);
  return out;
}

/** A guest of 16 grains of 64 KiB with data in every grain. */
const content = seededBytes(16 * 65536, 42);

describe('a truncated streamOptimized VMDK fails as a stream where it fails as a file', () => {
  async function vmwareLayout(): Promise<Uint8Array> {
    return collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(content)))).chunks);
  }

  it('reads the whole image, with zero padding between grains and zeros after the end-of-stream marker', async () => {
    const image = await vmwareLayout();
    expect(Buffer.from(await viaStream(image)).equals(Buffer.from(content))).toBe(true);
    expect(Buffer.from(await viaFile(image)).equals(Buffer.from(content))).toBe(true);
    const { grains } = layout(image);
    const padded = Buffer.concat([image.subarray(0, grains[5]!), new Uint8Array(1024), image.subarray(grains[5]!), new Uint8Array(4096)]);
    expect(Buffer.from(await viaStream(padded)).equals(Buffer.from(content))).toBe(true);
  });

  it('GD_AT_END layout: a cut at a grain boundary, mid-grain, before the footer or before the end-of-stream marker, zero-filled or not', async () => {
    const image = await vmwareLayout();
    const { grains, metadata } = layout(image);
    expect(grains.length).toBe(16);
    const footerMarker = image.length - 3 * 512;
    const cuts: [string, Uint8Array][] = [
      ['grain boundary', image.slice(0, grains[8]!)],
      ['mid-grain', image.slice(0, grains[8]! + 700)],
      ['before the grain tables', image.slice(0, metadata[0]!)],
      ['before the footer', image.slice(0, footerMarker)],
      ['before the end-of-stream marker', image.slice(0, image.length - 512)],
      ['grain boundary, zero-filled', zeroFilled(image.slice(0, grains[8]!), image.length)],
      ['before the footer, zero-filled', zeroFilled(image.slice(0, footerMarker), image.length)],
    ];
    for (const [what, cut] of cuts) {
      await expect(viaStream(cut), what).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/truncated|stream ends/) as unknown });
      await expect(viaFile(cut), what).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
    }
  });

  it('refuses data after the end-of-stream marker and an end-of-stream marker with non-zero padding before the end', async () => {
    const image = await vmwareLayout();
    const trailing = Buffer.concat([image, new Uint8Array(512).fill(7)]);
    await expect(viaStream(trailing)).rejects.toThrow(/data follows the end-of-stream marker/);
    const { grains } = layout(image);
    const early = Buffer.concat([
      image.subarray(0, grains[3]!),
      (() => {
        const s = new Uint8Array(512);
        s[100] = 1;
        return s;
      })(),
      image.subarray(grains[3]!),
    ]);
    await expect(viaStream(early)).rejects.toThrow(/end-of-stream marker at 0x[0-9a-f]+ comes before the stream is complete/);
  });

  it('an OVA from a pipe whose VMDK member is cut (the tar itself whole) fails', async () => {
    const s = await streamOva(await openRaw(MemoryStorage.from(content)), { mtime: 1_700_000_000, name: 'vm', manifest: 'none' });
    const ova = await collectBytes(s.chunks);
    const members = (await readTar(MemoryStorage.from(ova))).map((m): [string, Uint8Array] => [m.name, ova.slice(m.offset, m.offset + m.size)]);
    const disk = members.find(([n]) => n.endsWith('.vmdk'))!;
    const ovf = members.find(([n]) => n.endsWith('.ovf'))!;
    const cutDisk = disk[1].slice(0, layout(disk[1]).grains[9]!);
    // The OVF's size attribute names the whole member; give it the cut size, as a re-packed truncated download would.
    const ovfText = new TextDecoder().decode(ovf[1]).replace(/ovf:size="\d+"/, `ovf:size="${cutDisk.length}"`);
    const parts: Uint8Array[] = [];
    for (const [name, data] of [
      [ovf[0], new TextEncoder().encode(ovfText)],
      [disk[0], cutDisk],
    ] as const) {
      parts.push(serializeTarHeader({ name, size: data.length }), data, new Uint8Array((512 - (data.length % 512)) % 512));
    }
    parts.push(new Uint8Array(1024));
    const tar = Buffer.concat(parts);
    const read = async () => {
      const source = await readOvaStream(chunked(tar, 5));
      let pieces = 0;
      for await (const piece of source.pieces) pieces += piece.data.length > 0 ? 1 : 0;
      return pieces;
    };
    await expect(read()).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/truncated/) as unknown });
  });
});

describeQemu('qemu-img streamOptimized (directory and tables first, no footer): a truncated copy fails as a stream, as qemu-img fails on the file', () => {
  it('cut at a grain boundary, mid-grain and zero-filled: refused by the stream reader, the file reader and qemu-img', async () => {
    const { path: dir, cleanup } = tempDir();
    const raw = join(dir, 'src.raw');
    const so = join(dir, 'so.vmdk');
    writeFileSync(raw, content);
    qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, so]);
    const image = new Uint8Array(readFileSync(so));
    expect(Buffer.from(await viaStream(image)).equals(Buffer.from(content))).toBe(true);
    const { grains } = layout(image);
    expect(grains.length).toBe(16);
    const cuts: [string, Uint8Array][] = [
      ['grain boundary', image.slice(0, grains[8]!)],
      ['mid-grain', image.slice(0, grains[8]! + 700)],
      ['before the last grain', image.slice(0, grains[15]!)],
      ['grain boundary, zero-filled', zeroFilled(image.slice(0, grains[8]!), image.length)],
    ];
    for (const [what, cut] of cuts) {
      await expect(viaStream(cut), what).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/truncated|stream ends/) as unknown });
      await expect(viaFile(cut), what).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
      const file = join(dir, 'cut.vmdk');
      writeFileSync(file, cut);
      expect(qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', file, join(dir, 'out.raw')], { allowFail: true }).status, what).not.toBe(0);
    }
    cleanup();
  });
});
