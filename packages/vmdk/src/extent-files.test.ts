/**
 * Which files a descriptor's extents open: one handle per real file (device
 * and inode), whatever spelling names it ("a.raw", "./a.raw",
 * "sub/../a.raw", a link), and a writable open refuses a file named twice,
 * as qemu does (qemu-io's second open of the file fails on its image
 * locks). A sparse extent of a split image is not an image on its own, as
 * qemu-img info says.
 */
import { ImageError, type Resolver, type Storage } from '@img/block';
import { FileStorage, fileResolver, fileResolverWith } from '@img/block/node';
import { describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openVmdk } from './open.js';

const tmp = tempDir('img-vmdk-extent-files-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** 1 MiB of known bytes in a.raw, a link to it, a sub folder for "sub/../a.raw", and b.raw, another file. */
const DATA = seededBytes(1 << 20, 5);
writeFileSync(p('a.raw'), DATA);
writeFileSync(p('b.raw'), DATA);
symlinkSync('a.raw', p('link.raw'));
mkdirSync(p('sub'));

/**
 * A monolithicFlat descriptor whose extents are 1024-sector windows of the named files. The comment line
 * before the extents matters to qemu 7.2: after a blank line its parser reads the first extent line twice.
 */
function descriptor(name: string, extents: Array<[string, number]>): string {
  const lines = extents.map(([file, sector]) => `RW 1024 FLAT "${file}" ${sector}`);
  writeFileSync(p(name), `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\n${lines.join('\n')}\n`);
  return p(name);
}

/** fileResolver (or one without locks), counting the storages it opened that are still open. */
function counting(inner: Resolver): { resolver: Resolver; open: () => number } {
  let open = 0;
  const resolver: Resolver = async (request) => {
    const s = await inner(request);
    open++;
    const close = s.close.bind(s);
    return Object.assign(s, {
      close: async () => {
        open--;
        await close();
      },
    }) as Storage;
  };
  return { resolver, open: () => open };
}

function qemuIoWrite(file: string): number {
  return spawnSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 7 0 512', file], { encoding: 'utf8' }).status ?? -1;
}

const SPELLINGS = ['./a.raw', 'sub/../a.raw', 'link.raw'];

describeQemu('vmdk extents: one handle per real file', () => {
  it('read-only: every spelling of one file shares one handle, and reads agree with qemu-img convert', async () => {
    const file = descriptor('ro.vmdk', [
      ['a.raw', 0],
      ['./a.raw', 1024],
      ['sub/../a.raw', 0],
      ['link.raw', 1024],
      ['b.raw', 0],
    ]);
    const { resolver, open } = counting(fileResolver);
    const disk = await openVmdk(await FileStorage.open(file), { resolver });
    expect(open()).toBe(2); // a.raw (four spellings) and b.raw
    const mine = await disk.read(0, disk.size);
    await disk.close();
    expect(open()).toBe(0);
    qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', file, p('ro.raw')]);
    expect(Buffer.compare(Buffer.from(mine), readFileSync(p('ro.raw')))).toBe(0);
    const half = DATA.subarray(512 * 1024);
    expect(Buffer.compare(Buffer.from(mine.subarray(512 * 1024, 1 << 20)), Buffer.from(half))).toBe(0);
  });

  it('writable: a file named twice is refused under any spelling, as qemu-io refuses it', async () => {
    for (const spelling of ['a.raw', ...SPELLINGS]) {
      const file = descriptor('rw.vmdk', [
        ['a.raw', 0],
        [spelling, 1024],
      ]);
      expect(qemuIoWrite(file), spelling).not.toBe(0);
      // Without locks only the identity check stands between the two handles.
      const unlocked = counting(fileResolverWith({ lock: false }));
      const bare = await FileStorage.open(file, { readOnly: false, lock: false });
      const err = await openVmdk(bare, { resolver: unlocked.resolver, readOnly: false }).catch((e: unknown) => e);
      await bare.close();
      expect(ImageError.isInstance(err) && err.code, spelling).toBe('ERR_IMG_CORRUPT');
      expect((err as Error).message).toContain(`extent 2 names "${spelling}", the file of extent 1`);
      expect(unlocked.open(), spelling).toBe(0);
      // With locks (the default), the open is refused too, whichever check sees it first.
      const locked = counting(fileResolver);
      const storage = await FileStorage.open(file, { readOnly: false });
      await expect(openVmdk(storage, { resolver: locked.resolver, readOnly: false }), spelling).rejects.toThrow(ImageError);
      await storage.close();
      expect(locked.open(), spelling).toBe(0);
    }
  });

  it('writable: two different files open and take the writes (the check is not a blanket refusal)', async () => {
    const file = descriptor('two.vmdk', [
      ['a.raw', 0],
      ['b.raw', 1024],
    ]);
    expect(qemuIoWrite(file)).toBe(0);
    const disk = await openVmdk(await FileStorage.open(file, { readOnly: false }), { resolver: fileResolver, readOnly: false });
    await disk.write(1024 * 512, new Uint8Array(512).fill(9));
    await disk.close();
    expect(readFileSync(p('b.raw'))[1024 * 512]).toBe(9);
  });

  it('the descriptor file named as its own extent: read-only shares its handle, writable is refused', async () => {
    writeFileSync(p('self.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 1 FLAT "self.vmdk" 0\n'.padEnd(1024, '\n'));
    const { resolver, open } = counting(fileResolver);
    const disk = await openVmdk(await FileStorage.open(p('self.vmdk')), { resolver });
    expect(open()).toBe(0);
    expect(new TextDecoder().decode(await disk.read(0, 21))).toBe('# Disk DescriptorFile');
    await disk.close();
    const self = await FileStorage.open(p('self.vmdk'), { readOnly: false, lock: false });
    const err = await openVmdk(self, { resolver: fileResolverWith({ lock: false }), readOnly: false }).catch((e: unknown) => e);
    await self.close();
    expect((err as Error).message).toContain('extent 1 names "self.vmdk", the descriptor file itself');
  });
});

describeQemu('vmdk: an empty line before an extent line', () => {
  it('is read once by img; qemu-img 7.2 reads the extent after it twice (README)', async () => {
    writeFileSync(p('blank.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 1024 FLAT "a.raw" 0\nRW 1024 FLAT "b.raw" 1024\n');
    const disk = await openVmdk(await FileStorage.open(p('blank.vmdk')), { resolver: fileResolver });
    expect(disk.size).toBe(2048 * 512);
    await disk.close();
    expect(JSON.parse(qemuImg(['info', '--output=json', p('blank.vmdk')]).stdout)['virtual-size']).toBe(3072 * 512);
  });
});

describeQemu('vmdk: a split image sparse extent opened on its own', () => {
  it('is refused, as qemu-img info refuses it; the descriptor still opens', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('split.vmdk'), '3G']);
    expect(qemuImg(['info', p('split-s001.vmdk')], { allowFail: true }).status).toBe(1);
    const extent = await FileStorage.open(p('split-s001.vmdk'));
    const err = await openVmdk(extent).catch((e: unknown) => e);
    await extent.close();
    expect(ImageError.isInstance(err) && err.code).toBe('ERR_IMG_UNSUPPORTED');
    expect((err as Error).message).toMatch(/split-s001\.vmdk.*one extent of a split image/);
    const disk = await openVmdk(await FileStorage.open(p('split.vmdk')), { resolver: fileResolver });
    expect(disk.size).toBe(3 * 2 ** 30);
    await disk.close();
  });
});

