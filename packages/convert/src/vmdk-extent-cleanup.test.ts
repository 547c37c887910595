// A failed or interrupted conversion to a VMDK with extent files of its own (monolithicFlat, twoGbMaxExtent*)
// removes those files too, not only the descriptor (CLI audit 3 finding 1: Ctrl-C or a full disk left
// o-flat.vmdk, o-f001.vmdk or o-s001.vmdk behind, as large as what had been copied, after saying
// "the partial output was removed").
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { seededBytes, tempDir } from '@img/testkit';
import { convertFile } from './node.js';

const tmp = tempDir('img-vmdk-extent-cleanup-');
afterAll(() => tmp.cleanup());
const MIB = 2 ** 20;

/** Converts 16 MiB of raw in a new directory to out.vmdk of `subformat`, aborted once the copy has started (after the extent files exist); answers the directory. */
async function abortedConversion(label: string, subformat: string, seed: number, keepPartial = false): Promise<string> {
  const dir = mkdtempSync(join(tmp.path, `${label}-`));
  const input = join(dir, 'src.raw');
  writeFileSync(input, seededBytes(16 * MIB, seed));
  const controller = new AbortController();
  await expect(
    convertFile({
      input,
      output: join(dir, 'out.vmdk'),
      srcFormat: 'raw',
      dstFormat: 'vmdk',
      createOptions: { subformat },
      ...(keepPartial ? { keepPartial } : {}),
      signal: controller.signal,
      onProgress: (p) => {
        if (p.bytesDone > 0) controller.abort();
      },
    }),
  ).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED' });
  return dir;
}

describe('convertFile to a VMDK with separate extent files, aborted mid-copy', () => {
  for (const subformat of ['monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse']) {
    it(`${subformat}: the descriptor and every extent file it created are removed`, async () => {
      const dir = await abortedConversion(subformat, subformat, 3);
      expect(existsSync(join(dir, 'out.vmdk'))).toBe(false);
      expect(readdirSync(dir)).toEqual(['src.raw']);
    });
  }

  it('keepPartial keeps the descriptor and its extents', async () => {
    const dir = await abortedConversion('keep', 'monolithicFlat', 4, true);
    expect(readdirSync(dir).sort()).toEqual(['out-flat.vmdk', 'out.vmdk', 'src.raw']);
  });
});

// CLI audit 3 finding 11: converting onto an existing monolithicFlat or twoGbMaxExtent* VMDK failed on its extent file
// (created exclusively: EEXIST) only after the descriptor had been truncated, and then removed it: the old image lost
// its descriptor. The extent names are now checked first, and nothing is touched.
describe('convertFile to a VMDK whose extent files exist already', () => {
  for (const subformat of ['monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse']) {
    it(`${subformat}: refused with EEXIST before the descriptor is touched`, async () => {
      const dir = mkdtempSync(join(tmp.path, `exists-${subformat}-`));
      const input = join(dir, 'src.raw');
      writeFileSync(input, seededBytes(MIB, 5));
      const output = join(dir, 'out.vmdk');
      await convertFile({ input, output, srcFormat: 'raw', dstFormat: 'vmdk', createOptions: { subformat } });
      const before = new Map(readdirSync(dir).map((n) => [n, readFileSync(join(dir, n))]));
      await expect(convertFile({ input, output, srcFormat: 'raw', dstFormat: 'vmdk', createOptions: { subformat } })).rejects.toMatchObject({
        code: 'ERR_IMG_IO',
        message: expect.stringMatching(/out-(flat|f001|s001)\.vmdk: exists already, and the new VMDK's extent file would be written over it: .*remove it, or choose another output name\) \(EEXIST\)$/),
      });
      expect(new Map(readdirSync(dir).map((n) => [n, readFileSync(join(dir, n))]))).toEqual(before);
    });
  }
});
