import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { shmDir } from '@img/testkit';
import { FileStorage } from './file-storage.js';

/** /dev/shm where it is a tmpfs: the file system whose small I/O FileStorage does on the calling thread. */
const shm = shmDir();

describe.skipIf(!shm)('FileStorage on tmpfs (small I/O on the calling thread)', () => {
  const dir = shm ? mkdtempSync(join(shm, 'img-test-')) : '';
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads, writes, sizes and truncates as on any file: short reads at the end, growth, errors as ImageErrors', async () => {
    const path = join(dir, 'a.bin');
    const s = await FileStorage.create(path, { lock: false });
    await s.write(1000, new Uint8Array(3000).fill(5)); // small: calling thread
    await s.write(8192, new Uint8Array(1 << 20).fill(6)); // large: the pool
    expect(await s.size()).toBe(8192 + (1 << 20));
    const head = await s.read(0, 5000);
    expect(head.subarray(0, 1000).every((b) => b === 0)).toBe(true);
    expect(head.subarray(1000, 4000).every((b) => b === 5)).toBe(true);
    // A read that runs past the end is short.
    expect((await s.read(8192 + (1 << 20) - 100, 4096)).length).toBe(100);
    await s.truncate(2000);
    expect(await s.size()).toBe(2000);
    expect(readFileSync(path).length).toBe(2000);
    await s.truncate(0);
    expect(await s.size()).toBe(0);
    await s.close();
    const ro = await FileStorage.open(path, { lock: false });
    await expect(ro.write(0, new Uint8Array(10))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
    await ro.close();
    await expect(ro.read(0, 10)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });
});
