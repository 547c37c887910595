// Storages are AsyncDisposable: `await using` closes them (and releases their locks) at the end of the scope.
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { MemoryStorage } from '../memory-storage.js';
import { FileStorage } from './file-storage.js';

const tmp = tempDir('img-dispose-');
afterAll(() => tmp.cleanup());

it('await using closes a FileStorage: a second writable open of the file in this process then succeeds', async () => {
  const path = join(tmp.path, 'd.raw');
  writeFileSync(path, new Uint8Array(4096));
  let kept: FileStorage | undefined;
  {
    await using storage = await FileStorage.open(path, { readOnly: false });
    kept = storage;
    await storage.write(0, new Uint8Array([1, 2, 3]));
  }
  await expect(kept.read(0, 3)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  await using again = await FileStorage.open(path, { readOnly: false });
  expect([...(await again.read(0, 3))]).toEqual([1, 2, 3]);
});

it('await using closes a MemoryStorage', async () => {
  let kept: MemoryStorage | undefined;
  {
    await using storage = new MemoryStorage();
    kept = storage;
  }
  await expect(kept.read(0, 1)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
});
