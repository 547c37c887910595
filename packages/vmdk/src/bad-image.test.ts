import { ImageError, MemoryStorage, diskExtents, type Storage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { openOwning, readVmdkBytes, tempDir, testImagesDir, withStorage } from '@img/testkit';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { openVmdk, type VmdkOpenOptions } from './open.js';
import { checkVmdk } from './check.js';

const fixture = (name: string) => readVmdkBytes(join(testImagesDir, 'vmdk', name));

/** openVmdk on a file: the storage is closed when the open refuses (it stays the caller's then), and with the disk otherwise. */
function openVmdkFile(path: string, options: Parameters<typeof openVmdk>[1]): ReturnType<typeof openVmdk> {
  return openOwning(FileStorage.open(path), (storage) => openVmdk(storage, options));
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    const v = (await p) as { close?: () => Promise<void> };
    await v?.close?.();
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return e.code;
    throw e;
  }
}

function open(bytes: Uint8Array, options: VmdkOpenOptions = {}, name = 'bad.vmdk') {
  return openVmdk(MemoryStorage.from(bytes, { name, readOnly: true }), options);
}

/** Opens, then reads the whole disk and walks its extents: the error, wherever it surfaces. */
async function readAll(bytes: Uint8Array, options: VmdkOpenOptions = {}): Promise<string> {
  return codeOf(
    (async () => {
      const disk = await open(bytes, options);
      try {
        await diskExtents(disk);
        await disk.read(0, disk.size);
      } finally {
        await disk.close();
      }
    })(),
  );
}

