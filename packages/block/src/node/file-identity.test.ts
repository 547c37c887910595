import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { tempDir } from '@img/testkit';
import { FileStorage } from './file-storage.js';

const tmp = tempDir('img-file-identity-');
afterAll(() => tmp.cleanup());

it('Storage.identity: every name of one file gives one identity, another file another', async () => {
  const p = (name: string) => join(tmp.path, name);
  writeFileSync(p('a.img'), new Uint8Array(512));
  writeFileSync(p('b.img'), new Uint8Array(512));
  symlinkSync('a.img', p('link.img'));
  mkdirSync(p('sub'));
  const names = ['a.img', './a.img', 'sub/../a.img', 'link.img', 'b.img'].map((n) => join(tmp.path, n));
  const storages = await Promise.all(names.map((n) => FileStorage.open(n, { lock: false })));
  try {
    const ids = storages.map((s) => s.identity);
    expect(ids[0]).toMatch(/^file:\d+:\d+$/);
    expect(new Set(ids.slice(0, 4)).size).toBe(1);
    expect(ids[4]).not.toBe(ids[0]);
    const created = await FileStorage.create(p('c.img'), { lock: false });
    expect(created.identity).not.toBe(ids[0]);
    await created.close();
  } finally {
    for (const s of storages) await s.close();
  }
});
