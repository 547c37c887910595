// Everything the public API throws is an ImageError with a stable code:
// each public entry point is called with bad arguments here, and the test
// asserts the class (ImageError.isInstance), the code and what the message
// names. No plain RangeError/TypeError may escape.
import { existsSync, mkdirSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, createRaw, openRaw, parseSize, type Disk } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { amendQcow2, createQcow2, createQcow2Stream, measureQcow2, openQcow2, qcow2Driver } from '@img/qcow2';
import { createVhd, openVhd, vhdDriver } from '@img/vhd';
import { createVhdFile, openVhdChain } from '@img/vhd/node';
import { tempDir } from '@img/testkit';
import { convertDisk } from './convert.js';
import { defaultRegistry } from './formats.js';
import { convertFile, openImageFile } from './node.js';

async function failure(run: () => unknown): Promise<ImageError> {
  let caught: unknown;
  try {
    await run();
  } catch (e) {
    caught = e;
  }
  if (caught === undefined) throw new Error('expected a failure, but the call succeeded');
  if (!ImageError.isInstance(caught)) throw new Error(`expected an ImageError, got ${String(caught)}`, { cause: caught });
  return caught;
}

async function expectCode(run: () => unknown, code: string, message?: RegExp | string): Promise<ImageError> {
  const e = await failure(run);
  expect(e.code, e.message).toBe(code);
  if (typeof message === 'string') expect(e.message).toBe(message);
  else if (message) expect(e.message).toMatch(message);
  return e;
}

const tmp = tempDir('img-errors-');
afterAll(() => tmp.cleanup());

describe('out-of-range I/O on every Disk is ERR_IMG_INVALID_ARG naming offset, length and size', () => {
  const disks: Array<[string, () => Promise<Disk>]> = [
    ['raw', () => createRaw(new MemoryStorage({ name: 'r.img' }), { size: 65536 })],
    ['qcow2', () => createQcow2(new MemoryStorage({ name: 'q.qcow2' }), { size: 65536 })],
    ['vhd dynamic', () => createVhd(new MemoryStorage({ name: 'd.vhd' }), { size: 65536 })],
    ['vhd fixed', () => createVhd(new MemoryStorage({ name: 'f.vhd' }), { size: 65536, type: 'fixed' })],
  ];
  for (const [name, make] of disks) {
    it(name, async () => {
      const disk = await make();
      const size = disk.size;
      const calls: Array<[string, () => Promise<unknown>, number, number]> = [
        ['read past the end', () => disk.read(size - 1, 2), size - 1, 2],
        ['read at a negative offset', () => disk.read(-1, 1), -1, 1],
        ['read of a negative length', () => disk.read(0, -5), 0, -5],
        ['readInto past the end', () => disk.readInto(size, new Uint8Array(1)), size, 1],
        ['write past the end', () => disk.write(size - 512, new Uint8Array(1024)), size - 512, 1024],
        ['write at a fractional offset', () => disk.write(0.5, new Uint8Array(1)), 0.5, 1],
        ['writeZeroes past the end', () => disk.writeZeroes(size, 512), size, 512],
        ['discard past the end', () => disk.discard(0, size + 512), 0, size + 512],
      ];
      for (const [what, call, offset, length] of calls) {
        const e = await expectCode(call, 'ERR_IMG_INVALID_ARG');
        expect(e.message, what).toContain(`offset ${offset}`);
        expect(e.message, what).toContain(`length ${length}`);
        expect(e.message, what).toContain(`${size} bytes`);
        expect(e.message, what).toContain(disk.storage.name);
      }
      await disk.close();
    });
  }
});