describeQemu('vmdk: one sparse extent file named by several extent lines', () => {
  it('is read once: the extents share its grain map, and reads agree with qemu-img convert (hostile seed 1005 case 742)', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('rep.vmdk'), '4M']);
    spawnSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 9 64k 128k', '-c', 'write -P 3 3M 4k', p('rep.vmdk')]);
    const lines = ['rep-s001.vmdk', './rep-s001.vmdk', 'rep-s001.vmdk'].map((f) => `RW 8192 SPARSE "${f}"`);
    writeFileSync(p('rep3.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n\n# Extent description\n${lines.join('\n')}\n`);
    // Count the reads of the extent's header (its first sector): each grain map opened reads it once.
    let headerReads = 0;
    const resolver: Resolver = async (request) => {
      const s = await fileResolver(request);
      const read = s.read.bind(s);
      return Object.assign(s, {
        read: async (offset: number, length: number) => {
          if (offset === 0 && length >= 512) headerReads++;
          return read(offset, length);
        },
      }) as Storage;
    };
    const disk = await openVmdk(await FileStorage.open(p('rep3.vmdk')), { resolver });
    expect(disk.size).toBe(3 * 4 * 2 ** 20);
    expect(headerReads).toBe(1);
    const mine = await disk.read(0, disk.size);
    await disk.close();
    qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', p('rep3.vmdk'), p('rep3.raw')]);
    expect(Buffer.compare(Buffer.from(mine), readFileSync(p('rep3.raw')))).toBe(0);
    expect(mine[4 * 2 ** 20 + 64 * 1024]).toBe(9);
    expect(mine[8 * 2 ** 20 + 3 * 2 ** 20]).toBe(3);
  });
});
