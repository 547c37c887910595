// The web platform's codecs (what a browser uses), run here in Node, whose
// DecompressionStream/CompressionStream follow the same standard: the
// committed compressed fixtures read as qemu wrote them, the bounds hold,
// and deflate clusters written this way pass qemu-img check and compare.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, bytesEqual } from '@img/block';
import { FileStorage } from '@img/block/node';
import { chunked, describeQemu, diskSha256, loadManifest, qemuCheck, qemuCompare, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import type { Qcow2Codecs } from './codecs.js';
import { compressCluster, decompressCluster, qcow2Codecs, setQcow2Codecs } from './compression.js';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from './constants.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { readQcow2Stream } from './read-stream.js';
import { inflateRawWeb, webCodecs } from './web-codecs.js';

let before: Qcow2Codecs;
beforeAll(() => {
  before = setQcow2Codecs(webCodecs);
});
afterAll(() => {
  setQcow2Codecs(before);
});

const ctx = { file: 'x.qcow2', hostOffset: 0x1234 };

async function corruptMessage(work: () => unknown): Promise<string> {
  try {
    await work();
  } catch (e) {
    expect(ImageError.isInstance(e), String(e)).toBe(true);
    expect((e as ImageError).code).toBe('ERR_IMG_CORRUPT');
    return (e as Error).message;
  }
  throw new Error('expected ERR_IMG_CORRUPT');
}

/** Compressible bytes that are not all alike: small values, so deflate has work and matches at every distance. */
function compressible(length: number, seed: number): Uint8Array {
  return seededBytes(length, seed).map((b) => b & 7);
}

describe('web codecs: deflate', () => {
  it('are the codecs in use here, and answer with promises', () => {
    expect(qcow2Codecs().name).toBe('web');
    const z = deflateRawSync(new Uint8Array(512));
    expect(decompressCluster(COMPRESSION_ZLIB, z, 512, ctx)).toBeInstanceOf(Promise);
  });

  for (const cs of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`inflate one ${cs}-byte cluster followed by sector padding and other bytes (the stream's end falls anywhere in a write)`, async () => {
      const data = compressible(cs, cs);
      const z = deflateRawSync(data, { level: 6, windowBits: 12 });
      for (const junk of [0, 1, 511, 4095, 9000]) {
        const input = new Uint8Array(z.length + junk).fill(0x5a);
        input.set(z);
        // bytesEqual: toEqual walks 2 MiB element by element for seconds.
        expect(bytesEqual(await decompressCluster(COMPRESSION_ZLIB, input, cs, ctx), data), `${junk} bytes after`).toBe(true);
      }
    });
  }

  it('refuse a short stream, a bomb and garbage, with the cluster named', async () => {
    const cs = 4096;
    expect(await corruptMessage(() => decompressCluster(COMPRESSION_ZLIB, deflateRawSync(new Uint8Array(cs - 1)), cs, ctx))).toMatch(/inflates to 4095 bytes instead of one cluster/);
    expect(await corruptMessage(() => decompressCluster(COMPRESSION_ZLIB, new Uint8Array([0xff, 0xff, 0xff]), cs, ctx))).toMatch(/qcow2: x.qcow2: compressed cluster at 0x1234 is not a valid deflate stream/);
    // 64 MiB of zeros in ~64 KiB: stops after one write's worth, never holds the whole expansion.
    const bomb = deflateRawSync(new Uint8Array(64 * 1024 * 1024));
    const started = Date.now();
    expect(await corruptMessage(() => decompressCluster(COMPRESSION_ZLIB, bomb, cs, ctx))).toMatch(/more than one cluster/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('a stream cut short is short, not a crash', async () => {
    const data = compressible(65536, 5);
    const z = deflateRawSync(data);
    expect(await corruptMessage(() => decompressCluster(COMPRESSION_ZLIB, z.subarray(0, z.length >> 1), 65536, ctx))).toMatch(/compressed cluster at 0x1234/);
    // The codec alone yields what the stream held before the cut is noticed, never more than asked.
    await expect(inflateRawWeb(z.subarray(0, 100), 65536)).rejects.toThrow();
  });

  it('a platform without DecompressionStream/CompressionStream("deflate-raw") is ERR_IMG_UNSUPPORTED, not a corrupt image', async () => {
    const g = globalThis as { DecompressionStream?: unknown; CompressionStream?: unknown };
    const saved = { d: g.DecompressionStream, c: g.CompressionStream };
    // As an older browser: the constructors exist but refuse the format.
    g.DecompressionStream = class {
      constructor(format: string) {
        throw new TypeError(`Unsupported compression format: '${format}'`);
      }
    };
    g.CompressionStream = undefined;
    try {
      const e = await Promise.resolve(decompressCluster(COMPRESSION_ZLIB, deflateRawSync(new Uint8Array(512)), 512, ctx)).catch((x: unknown) => x as ImageError);
      expect(ImageError.isInstance(e)).toBe(true);
      expect((e as ImageError).code).toBe('ERR_IMG_UNSUPPORTED');
      expect((e as ImageError).message).toBe('qcow2: x.qcow2: compressed cluster at 0x1234: this platform has no DecompressionStream("deflate-raw"); install other codecs with setQcow2Codecs()');
      const c = await compressCluster(COMPRESSION_ZLIB, new Uint8Array(512)).catch((x: unknown) => x as ImageError);
      expect((c as ImageError).code).toBe('ERR_IMG_UNSUPPORTED');
      expect((c as ImageError).message).toMatch(/^qcow2: deflate compression: this platform has no CompressionStream\("deflate-raw"\)/);
    } finally {
      g.DecompressionStream = saved.d;
      g.CompressionStream = saved.c;
    }
  });

  it('compress what node:zlib inflates (the platform level, a wider window than qemu uses); refuse what does not shrink', async () => {
    const data = compressible(65536, 9);
    const z = (await compressCluster(COMPRESSION_ZLIB, data))!;
    expect(z.length).toBeLessThan(data.length);
    expect(new Uint8Array(inflateRawSync(z))).toEqual(data);
    expect(await compressCluster(COMPRESSION_ZLIB, seededBytes(65536, 3))).toBeUndefined();
  });
});

describe('web codecs: zstd', () => {
  it('decode through fzstd and encode through libzstd in WebAssembly', async () => {
    const data = compressible(65536, 11);
    const z = (await compressCluster(COMPRESSION_ZSTD, data))!;
    expect([...z.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
    expect(decompressCluster(COMPRESSION_ZSTD, z, 65536, ctx)).toEqual(data);
  });
});

describe('web codecs: the committed compressed fixtures', () => {
  const manifest = loadManifest();
  for (const entry of manifest.images.filter((i) => /^qcow2\/compressed-/.test(i.file))) {
    it(`${entry.file} reads to the MANIFEST hash`, async () => {
      const storage = await FileStorage.open(join(testImagesDir, entry.file), { readOnly: true });
      const disk = await openQcow2(storage, { readOnly: true });
      try {
        expect(await diskSha256(disk)).toBe(entry.sha256);
      } finally {
        await disk.close();
      }
    });
  }
});

describe('web codecs: the streaming reader', () => {
  for (const file of ['qcow2/compressed-zlib-64k.qcow2', 'qcow2/compressed-zlib-4k.qcow2', 'qcow2/compressed-zstd-512.qcow2']) {
    it(`${file} decodes from a byte stream to the MANIFEST hash`, async () => {
      const entry = loadManifest().images.find((i) => i.file === file)!;
      const src = await readQcow2Stream(chunked(readFileSync(join(testImagesDir, file)), 5));
      const guest = new Uint8Array(src.size);
      for await (const piece of src.pieces) guest.set(piece.data, piece.offset);
      expect(createHash('sha256').update(guest).digest('hex')).toBe(entry.sha256);
    });
  }
});

describeQemu('web codecs: deflate clusters written this way', () => {
  it('pass qemu-img check and compare equal to the guest bytes (64 KiB and 2 MiB clusters)', async () => {
    const dir = tempDir('img-web-codecs-');
    try {
      for (const clusterSize of [65536, 2 * 1024 * 1024]) {
        const size = 4 * clusterSize;
        const guest = new Uint8Array(size);
        guest.set(compressible(clusterSize * 2, clusterSize), 0);
        guest.set(seededBytes(clusterSize, 2), 3 * clusterSize); // does not shrink: stored plain
        const file = join(dir.path, `web-${clusterSize}.qcow2`);
        const raw = join(dir.path, `web-${clusterSize}.raw`);
        writeFileSync(raw, guest);
        const mem = new MemoryStorage();
        const disk = await createQcow2(mem, { size, clusterSize });
        await disk.writeCompressed(0, guest);
        await disk.close();
        const plainMem = new MemoryStorage();
        const plain = await createQcow2(plainMem, { size, clusterSize });
        await plain.write(0, guest);
        await plain.close();
        // The two compressible clusters went in compressed (to well under half their size).
        expect(mem.byteLength, file).toBeLessThan(plainMem.byteLength - clusterSize);
        writeFileSync(file, mem.toBytes());
        expect(qemuCheck(file, 'qcow2').status, file).toBe(0);
        expect(qemuCompare(file, raw, 'qcow2', 'raw'), file).toBe(true);
      }
    } finally {
      dir.cleanup();
    }
  });
});