describe('create entry points', () => {
  it('without options: "size is required"', async () => {
    const call = (f: (s: MemoryStorage, o: never) => unknown) => () => f(new MemoryStorage(), undefined as never);
    await expectCode(call(createQcow2), 'ERR_IMG_INVALID_ARG', /size is required/);
    await expectCode(call(createRaw), 'ERR_IMG_INVALID_ARG', /size is required/);
    await expectCode(call(createVhd), 'ERR_IMG_INVALID_ARG', /size is required/);
    await expectCode(() => createQcow2(new MemoryStorage(), {} as never), 'ERR_IMG_INVALID_ARG', /size is required/);
  });

  it('refuse unknown and snake_case keys, suggesting the typed spelling, before writing anything', async () => {
    const storage = new MemoryStorage();
    await expectCode(() => createQcow2(storage, { size: 1 << 20, clustr_size: 1 } as never), 'ERR_IMG_INVALID_ARG', 'qcow2: unknown create option "clustr_size" (did you mean clusterSize?)');
    await expectCode(() => createQcow2(storage, { size: 1 << 20, lazy_refcounts: true } as never), 'ERR_IMG_INVALID_ARG', /"lazy_refcounts" \(did you mean lazyRefcounts\?\)/);
    await expectCode(() => createQcow2(storage, { size: 1 << 20, refcount_bits: 8 } as never), 'ERR_IMG_INVALID_ARG', /did you mean refcountBits\?/);
    await expectCode(() => createQcow2(storage, { size: 1 << 20, zzz: 1 } as never), 'ERR_IMG_INVALID_ARG', /unknown create option "zzz" \(known options: .*clusterSize/);
    expect(storage.toBytes().length).toBe(0);
    await expectCode(() => createRaw(storage, { size: 512, prealloc: 'full' } as never), 'ERR_IMG_INVALID_ARG', /did you mean preallocation\?/);
    await expectCode(() => createVhd(storage, { size: 1 << 20, block_size: 4096 } as never), 'ERR_IMG_INVALID_ARG', /did you mean blockSize\?/);
    await expectCode(() => createVhd(storage, { size: 1 << 20, subformat: 'fixed' } as never), 'ERR_IMG_INVALID_ARG', /did you mean type\?/);
    expect(storage.toBytes().length).toBe(0);
    // The drivers (what the registry and convert call) check the same way; plumbing keys pass.
    // ova is read-only: its create() refuses every call.
    for (const driver of defaultRegistry()
      .names()
      .filter((n) => n !== 'ova')
      .map((n) => defaultRegistry().require(n))) {
      await expectCode(() => driver.create(new MemoryStorage(), { size: 65536, clustr_size: '4k' }), 'ERR_IMG_INVALID_ARG', /clustr_size/);
      // luks has no image without a passphrase (qemu-img: "Parameter 'key-secret' is required for cipher").
      const secret = driver.name === 'luks' ? { passphrase: 'pw', iterTime: 10 } : {};
      const disk = await driver.create(new MemoryStorage(), { size: 65536, resolver: fileResolver, formats: defaultRegistry(), noBacking: false, ...secret });
      await disk.close();
    }
    await expectCode(() => measureQcow2({ size: 1 << 20, options: { cluster_size: '4k' } }), 'ERR_IMG_INVALID_ARG', /did you mean clusterSize\?/);
    const src = await createRaw(new MemoryStorage(), { size: 65536 });
    await expectCode(() => createQcow2Stream(src, { clustr_size: '4k' } as never), 'ERR_IMG_INVALID_ARG', /did you mean clusterSize\?/);
    // convertDisk's createOptions go to the driver, which takes qemu-img's -o names too, but not both spellings of one key.
    const spelt = await convertDisk(src, qcow2Driver, new MemoryStorage(), { createOptions: { cluster_size: '8k' } });
    expect((await spelt.disk.info!()).clusterSize).toBe(8192);
    await spelt.disk.close();
    await expectCode(() => convertDisk(src, qcow2Driver, new MemoryStorage(), { createOptions: { cluster_size: '4k', clusterSize: '4k' } }), 'ERR_IMG_INVALID_ARG', /"clusterSize" is given twice/);
    await expectCode(() => convertDisk(src, qcow2Driver, new MemoryStorage(), { createOptions: { clustr_size: '4k' } }), 'ERR_IMG_INVALID_ARG', /did you mean clusterSize\?/);
    await expectCode(() => convertDisk(src, vhdDriver, new MemoryStorage(), { createOptions: { lazyRefcounts: true } }), 'ERR_IMG_INVALID_ARG', /unknown create option "lazyRefcounts"/);
    const { disk } = await convertDisk(src, qcow2Driver, new MemoryStorage(), { createOptions: { clusterSize: '4k', lazyRefcounts: 'on' } });
    expect((await disk.info!()).clusterSize).toBe(4096);
    await disk.close();
  });

  it('amend, parseSize and bad values are ImageErrors too', async () => {
    await expectCode(() => amendQcow2(new MemoryStorage(), undefined as never), 'ERR_IMG_INVALID_ARG');
    await expectCode(() => amendQcow2(new MemoryStorage(), { lazy_refcounts: 'on' } as never), 'ERR_IMG_INVALID_ARG', /did you mean lazyRefcounts\?/);
    await expectCode(() => parseSize('ten'), 'ERR_IMG_INVALID_ARG');
    await expectCode(() => createQcow2(new MemoryStorage(), { size: 1 << 20, clusterSize: '3k' }), 'ERR_IMG_INVALID_ARG', /cluster_size/);
    await expectCode(() => createVhd(new MemoryStorage(), { size: -1 }), 'ERR_IMG_INVALID_ARG');
  });
});

describe('opening what is not an image', () => {
  it('a missing file: NOT_FOUND, the errno said once', async () => {
    const path = join(tmp.path, 'nope.qcow2');
    const e = await expectCode(() => FileStorage.open(path), 'ERR_IMG_NOT_FOUND');
    expect(e.message).toBe(`${path}: open failed: no such file or directory (ENOENT)`);
    await expectCode(() => openImageFile(path), 'ERR_IMG_NOT_FOUND', `${path}: open failed: no such file or directory (ENOENT)`);
  });

  it('a directory: one sentence', async () => {
    const dir = join(tmp.path, 'a-dir');
    mkdirSync(dir);
    await expectCode(() => openImageFile(dir), 'ERR_IMG_INVALID_ARG', `${dir}: is a directory, not an image file`);
    await expectCode(() => openImageFile(dir, { format: 'raw' }), 'ERR_IMG_INVALID_ARG', `${dir}: is a directory, not an image file`);
    await expectCode(async () => openRaw(await FileStorage.open(dir, { readOnly: false })), 'ERR_IMG_INVALID_ARG', `${dir}: is a directory, not an image file`);
    await expectCode(() => FileStorage.create(dir), 'ERR_IMG_INVALID_ARG', `${dir}: is a directory, not an image file`);
  });

  it('garbage bytes: ImageErrors from every opener', async () => {
    const junk = () => MemoryStorage.from(new Uint8Array(4096).fill(0x5a));
    expect((await failure(() => openQcow2(junk()))).code).toMatch(/^ERR_IMG_/);
    expect((await failure(() => openVhd(junk()))).code).toMatch(/^ERR_IMG_/);
  });
});

describe('a conversion the output format refuses leaves no descriptor open', () => {
  // The output file is created before the format looks at its options; a refusal there must still close it.
  const openOn = (path: string) =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(join('/proc/self/fd', fd)).startsWith(path);
      } catch {
        return false;
      }
    }).length;
  it.skipIf(!existsSync('/proc/self/fd'))('bad create options, with and without keepPartial', async () => {
    const dir = join(tmp.path, 'refused');
    mkdirSync(dir);
    const input = join(dir, 'in.raw');
    const raw = await createRaw(await FileStorage.create(input), { size: 1 << 20 });
    await raw.close();
    for (const keepPartial of [false, true]) {
      const output = join(dir, `out-${keepPartial}.qcow2`);
      await expectCode(() => convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input, output, keepPartial, createOptions: { cluster_size: '3' } }), 'ERR_IMG_INVALID_ARG');
      expect(openOn(output)).toBe(0);
      expect(existsSync(output)).toBe(keepPartial);
    }
  });
});

