/**
 * twoGbMaxExtentSparse and twoGbMaxExtentFlat written through the Disk API
 * and the driver (what `img create` and `img-convert` use), judged by
 * qemu-img (compare, check, info) and vmdkinfo.
 */
import { ImageError, MemoryStorage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, qemuInfo, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, statSync, writeSync, writeFileSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createVmdk, splitExtentName } from './create.js';
import { vmdkDriver } from './driver.js';
import { openVmdk } from './open.js';
import { memoryResolver } from '../test/resolver.js';

const GiB = 2 ** 30;
/** Three extents: two of 2 GiB and a short one that is not a whole number of grains. */
const SIZE = 4 * GiB + 5 * 2 ** 20 + 3 * 512;

/** The writes: across both extent boundaries, at the very start and the very end. */
function pieces(): Array<[number, Uint8Array]> {
  return [
    [0, seededBytes(70_000, 1)],
    [2 * GiB - 3000, seededBytes(10_000, 2)],
    [4 * GiB - 512, seededBytes(131_072, 3)],
    [SIZE - 1536, seededBytes(1536, 4)],
  ];
}

/** The same content as a sparse raw file, for qemu-img compare. */
function writeRaw(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    for (const [at, data] of pieces()) writeSync(fd, data, 0, data.length, at);
  } finally {
    closeSync(fd);
  }
}

const hasVmdkinfo = spawnSync('sh', ['-c', 'command -v vmdkinfo'], { stdio: 'ignore' }).status === 0 || process.env.CI === 'true';

describe('split extent names and layout (in memory)', () => {
  it('names extents as qemu-img does, beside the descriptor', () => {
    expect(splitExtentName('/a/b/disk.vmdk', false, 1)).toBe('disk-s001.vmdk');
    expect(splitExtentName('disk.vmdk', true, 12)).toBe('disk-f012.vmdk');
    expect(splitExtentName('noext', false, 3)).toBe('noext-s003');
  });

  it('a descriptor lists one extent per 2 GiB; every extent file is asked of the resolver with create', async () => {
    const files = new Map<string, Uint8Array | MemoryStorage>();
    const asked: string[] = [];
    const disk = await createVmdk(new MemoryStorage({ name: 'm.vmdk' }), { size: 5 * GiB, subformat: 'twoGbMaxExtentSparse', resolver: memoryResolver(files, asked) });
    await disk.write(2 * GiB - 10, new Uint8Array(20).fill(9));
    expect(await disk.read(2 * GiB - 10, 20)).toEqual(new Uint8Array(20).fill(9));
    expect(disk.extentList.map((e) => [e.type, e.length])).toEqual([
      ['SPARSE', 2 * GiB],
      ['SPARSE', 2 * GiB],
      ['SPARSE', GiB],
    ]);
    const text = disk.descriptorText;
    await disk.close();
    expect(asked).toEqual(['m-s001.vmdk', 'm-s002.vmdk', 'm-s003.vmdk']);
    expect(text).toMatch(/createType="twoGbMaxExtentSparse"/);
    expect(text).toMatch(/RW 4194304 SPARSE "m-s001.vmdk"\nRW 4194304 SPARSE "m-s002.vmdk"\nRW 2097152 SPARSE "m-s003.vmdk"/);
  });

  it('refuses an existing extent file (the resolver creates exclusively), zeroed_grain on flat, and a name with a quote', async () => {
    const dir = tempDir('vmdk-split-safe-');
    try {
      writeFileSync(join(dir.path, 'in-f001.vmdk'), 'precious input');
      const storage = await FileStorage.create(join(dir.path, 'in.vmdk'));
      await expect(createVmdk(storage, { size: 3 * GiB, subformat: 'twoGbMaxExtentFlat', resolver: fileResolver })).rejects.toThrow();
      await storage.close();
      expect(readFileSync(join(dir.path, 'in-f001.vmdk'), 'utf8')).toBe('precious input');
      expect(existsSync(join(dir.path, 'in-f002.vmdk'))).toBe(false);
    } finally {
      dir.cleanup();
    }
    const code = async (p: Promise<unknown>) => p.then(() => 'ok').catch((e: unknown) => (ImageError.isInstance(e) ? e.code : String(e)));
    expect(await code(createVmdk(new MemoryStorage({ name: 'f.vmdk' }), { size: GiB, subformat: 'twoGbMaxExtentFlat', zeroedGrain: true, resolver: memoryResolver(new Map()) }))).toBe('ERR_IMG_INVALID_ARG');
    expect(await code(createVmdk(new MemoryStorage({ name: 'a"b.vmdk' }), { size: GiB, subformat: 'twoGbMaxExtentSparse', resolver: memoryResolver(new Map()) }))).toBe('ERR_IMG_INVALID_ARG');
    expect(await code(createVmdk(new MemoryStorage({ name: 'n.vmdk' }), { size: GiB, subformat: 'twoGbMaxExtentSparse' }))).toBe('ERR_IMG_INVALID_ARG');
  });
});

