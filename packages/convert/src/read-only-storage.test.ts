// A writable open over a storage opened read-only: the error says the storage is the cause (audit: it said "image is open read-only").
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { ImageError } from '@img/block';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { defaultRegistry } from './formats.js';

const tmp = tempDir('img-ro-storage-');
afterAll(() => tmp.cleanup());

describeQemu('a writable open of a storage opened read-only', () => {
  for (const format of ['raw', 'qcow2', 'vpc', 'vmdk']) {
    it(`${format}: ERR_IMG_READ_ONLY saying how to open the storage; the storage stays the caller's`, async () => {
      const path = join(tmp.path, `ro.${format}`);
      qemuImg(['create', '-q', '-f', format, path, '4M']);
      const storage = await FileStorage.open(path);
      try {
        const err = await defaultRegistry()
          .require(format)
          .open(storage, { readOnly: false })
          .then(
            (d) => d.close(),
            (e: unknown) => e,
          );
        expect(ImageError.isInstance(err)).toBe(true);
        expect((err as ImageError).code).toBe('ERR_IMG_READ_ONLY');
        expect((err as Error).message).toContain(`${path}: cannot open the image for writing: its storage was opened read-only (open it writable, e.g. FileStorage.open(path, { readOnly: false }))`);
        // The refusal left the storage open: it still reads.
        expect((await storage.read(0, 4)).length).toBe(4);
      } finally {
        await storage.close();
      }
    });
  }
});