describe('bad images get a clean ImageError with a stable code', () => {
  it('bad magic: not a VMDK at all', async () => {
    const v = fixture('sparse.vmdk');
    v.bytes[0] = 0x58;
    expect(await codeOf(open(v.bytes))).toBe('ERR_IMG_WRONG_FORMAT');
  });

  it('grain directory out of bounds', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setBigUint64(56, 0x7fff_ffffn, true);
    await expect(open(v.bytes)).rejects.toThrow(/grain directory .* lies outside the file/);
    expect(await codeOf(open(v.bytes))).toBe('ERR_IMG_CORRUPT');
  });

  it('a gdOffset of 0 says the header names no grain directory (not that 0x0 lies outside the file)', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setBigUint64(56, 0n, true);
    await expect(open(v.bytes)).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: "vmdk: bad.vmdk: the header's gdOffset is 0: it names no grain directory (sector 0 is the header itself)" });
  });

  it('a descriptor whose lines end in CR alone says so (not \'createType "" is not supported\')', async () => {
    const text = '# Disk DescriptorFile\rversion=1\rCID=fffffffe\rparentCID=ffffffff\rcreateType="monolithicFlat"\rRW 2048 FLAT "f.bin" 0\r';
    const bytes = new TextEncoder().encode(text);
    await expect(open(bytes)).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED', message: expect.stringMatching(/^vmdk: bad\.vmdk: the descriptor's lines end in a carriage return alone \(classic Mac OS line endings; the first at offset 21 of the descriptor\)/) });
    const checked = await checkVmdk(MemoryStorage.from(bytes, { name: 'bad.vmdk', readOnly: true }));
    expect(checked.checkErrors).toBe(1);
    expect(checked.messages[0]).toMatch(/carriage return alone/);
  });

  it('a capacity far beyond the file is refused before its directory is allocated', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setBigUint64(12, 1n << 50n, true);
    expect(await codeOf(open(v.bytes))).toBe('ERR_IMG_CORRUPT');
  });

  it('a grain table pointing into the descriptor', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setUint32(v.gdOffset, 2, true); // sector 2: inside the embedded descriptor (sectors 1..20)
    await expect(readAll(v.bytes)).resolves.toBe('ERR_IMG_CORRUPT');
    const disk = await open(v.bytes);
    await expect(disk.read(0, 512)).rejects.toThrow(/inside the embedded descriptor/);
    await disk.close();
  });

  it('a grain table entry pointing into the header', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setUint32(v.tableOffset(0), 0, true);
    v.view.setUint32(v.tableOffset(0) + 4, 1, true); // GTE 1 without the zeroed-grain flag: the descriptor's first sector
    expect(await readAll(v.bytes)).toBe('ERR_IMG_CORRUPT');
  });

  it("numGTEsPerGT of 0 and a grain size above qemu's 0x200000 sectors", async () => {
    const a = fixture('sparse.vmdk');
    a.view.setUint32(44, 0, true);
    expect(await codeOf(open(a.bytes))).toBe('ERR_IMG_CORRUPT');
    const b = fixture('sparse.vmdk');
    b.view.setBigUint64(20, 0x200001n, true);
    expect(await codeOf(open(b.bytes))).toBe('ERR_IMG_UNSUPPORTED');
  });

  it('a streamOptimized grain marker with an absurd size', async () => {
    const v = fixture('stream-qemu.vmdk');
    const grain = v.view.getUint32(v.tableOffset(0), true) * 512;
    v.view.setUint32(grain + 8, 0x7fff_ffff, true);
    const disk = await open(v.bytes);
    await expect(disk.read(0, 4096)).rejects.toThrow(/announces 2147483647 compressed bytes/);
    await disk.close();
  });

  it('a decompression bomb: a grain that inflates past one grain', async () => {
    const v = fixture('stream-qemu.vmdk');
    const grain = v.view.getUint32(v.tableOffset(0), true) * 512;
    const bomb = deflateSync(new Uint8Array(8 << 20));
    expect(bomb.length).toBeLessThan(64 << 10);
    v.view.setUint32(grain + 8, bomb.length, true);
    v.bytes.set(bomb, grain + 12);
    const disk = await open(v.bytes);
    await expect(disk.read(0, 4096)).rejects.toThrow(/inflates to more than one grain/);
    await disk.close();
  });

  it('ZERO extents whose sizes add up past 2^53 bytes: refused, not a disk of an imprecise size (hostile-input campaign)', async () => {
    const text = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 9007199254740991 ZERO\nRW 9007199254740991 ZERO\n';
    const bytes = new TextEncoder().encode(text);
    await expect(open(bytes)).rejects.toThrow(/extent 1 ends past 2\^53 bytes/);
    expect(await codeOf(open(bytes))).toBe('ERR_IMG_CORRUPT');
    // One ZERO extent of a size that fits still opens.
    const disk = await open(new TextEncoder().encode(text.replace(/RW 9007199254740991 ZERO\n$/, '').replace('9007199254740991', '4096')));
    expect(disk.size).toBe(4096 * 512);
    await disk.close();
  });

  it('a descriptor repeating one extent file 32768 times opens it once (each open took a lock: minutes, then EMFILE; hostile-input campaign)', async () => {
    const flat = new Uint8Array(512).fill(7);
    const text = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n' + 'RW 1 FLAT "x.flat" 0\n'.repeat(32768);
    const asked: string[] = [];
    const resolver = async (r: { name: string }): Promise<Storage> => {
      asked.push(r.name);
      return MemoryStorage.from(flat, { name: r.name, readOnly: true });
    };
    const disk = await openVmdk(MemoryStorage.from(new TextEncoder().encode(text), { name: 'd.vmdk', readOnly: true }), { resolver });
    expect(asked).toEqual(['x.flat']);
    expect(disk.size).toBe(32768 * 512);
    expect(await disk.read(1000 * 512, 1024)).toEqual(new Uint8Array(1024).fill(7));
    await disk.close();
    // Writable: a write through one extent would change the other.
    const two = new TextEncoder().encode(text.split('\n').slice(0, 8).join('\n') + '\n');
    const writable = (r: { name: string }): Promise<Storage> => Promise.resolve(MemoryStorage.from(flat, { name: r.name }));
    await expect(openVmdk(MemoryStorage.from(two, { name: 'd.vmdk' }), { resolver: writable, readOnly: false })).rejects.toThrow(/extent 2 names "x.flat", the file of extent 1/);
  });

  it('a streamOptimized file whose footer was cut off', async () => {
    const v = fixture('stream-vmdkstream.vmdk');
    expect(await codeOf(open(v.bytes.subarray(0, v.bytes.length - 512)))).toBe('ERR_IMG_CORRUPT');
  });

  it('an embedded descriptor whose only "parentCID" is in a line the parser skips still opens after a write (hostile seed 1007 case 217)', async () => {
    const v = fixture('sparse.vmdk');
    const at = new TextDecoder('latin1').decode(v.bytes.subarray(512, 512 * 21)).indexOf('parentCID=ffffffff') + 512;
    // Same length, so the area keeps its size: a line of no key, which the parser skips, but which holds the word.
    v.bytes.set(new TextEncoder().encode('=parentCID=fffffff'), at);
    const storage = MemoryStorage.from(v.bytes, { name: 'bad.vmdk' });
    const disk = await openVmdk(storage, { readOnly: false });
    await disk.write(65536, new Uint8Array(1000).fill(7));
    await disk.close();
    // The CID update rewrote the descriptor from its parsed fields: the word must still be there, or the open
    // takes the file for one piece of a split image.
    const reopened = await open(storage.toBytes().slice());
    expect(await reopened.read(65536, 1000)).toEqual(new Uint8Array(1000).fill(7));
    await reopened.close();
  });
});

