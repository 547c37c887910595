import { describe, expect, it } from 'vitest';
import { seededBytes } from '@img/testkit';
import { BlobStorage, BlobTarget, storageToBlob, type BlobLike } from './blob-storage.js';
import { ImageError } from './errors.js';
import { MemoryStorage } from './memory-storage.js';
import { createRaw, openRaw } from './raw.js';

async function codeOf(work: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await work();
  } catch (e) {
    expect(ImageError.isInstance(e), String(e)).toBe(true);
    return (e as ImageError).code;
  }
  return undefined;
}

describe('BlobStorage', () => {
  const bytes = seededBytes(100_003, 7);

  it('reads positional ranges of a Blob, short only at its end', async () => {
    const s = new BlobStorage(new Blob([bytes]));
    expect(s.name).toBe('blob');
    expect(s.readOnly).toBe(true);
    expect(await s.size()).toBe(bytes.length);
    expect(await s.read(0, 10)).toEqual(bytes.subarray(0, 10));
    expect(await s.read(65_530, 20)).toEqual(bytes.subarray(65_530, 65_550));
    expect(await s.read(100_000, 10)).toEqual(bytes.subarray(100_000));
    expect((await s.read(200_000, 10)).length).toBe(0);
    expect((await s.read(5, 0)).length).toBe(0);
    const target = new Uint8Array(16).fill(0xee);
    expect(await s.readInto(99_995, target)).toBe(8);
    expect(target.subarray(0, 8)).toEqual(bytes.subarray(99_995));
    expect(target[8]).toBe(0xee);
  });

  it('takes its name from a File, or from the options', () => {
    expect(new BlobStorage(new File([bytes], 'disk.qcow2')).name).toBe('disk.qcow2');
    expect(new BlobStorage(new File([bytes], 'disk.qcow2'), { name: 'upload' }).name).toBe('upload');
  });

  it('is read-only, refuses use after close and bad ranges, each with its code', async () => {
    const s = new BlobStorage(new Blob([bytes]));
    expect(await codeOf(() => s.write())).toBe('ERR_IMG_READ_ONLY');
    expect(await codeOf(() => s.truncate())).toBe('ERR_IMG_READ_ONLY');
    expect(await codeOf(() => s.read(-1, 4))).toBe('ERR_IMG_INVALID_ARG');
    expect(await codeOf(() => s.read(0, 2 ** 53))).toBe('ERR_IMG_INVALID_ARG');
    await s.close();
    expect(await codeOf(() => s.read(0, 4))).toBe('ERR_IMG_CLOSED');
    expect(await codeOf(() => s.size())).toBe('ERR_IMG_CLOSED');
  });

  it('reports a Blob that cannot be read (a File changed since it was picked) as ERR_IMG_IO with the offset', async () => {
    const failing: BlobLike = {
      size: 4096,
      slice: () => ({ arrayBuffer: () => Promise.reject(new Error('The requested file could not be read')) }),
    };
    const s = new BlobStorage(failing, { name: 'gone.vhd', cacheBytes: 0 });
    const e = await s.read(512, 512).catch((x: unknown) => x as ImageError);
    expect(ImageError.isInstance(e)).toBe(true);
    expect((e as ImageError).code).toBe('ERR_IMG_IO');
    expect((e as ImageError).message).toMatch(/^gone\.vhd: cannot read 512 bytes at 512 \(The requested file could not be read\)$/);
    expect((e as ImageError).data.offset).toBe(512);
  });

  it('with the cache off, loads only the ranges asked for', async () => {
    const sliced: Array<[number, number]> = [];
    const blob = new Blob([bytes]);
    const counting: BlobLike = {
      size: blob.size,
      slice: (a, b) => {
        sliced.push([a!, b!]);
        return blob.slice(a, b);
      },
    };
    const disk = await openRaw(new BlobStorage(counting, { cacheBytes: 0 }), { readOnly: true });
    expect(await disk.read(4096, 512)).toEqual(bytes.subarray(4096, 4608));
    await disk.close();
    expect(sliced.reduce((n, [a, b]) => n + (b - a), 0)).toBeLessThanOrEqual(512);
  });

  it('serves short reads from cached blocks: the right bytes across block boundaries, few fetches, bounded memory', async () => {
    const blob = new Blob([bytes]);
    const sliced: Array<[number, number]> = [];
    const counting: BlobLike = {
      size: blob.size,
      slice: (a, b) => {
        sliced.push([a!, b!]);
        return blob.slice(a, b);
      },
    };
    const s = new BlobStorage(counting, { blockSize: 1000, cacheBytes: 3000 });
    let x = 12345;
    for (let i = 0; i < 2000; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      const at = x % 110_000;
      const len = (x >>> 8) % 1200;
      const want = bytes.subarray(at, Math.min(bytes.length, at + len));
      expect(await s.read(at, len), `${at}+${len}`).toEqual(want);
    }
    // Short reads came in whole blocks; long ones (>= a block) as asked.
    for (const [a, b] of sliced) expect((a % 1000 === 0 && (b - a === 1000 || b === bytes.length)) || b - a >= 1000, `${a}..${b}`).toBe(true);
    // Sequential short reads: one fetch per block, and a block dropped from the cache (3 kept) is fetched again.
    sliced.length = 0;
    const t = new BlobStorage(counting, { blockSize: 1000, cacheBytes: 3000 });
    for (let at = 0; at < 5000; at += 100) await t.read(at, 100);
    expect(sliced.length).toBe(5);
    await t.read(0, 10);
    expect(sliced.length).toBe(6);
    await t.read(4500, 10);
    expect(sliced.length).toBe(6);
    // Concurrent readers of one block share its fetch.
    sliced.length = 0;
    const u = new BlobStorage(counting, { blockSize: 4096 });
    await Promise.all(Array.from({ length: 16 }, (_, i) => u.read(i * 256, 256)));
    expect(sliced.length).toBe(1);
    expect(await codeOf(async () => new BlobStorage(blob, { blockSize: 0 }))).toBe('ERR_IMG_INVALID_ARG');
  });

  it('does not keep a failed block fetch: the next read tries again', async () => {
    let fail = true;
    const blob = new Blob([bytes]);
    const flaky: BlobLike = {
      size: blob.size,
      slice: (a, b) => (fail ? { arrayBuffer: () => Promise.reject(new Error('busy')) } : blob.slice(a, b)),
    };
    const s = new BlobStorage(flaky, { name: 'f.img', blockSize: 4096 });
    expect(await codeOf(() => s.read(10, 10))).toBe('ERR_IMG_IO');
    fail = false;
    expect(await s.read(10, 10)).toEqual(bytes.subarray(10, 20));
  });
});