describeQemu('twoGbMaxExtentSparse and twoGbMaxExtentFlat we write, judged by qemu-img and vmdkinfo', () => {
  const dir = tempDir('vmdk-split-');
  afterAll(() => dir.cleanup());
  const at = (name: string) => join(dir.path, name);
  const raw = at('content.raw');
  writeRaw(raw);

  for (const subformat of ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'] as const) {
    it(`${subformat}: qemu-img compare equal, check clean, info lists 2 GiB extents; vmdkinfo and we read it back`, async () => {
      const path = at(`${subformat}.vmdk`);
      // Through the driver, as `img create -f vmdk -o subformat=...` and img-convert create it.
      const disk = await vmdkDriver.create(await FileStorage.create(path), { size: SIZE, subformat, resolver: fileResolver });
      await Promise.all(pieces().map(([offset, data]) => disk.write(offset, data)));
      await disk.close();
      const letter = subformat === 'twoGbMaxExtentFlat' ? 'f' : 's';
      for (const i of [1, 2, 3]) expect(existsSync(at(`${subformat}-${letter}00${i}.vmdk`))).toBe(true);
      expect(existsSync(at(`${subformat}-${letter}004.vmdk`))).toBe(false);
      if (subformat === 'twoGbMaxExtentFlat') expect(statSync(at(`${subformat}-f003.vmdk`)).size).toBe(SIZE - 4 * GiB);

      expect(qemuCompare(raw, path, 'raw', 'vmdk')).toBe(true);
      const check = qemuCheck(path, 'vmdk');
      expect(check.status, check.stderr).toBe(0);
      const info = qemuInfo(path) as { 'virtual-size': number; 'format-specific': { data: { 'create-type': string; extents: Array<{ 'virtual-size': number; filename: string }> } } };
      expect(info['virtual-size']).toBe(SIZE);
      expect(info['format-specific'].data['create-type']).toBe(subformat);
      expect(info['format-specific'].data.extents.map((e) => e['virtual-size'])).toEqual([2 * GiB, 2 * GiB, SIZE - 4 * GiB]);
      if (hasVmdkinfo) {
        const r = spawnSync('vmdkinfo', [path], { encoding: 'utf8' });
        expect(r.stdout, r.stderr).toMatch(new RegExp(`Media size:.*\\(${SIZE} bytes\\)`));
        expect(r.stdout).toMatch(/Number of extents\s*:\s*3/);
      }
      const back = await openVmdk(await FileStorage.open(path), { resolver: fileResolver });
      try {
        for (const [offset, data] of pieces()) expect(Buffer.from(await back.read(offset, data.length)).equals(Buffer.from(data))).toBe(true);
        expect(back.extentList).toHaveLength(3);
      } finally {
        await back.close();
      }
    });
  }
});