describe('a missing backing file names the overlay and the name it holds', () => {
  it('qcow2', async () => {
    const dir = join(tmp.path, 'q');
    mkdirSync(dir);
    const overlay = join(dir, 'overlay.qcow2');
    const disk = await createQcow2(await FileStorage.create(overlay), { size: 1 << 20, backingFile: 'base.qcow2', backingFormat: 'qcow2', noBacking: true });
    await disk.close();
    expect(existsSync(join(dir, 'base.qcow2'))).toBe(false);
    // The refused open leaves its storage to the caller: closed here.
    const storage = await FileStorage.open(overlay);
    const refused = async () => {
      try {
        return await openQcow2(storage, { resolver: fileResolver });
      } finally {
        await storage.close();
      }
    };
    await expectCode(refused, 'ERR_IMG_NOT_FOUND', `qcow2: ${overlay}: backing file "base.qcow2" (resolved to ${resolve(dir, 'base.qcow2')}) does not exist`);
    await expectCode(() => openImageFile(overlay), 'ERR_IMG_NOT_FOUND', /backing file "base.qcow2" \(resolved to .*base\.qcow2\) does not exist$/);
    await expectCode(() => convertFile({ srcFormat: 'qcow2', dstFormat: 'raw', input: overlay, output: join(dir, 'out.raw') }), 'ERR_IMG_NOT_FOUND', /overlay\.qcow2: backing file "base\.qcow2"/);
  });

  it('vhd', async () => {
    const dir = join(tmp.path, 'v');
    mkdirSync(dir);
    const base = await createVhdFile(join(dir, 'base.vhd'), { size: 1 << 20 });
    await base.close();
    const child = await createVhdFile(join(dir, 'child.vhd'), { parentPath: join(dir, 'base.vhd') });
    await child.close();
    rmSync(join(dir, 'base.vhd'));
    const e = await expectCode(() => openVhdChain(join(dir, 'child.vhd')), 'ERR_IMG_NOT_FOUND');
    expect(e.message).toMatch(new RegExp(`^vhd: ${join(dir, 'child.vhd')}: parent "(\\./)?base.vhd" \\(resolved to ${join(dir, 'base.vhd')}\\) does not exist`));
  });
});
