import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '@img/testkit';
import { afterAll, describe, expect, it, vi } from 'vitest';
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
});
