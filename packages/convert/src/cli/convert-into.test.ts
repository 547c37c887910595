import { copyFileSync, linkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, testImagesDir } from '@img/testkit';
import { FormatRegistry, rawDriver, type Disk, type FormatDriver } from '@img/block';
import { qcow2Driver } from '@img/qcow2';
import { defaultRegistry } from '../formats.js';
import { openImageFile } from '../node.js';
import { convertIntoExisting } from './convert-into.js';

const tmp = tempDir('img-convert-into-');
afterAll(() => tmp.cleanup());

describe('convertIntoExisting (convert -n)', () => {
  const registry = defaultRegistry();
  const base = { srcFormat: 'qcow2', dstFormat: 'qcow2', registry };

  it('refuses to write the file it reads, through a hard link', async () => {
    const a = join(tmp.path, 'a.qcow2');
    const b = join(tmp.path, 'b.qcow2');
    copyFileSync(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'), a);
    linkSync(a, b);
    await expect(convertIntoExisting({ ...base, input: a, output: b })).rejects.toMatchObject({ code: 'ERR_IMG_SAME_FILE' });
  });

  it('refuses a smaller target, naming both sizes', async () => {
    const small = join(tmp.path, 'small.qcow2');
    copyFileSync(join(testImagesDir, 'qcow2', 'chain-base.qcow2'), small); // 256 KiB
    await expect(convertIntoExisting({ ...base, input: join(testImagesDir, 'qcow2', 'v3-64k.qcow2'), output: small })).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      data: { expected: 1048576, actual: 262144 },
    });
  });

  it('overwrites what the target held, zeros included', async () => {
    const target = join(tmp.path, 'target.img');
    copyFileSync(join(testImagesDir, 'raw', 'demo.img'), target);
    const src = join(testImagesDir, 'qcow2', 'v3-64k.qcow2');
    const disk0 = await openImageFile(target, { format: 'raw' });
    const size = disk0.size;
    await disk0.close();
    expect(size).toBeGreaterThan(1048576); // demo.img's data must be overwritten, past the source's end it stays
    await convertIntoExisting({ ...base, dstFormat: 'raw', input: src, output: target });
    const a = await openImageFile(src, { format: 'qcow2' });
    const b = await openImageFile(target, { format: 'raw' });
    expect(Buffer.from(await b.read(0, a.size)).equals(Buffer.from(await a.read(0, a.size)))).toBe(true);
    await a.close();
    await b.close();
  });

  it('fails when closing the target fails, after a copy that succeeded', async () => {
    const target = join(tmp.path, 'close-fails.img');
    copyFileSync(join(testImagesDir, 'raw', 'demo.img'), target);
    let closed = 0;
    // A raw driver whose disks fail to close (as a qcow2 target can, writing its header), after really closing.
    const failingClose: FormatDriver = {
      ...rawDriver,
      open: async (storage, options) => {
        const disk = await rawDriver.open(storage, options);
        return new Proxy(disk, {
          get(t, key) {
            if (key === 'close') {
              return async () => {
                await t.close();
                closed++;
                throw new Error('close failed while writing the header');
              };
            }
            const v: unknown = Reflect.get(t, key, t);
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
          },
        }) as Disk;
      },
    };
    const failing = new FormatRegistry([failingClose, qcow2Driver]);
    await expect(convertIntoExisting({ ...base, registry: failing, dstFormat: 'raw', input: join(testImagesDir, 'qcow2', 'v3-64k.qcow2'), output: target })).rejects.toThrow('close failed while writing the header');
    expect(closed).toBe(1);
  });
});