describe('names inside an image', () => {
  const passwdDescriptor = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "/etc/passwd" 0\n';

  it('a descriptor naming /etc/passwd as an extent: untrusted refuses it unopened; trusted finds it too small', async () => {
    const dir = tempDir();
    const path = join(dir.path, 'passwd.vmdk');
    writeFileSync(path, passwdDescriptor);
    const asked: string[] = [];
    const spy = async (r: Parameters<typeof fileResolver>[0]): Promise<Storage> => {
      asked.push(r.name);
      return fileResolver(r);
    };
    expect(await codeOf(openVmdkFile(path, { untrusted: true, resolver: spy }))).toBe('ERR_IMG_UNSAFE');
    expect(asked).toEqual([]);
    expect(await codeOf(openVmdkFile(path, { resolver: spy }))).toBe('ERR_IMG_CORRUPT');
    expect(asked).toEqual(['/etc/passwd']);
    dir.cleanup();
  });

  it('a parent named /etc/passwd: untrusted refuses it; trusted finds it is no VMDK', async () => {
    const v = fixture('chain-top.vmdk');
    const text = new TextDecoder().decode(v.bytes.subarray(512, 512 * 21)).replace('chain-base.vmdk', '/etc/passwd');
    v.bytes.fill(0, 512, 512 * 21);
    v.bytes.set(new TextEncoder().encode(text.replace(/\0+$/, '')), 512);
    expect(await codeOf(open(v.bytes, { untrusted: true }))).toBe('ERR_IMG_UNSAFE');
    expect(await codeOf(open(v.bytes, { resolver: fileResolver }))).toBe('ERR_IMG_WRONG_FORMAT');
    // noBacking opens the child alone.
    expect(await codeOf(open(v.bytes, { untrusted: true, noBacking: true }))).toBe('ok');
  });

  it('a descriptor file without a resolver says what it needs', async () => {
    const bytes = new TextEncoder().encode(passwdDescriptor);
    await expect(open(bytes)).rejects.toThrow(/pass a resolver/);
  });
});

describe('extents() reads metadata only', () => {
  it('never touches a grain', async () => {
    const v = fixture('sparse.vmdk');
    const storage = MemoryStorage.from(v.bytes, { name: 'sparse.vmdk', readOnly: true });
    const reads: Array<[number, number]> = [];
    const read = storage.read.bind(storage);
    storage.read = async (p: number, n: number) => {
      reads.push([p, n]);
      return read(p, n);
    };
    const disk = await openVmdk(storage);
    reads.length = 0;
    const extents = await diskExtents(disk);
    expect(extents.some((e) => e.kind === 'data')).toBe(true);
    const firstGrain = 128 * 512; // overHead: grains start here
    for (const [p] of reads) expect(p).toBeLessThan(firstGrain);
    await disk.close();
  });
});

