// A file opened by name that is not a regular file or a block device is refused at once, before any read or lock:
// a FIFO would block the open (and every read) forever.
import { existsSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeFifo, settleWithin, tempDir } from '@img/testkit';
import { ImageError } from '../errors.js';
import { FileStorage } from './file-storage.js';
import { fileResolver } from './resolver.js';

const dir = tempDir('img-special-');
afterAll(() => dir.cleanup());
const fifo = makeFifo(join(dir.path, 'pipe.img'));
const link = join(dir.path, 'link.img');
symlinkSync('pipe.img', link);

async function refusal(work: Promise<unknown>): Promise<ImageError> {
  const e = await settleWithin(work, 5000, [fifo]).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(ImageError.isInstance(e), String(e)).toBe(true);
  return e as ImageError;
}

describe('special files are refused, never waited on', () => {
  it('open: a FIFO', async () => {
    const e = await refusal(FileStorage.open(fifo));
    expect(e.code).toBe('ERR_IMG_INVALID_ARG');
    expect(e.message).toBe(`${fifo}: is a FIFO, not an image file`);
    expect(e.data).toMatchObject({ file: fifo, actual: 'a FIFO' });
  });

  it('open: a symlink to a FIFO, read-only, read-write, without locks or with -U', async () => {
    for (const options of [{}, { readOnly: false }, { lock: false }, { forceShare: true }]) {
      const e = await refusal(FileStorage.open(link, options));
      expect(e.message).toBe(`${link}: is a FIFO, not an image file`);
    }
  });

  it('create: over a FIFO (and through a symlink), which is left as it was', async () => {
    for (const p of [fifo, link]) {
      const e = await refusal(FileStorage.create(p));
      expect(e.message).toBe(`${p}: is a FIFO, not an image file`);
    }
    expect(existsSync(fifo)).toBe(true);
  });

  it('the resolver: a backing file that is a FIFO', async () => {
    const top = join(dir.path, 'top.img');
    writeFileSync(top, new Uint8Array(512));
    const from = await FileStorage.open(top);
    try {
      const e = await refusal(fileResolver({ name: 'link.img', from, kind: 'backing', writable: false }));
      expect(e.message).toBe(`${link}: is a FIFO, not an image file`);
    } finally {
      await from.close();
    }
  });

  it.runIf(existsSync('/dev/null'))('a character device is no image file either', async () => {
    const e = await refusal(FileStorage.open('/dev/null'));
    expect(e.message).toBe('/dev/null: is a character device, not an image file');
  });

  it('a directory says so', async () => {
    const e = await refusal(FileStorage.open(dir.path));
    expect(e.message).toBe(`${dir.path}: is a directory, not an image file`);
  });

  it('regular files still open, read and write as before', async () => {
    const p = join(dir.path, 'plain.img');
    const s = await FileStorage.create(p);
    await s.write(0, new Uint8Array([1, 2, 3]));
    await s.close();
    const r = await FileStorage.open(p);
    expect([...(await r.read(0, 3))]).toEqual([1, 2, 3]);
    await r.close();
  });
});
