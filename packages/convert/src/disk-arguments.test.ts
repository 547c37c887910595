// Disk arguments that are not what the Disk interface takes (audit-api finding 13): every format refuses them with
// ERR_IMG_INVALID_ARG saying what is wrong with the value, not "outside the disk", and never reads or writes with them.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, tempDir } from '@img/testkit';
import type { Disk } from '@img/block';
import { openImageFile } from './node.js';
import { EVERY_FORMAT, makeEveryFormat } from './test/every-format.js';

const FORMATS = EVERY_FORMAT;

describeQemu('Disk argument messages', () => {
  const tmp = tempDir('img-disk-args-');
  const at = (name: string) => join(tmp.path, name);
  afterAll(() => tmp.cleanup());

  beforeAll(() => makeEveryFormat(at));

  for (const [format, ext] of FORMATS) {
    it(`${format}: non-integer, NaN and string offsets and lengths, and writes of what is not a Uint8Array`, async () => {
      const file = at(`a.${ext}`);
      writeFileSync(file, readFileSync(at(`disk.${ext}`)));
      const d = await openImageFile(file, { readOnly: false });
      const bad = (p: () => Promise<unknown>) =>
        p().then(
          () => 'resolved',
          (e: { code?: string; message: string }) => `${e.code}: ${e.message}`,
        );
      const prefix = `ERR_IMG_INVALID_ARG: ${format}: ${file}: `;
      const untyped = d as unknown as Record<'read' | 'write' | 'readInto', (...args: unknown[]) => Promise<unknown>>;
      expect(await bad(() => d.read(1.5, 10))).toBe(`${prefix}offset 1.5 is not a whole number of bytes (offset 1.5, length 10, on a disk of ${d.size} bytes)`);
      expect(await bad(() => d.read(NaN, 10))).toBe(`${prefix}offset NaN is not a whole number of bytes (offset NaN, length 10, on a disk of ${d.size} bytes)`);
      expect(await bad(() => d.read(-512, 10))).toBe(`${prefix}offset -512 is negative (offset -512, length 10, on a disk of ${d.size} bytes)`);
      expect(await bad(() => untyped.read.call(d, 0, '10'))).toBe(`${prefix}length is a string ("10"), not a number (offset 0, length 10, on a disk of ${d.size} bytes)`);
      expect(await bad(() => d.read(0, 0.5))).toBe(`${prefix}length 0.5 is not a whole number of bytes (offset 0, length 0.5, on a disk of ${d.size} bytes)`);
      expect(await bad(() => d.read(d.size - 4, 10))).toMatch(/the range at offset \d+ of length 10 is outside the disk of \d+ bytes$/);
      expect(await bad(() => untyped.write.call(d, 0, [1, 2, 3]))).toBe(`${prefix}data is an Array, not a Uint8Array`);
      expect(await bad(() => untyped.write.call(d, 0, 'abc'))).toBe(`${prefix}data is a string ("abc"), not a Uint8Array`);
      expect(await bad(() => untyped.readInto.call(d, 0, new Array(512)))).toBe(`${prefix}target is an Array, not a Uint8Array`);
      expect(await bad(() => d.write(2.5, new Uint8Array(512)))).toBe(`${prefix}offset 2.5 is not a whole number of bytes (offset 2.5, length 512, on a disk of ${d.size} bytes)`);
      expect(await bad(() => d.writeZeroes(0, NaN))).toBe(`${prefix}length NaN is not a whole number of bytes (offset 0, length NaN, on a disk of ${d.size} bytes)`);
      await d.close();
      // Nothing was written.
      const again: Disk = await openImageFile(file);
      expect((await again.read(0, 4096)).every((b) => b === 0)).toBe(true);
      await again.close();
    });
  }
});
