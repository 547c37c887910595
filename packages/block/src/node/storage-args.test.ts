import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '@img/testkit';
import { FileStorage } from './file-storage.js';
import { MemoryStorage } from '../memory-storage.js';
import { BlobStorage } from '../blob-storage.js';
import type { Storage } from '../storage.js';

const dir = tempDir('img-storage-args-');
afterAll(() => dir.cleanup());

const badPositions: unknown[] = [-1, 1.5, NaN, Infinity, 2 ** 60, '0', undefined, null];

/** Every bad argument of read/readInto/write/writev/truncate is refused with ERR_IMG_INVALID_ARG naming the storage, the method and the value. */
async function expectRefusals(s: Storage, cls: string, writable: boolean): Promise<void> {
  const call = s as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const refused = async (method: string, args: unknown[], words: RegExp) => {
    let error: unknown;
    try {
      await call[method]!.apply(s, args);
    } catch (e) {
      error = e;
    }
    expect(error, `${cls}.${method}(${args.map(String).join(', ')})`).toMatchObject({ name: 'ImageError', code: 'ERR_IMG_INVALID_ARG', data: { file: s.name } });
    const message = (error as Error).message;
    expect(message.startsWith(`${s.name}: ${cls}.${method}: `), message).toBe(true);
    expect(message).toMatch(words);
  };
  for (const p of badPositions) {
    const shown = typeof p === 'number' ? String(p) : '';
    await refused('read', [p, 4], new RegExp(`position ${shown.replace('+', '\\+')}`));
    await refused('readInto', [p, new Uint8Array(4)], /position/);
    if (writable) {
      await refused('write', [p, new Uint8Array(512).fill(0xab)], /position/);
      if (s.writev) await refused('writev', [p, [new Uint8Array(512)]], /position/);
    }
  }
  await refused('read', [1.5, 4], /position 1\.5 is not a whole number of bytes/);
  await refused('read', [-1, 4], /position -1 is negative/);
  await refused('read', [0, '10'], /length is a string \("10"\), not a number/);
  await refused('read', [0, -4], /length -4 is negative/);
  await refused('readInto', [0, [0, 0]], /target is an Array, not a Uint8Array/);
  if (writable) {
    await refused('write', [0, [1, 2, 3]], /data is an Array, not a Uint8Array/);
    await refused('write', [0, new Uint16Array(4)], /data is a Uint16Array, not a Uint8Array/);
    await refused('write', [0, 'abc'], /data is a string \("abc"\), not a Uint8Array/);
    await refused('write', [2 ** 53 - 10, new Uint8Array(512)], /ends past 2\^53/);
    if (s.writev) await refused('writev', [0, [new Uint8Array(2), [1]]], /chunk 1 is an Array, not a Uint8Array/);
    if (s.writev) await refused('writev', [0, new Uint8Array(2)], /chunks is a Uint8Array, not an array/);
    await refused('truncate', [-1], /size -1 is negative/);
    await refused('truncate', [0.5], /size 0\.5 is not a whole number/);
  }
}

describe('Storage arguments', () => {
  it('FileStorage refuses bad positions, lengths and buffers, and writes nothing', async () => {
    const path = join(dir.path, 'f.img');
    const before = new Uint8Array(8192).map((_, i) => i & 0xff);
    writeFileSync(path, before);
    const s = await FileStorage.open(path, { readOnly: false });
    await expectRefusals(s, 'FileStorage', true);
    // node:fs writes at the file's current position when given -1: nothing may have landed anywhere.
    await s.close();
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('MemoryStorage and BlobStorage refuse them the same way', async () => {
    const m = new MemoryStorage({ name: 'm', data: new Uint8Array(4096).fill(7) });
    await expectRefusals(m, 'MemoryStorage', true);
    expect(m.toBytes().every((b) => b === 7)).toBe(true);
    await expect(m.punchHole(-1, 10)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(m.ranges(0, NaN)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    const b = new BlobStorage(new Blob([new Uint8Array(4096)]), { name: 'b' });
    await expectRefusals(b, 'BlobStorage', false);
  });

  it('a failed write never leaves close() pending: the file closes and its lock is released', async () => {
    const path = join(dir.path, 'e.img');
    writeFileSync(path, new Uint8Array(4096));
    const s = await FileStorage.open(path, { readOnly: false });
    await expect(s.write(0, [1, 2, 3] as unknown as Uint8Array)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(s.writev(0, [[1, 2, 3] as unknown as Uint8Array])).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(s.readInto(0, {} as Uint8Array)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    // Reads and writes still work afterwards.
    await s.write(0, new Uint8Array([9, 9]));
    expect(Array.from(await s.read(0, 3))).toEqual([9, 9, 0]);
    const closed = await Promise.race([s.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('pending'), 2000))]);
    expect(closed).toBe('closed');
    const again = await FileStorage.open(path, { readOnly: false });
    await again.close();
  });

  it('a write node:fs refuses after the checks (a huge buffer past the file system limit) still lets close() settle', async () => {
    const path = join(dir.path, 'g.img');
    writeFileSync(path, new Uint8Array(512));
    const s = await FileStorage.open(path, { readOnly: false });
    // Past the largest file size ext4/tmpfs/xfs allow: the system call fails (EFBIG/EINVAL), an ERR_IMG_IO.
    await expect(s.write(2 ** 53 - 1024, new Uint8Array(512))).rejects.toMatchObject({ name: 'ImageError' });
    const closed = await Promise.race([s.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('pending'), 2000))]);
    expect(closed).toBe('closed');
  });
});
