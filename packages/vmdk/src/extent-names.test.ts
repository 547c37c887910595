// vmdkExtentFileNames: the files createVmdk makes beside a descriptor, named before anything is created (what a
// conversion checks before it replaces an image; CLI audit 3 finding 11).
import { MemoryStorage } from '@img/block';
import { describe, expect, it } from 'vitest';
import { createVmdk, vmdkExtentFileNames } from './create.js';
import { memoryResolver } from '../test/resolver.js';

const GiB = 2 ** 30;

describe('vmdkExtentFileNames', () => {
  it.each([
    ['monolithicFlat', 5 * GiB, ['disk-flat.vmdk']],
    ['twoGbMaxExtentFlat', 4 * GiB + 512, ['disk-f001.vmdk', 'disk-f002.vmdk', 'disk-f003.vmdk']],
    ['twoGbMaxExtentSparse', 2 * GiB, ['disk-s001.vmdk']],
    ['monolithicSparse', 5 * GiB, []],
    ['streamOptimized', 5 * GiB, []],
  ] as const)('%s of %d bytes: %j', (subformat, size, names) => {
    expect(vmdkExtentFileNames('dir/disk.vmdk', size, subformat)).toEqual(names);
  });

  it('names what createVmdk creates, in order', async () => {
    for (const subformat of ['monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse'] as const) {
      const files = new Map<string, MemoryStorage>();
      const created: string[] = [];
      const resolver = memoryResolver(files);
      const disk = await createVmdk(new MemoryStorage({ name: 'x.vmdk' }), {
        size: 5 * GiB,
        subformat,
        resolver: async (request) => {
          if (request.create) created.push(request.name);
          return resolver(request);
        },
      });
      await disk.close();
      expect(created).toEqual(vmdkExtentFileNames('x.vmdk', 5 * GiB, subformat));
    }
  });

  it('a size createVmdk refuses (more than 32768 extents) names no file', () => {
    expect(vmdkExtentFileNames('disk.vmdk', 2 ** 31 * 32769, 'twoGbMaxExtentFlat')).toEqual([]);
  });
});