describe('a directory whose entries all name one grain table', () => {
  it('reads that table once, and check reports the sharing', async () => {
    const v = fixture('sparse.vmdk');
    // 2^20 grains of 64 KiB: a 64 GiB disk in a 320 KiB file; its 2048 directory entries name one table.
    v.view.setBigUint64(12, 1n << 27n, true);
    const first = v.view.getUint32(v.gdOffset, true);
    // The new directory goes at the end of the file.
    const gd = v.bytes.length;
    const bytes = new Uint8Array(gd + 2048 * 4);
    bytes.set(v.bytes);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(56, BigInt(gd / 512), true);
    view.setUint32(0x08, view.getUint32(0x08, true) & ~2, true); // no redundant directory
    for (let i = 0; i < 2048; i++) view.setUint32(gd + i * 4, first, true);
    const storage = MemoryStorage.from(bytes, { name: 'shared.vmdk', readOnly: true });
    let reads = 0;
    const read = storage.read.bind(storage);
    storage.read = async (p: number, n: number) => {
      reads++;
      return read(p, n);
    };
    const disk = await openVmdk(storage);
    reads = 0;
    await diskExtents(disk);
    expect(reads).toBe(1);
    await disk.close();
    const r = await checkVmdk(MemoryStorage.from(bytes, { name: 'shared.vmdk' }));
    // Every sharing entry is counted; the first 1000 are kept as problems, and a last line says how many more.
    expect(r.corruptions).toBe(2047);
    expect(r.problems.filter((p) => p.code === 'table-shared')).toHaveLength(1000);
    expect(r.messages.at(-1)).toBe('... and 1047 more problems of the same kinds (the first 1000 are listed)');
  });
});

describe('checkVmdk', () => {
  it('every fixture is clean', async () => {
    for (const name of ['sparse.vmdk', 'zeroed-grain.vmdk', 'stream-qemu.vmdk', 'stream-vmdkstream.vmdk', 'chain-top.vmdk', 'split-sparse.vmdk']) {
      const r = await withStorage(FileStorage.open(join(testImagesDir, 'vmdk', name)), (s) => checkVmdk(s, { resolver: fileResolver }));
      expect([name, r.messages]).toEqual([name, []]);
      expect(r.allocatedGrains).toBeGreaterThan(0);
    }
  });

  it('finds a grain past the end, a grain in the descriptor, a shared grain, a redundant table that disagrees', async () => {
    const v = fixture('sparse.vmdk');
    const t = v.tableOffset(0);
    const first = v.view.getUint32(t, true);
    v.view.setUint32(t + 4 * 10, 0x100000, true); // far past the end
    v.view.setUint32(t + 4 * 11, 3, true); // inside the descriptor
    v.view.setUint32(t + 4 * 12, first, true); // shares grain 0's data
    const r = await checkVmdk(MemoryStorage.from(v.bytes, { name: 'bad.vmdk' }));
    const codes = r.problems.map((p) => p.code);
    expect(codes).toContain('grain-out-of-bounds');
    expect(codes).toContain('grain-overlap');
    expect(codes).toContain('grain-shared');
    expect(codes).toContain('redundant-mismatch');
    expect(r.corruptions).toBe(r.problems.length - 2); // the redundant table's lag is no corruption
    // The grain past the end is where qemu-img's check stops and fails (exit 1): a check error, qemu's line first.
    expect([r.problems[0]!.code, r.checkErrors, r.checkFailed, r.messages[0]]).toEqual(['check-failed', 1, 'Invalid argument', 'ERROR: cluster offset for sector 1280 points after EOF']);
  });

  it('an image that does not open is one problem, not a throw', async () => {
    const v = fixture('sparse.vmdk');
    v.view.setBigUint64(56, 0x7fff_ffffn, true);
    const r = await checkVmdk(MemoryStorage.from(v.bytes, { name: 'bad.vmdk' }));
    expect(r.problems.map((p) => p.code)).toEqual(['open-failed']);
  });
});
