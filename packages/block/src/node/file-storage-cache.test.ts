import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '@img/testkit';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createRaw } from '../raw.js';
import { FileStorage } from './file-storage.js';

describe('FileStorage cache modes', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('flushes with fdatasync by default and not at all with cache "unsafe"', async () => {
    const probe = await open(join(tmp.path, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const spy = vi.spyOn(proto, 'datasync');
    try {
      const safe = await FileStorage.create(join(tmp.path, 'safe.bin'));
      await safe.write(0, new Uint8Array([1]));
      await safe.flush();
      expect(spy).toHaveBeenCalledTimes(1);
      await safe.close();

      const unsafe = await FileStorage.create(join(tmp.path, 'unsafe.bin'), { cache: 'unsafe' });
      expect(unsafe.cache).toBe('unsafe');
      await unsafe.write(0, new Uint8Array([2]));
      await unsafe.flush();
      expect(spy).toHaveBeenCalledTimes(1);
      await unsafe.close();

      const reopened = await FileStorage.open(join(tmp.path, 'unsafe.bin'), { readOnly: false, cache: 'unsafe' });
      expect(await reopened.read(0, 1)).toEqual(new Uint8Array([2]));
      await reopened.flush();
      expect(spy).toHaveBeenCalledTimes(1);
      await reopened.close();
    } finally {
      spy.mockRestore();
    }
  });

  it('create empties an existing file without truncating through the descriptor it returns', async () => {
    // ext4 flushes a file on close when it was truncated to zero through
    // that descriptor: the storage create() returns must never do that.
    const path = join(tmp.path, 'existing.bin');
    await writeFile(path, new Uint8Array(8192).fill(9));
    const probe = await open(join(tmp.path, 'probe2'), 'w');
    const proto = Object.getPrototypeOf(probe) as { truncate: (n?: number) => Promise<void> };
    await probe.close();
    const spy = vi.spyOn(proto, 'truncate');
    try {
      const storage = await FileStorage.create(path);
      expect(await storage.size()).toBe(0);
      const disk = await createRaw(storage, { size: 1 << 20 });
      expect(spy.mock.calls).toEqual([[1 << 20]]);
      await disk.write(4096, new Uint8Array(512).fill(3));
      await disk.close();
      const back = await FileStorage.open(path);
      expect(await back.size()).toBe(1 << 20);
      expect((await back.read(4096, 512)).every((b) => b === 3)).toBe(true);
      expect((await back.read(0, 4096)).every((b) => b === 0)).toBe(true);
      await back.close();
      await expect(FileStorage.create(path, { exclusive: true })).rejects.toMatchObject({ code: 'ERR_IMG_IO' });
    } finally {
      spy.mockRestore();
    }
  });

  it('close waits for reads and writes still in flight', async () => {
    const path = join(tmp.path, 'inflight.bin');
    const storage = await FileStorage.create(path);
    const chunk = new Uint8Array(1 << 20).fill(5);
    const writes = Array.from({ length: 8 }, (_, i) => storage.write(i * chunk.length, chunk));
    const read = storage.read(0, 4096);
    await storage.close();
    await Promise.all(writes);
    expect((await read).length).toBeLessThanOrEqual(4096);
    const back = await FileStorage.open(path);
    expect(await back.size()).toBe(8 << 20);
    expect((await back.read((8 << 20) - 4096, 4096)).every((b) => b === 5)).toBe(true);
    await back.close();
  });
});