describe('storageToBlob', () => {
  it("gives a Storage's whole content as a Blob, chunk by chunk", async () => {
    const data = seededBytes(10_007, 3);
    const mem = MemoryStorage.from(data);
    for (const chunkSize of [1000, 4096, 1 << 22]) {
      const blob = await storageToBlob(mem, { chunkSize });
      expect(blob.size).toBe(data.length);
      expect(blob.type).toBe('application/octet-stream');
      expect(new Uint8Array(await blob.arrayBuffer())).toEqual(data);
    }
    expect((await storageToBlob(new MemoryStorage(), { type: 'application/x-qcow2' })).type).toBe('application/x-qcow2');
    expect(await codeOf(() => storageToBlob(mem, { chunkSize: 0 }))).toBe('ERR_IMG_INVALID_ARG');
  });
});

describe('BlobTarget', () => {
  it('is a writable Storage whose bytes outlive close(), as a Blob', async () => {
    const t = new BlobTarget({ name: 'out.img' });
    expect(t.readOnly).toBe(false);
    const disk = await createRaw(t, { size: 8192 });
    await disk.write(4096, seededBytes(4096, 1));
    await disk.close();
    expect(await codeOf(() => t.read(0, 1))).toBe('ERR_IMG_CLOSED');
    expect(await codeOf(() => t.write(0, new Uint8Array(1)))).toBe('ERR_IMG_CLOSED');
    const blob = await t.toBlob({ type: 'application/octet-stream' });
    expect(blob.size).toBe(8192);
    const bytes = new Uint8Array(await blob.arrayBuffer());
    expect(bytes.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(4096)).toEqual(seededBytes(4096, 1));
    // And back in through BlobStorage.
    const again = await openRaw(new BlobStorage(blob), { readOnly: true });
    expect(await again.read(4096, 16)).toEqual(seededBytes(4096, 1).subarray(0, 16));
    await again.close();
  });
});
