// How large a sparse VMDK createVmdk makes: qemu-img 7.2's own bound (2^32 - 512 grains of 64 KiB), with qemu-img,
// qemu-io and vmdkinfo reading what img creates past 2 TiB. Files are sparse: a few MiB of real data each.
import { ImageError, type Storage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, hasTool, inCI, qemuCheck, qemuImg, qemuInfo, qemuIo, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createVmdk, MAX_SPARSE_SIZE } from './create.js';

const TiB = 2 ** 40;
const GRAIN = 65536;

/** A storage that keeps nothing: what createVmdk lays out at 256 TiB is tens of MiB of directory, not worth a disk. */
class NullStorage implements Storage {
  readonly name = 'null.vmdk';
  readonly readOnly = false;
  #size = 0;
  size(): Promise<number> {
    return Promise.resolve(this.#size);
  }
  read(_position: number, length: number): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(length));
  }
  readInto(_position: number, target: Uint8Array): Promise<number> {
    target.fill(0);
    return Promise.resolve(target.length);
  }
  write(position: number, data: Uint8Array): Promise<void> {
    this.#size = Math.max(this.#size, position + data.length);
    return Promise.resolve();
  }
  truncate(size: number): Promise<void> {
    this.#size = size;
    return Promise.resolve();
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

async function codeOf(p: Promise<{ close(): Promise<void> }>): Promise<string> {
  try {
    await (await p).close();
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return `${e.code}: ${e.message}`;
    throw e;
  }
}

describe('sparse VMDK sizes createVmdk accepts', () => {
  it('the bound is 2^32 - 512 grains of 64 KiB (256 TiB - 32 MiB), as qemu-img lays out', () => {
    expect(MAX_SPARSE_SIZE).toBe(281474943156224);
    expect(MAX_SPARSE_SIZE).toBe(256 * TiB - 32 * 2 ** 20);
  });

  for (const subformat of ['monolithicSparse', 'streamOptimized'] as const) {
    it(`${subformat}: 3 TiB and the bound are created; a sector more is ERR_IMG_INVALID_ARG naming the bound`, async () => {
      expect(await codeOf(createVmdk(new NullStorage(), { size: 3 * TiB, subformat }))).toBe('ok');
      expect(await codeOf(createVmdk(new NullStorage(), { size: MAX_SPARSE_SIZE, subformat }))).toBe('ok');
      expect(await codeOf(createVmdk(new NullStorage(), { size: MAX_SPARSE_SIZE + 512, subformat }))).toMatch(new RegExp(`^ERR_IMG_INVALID_ARG: vmdk: a ${subformat} VMDK holds at most 281474943156224 bytes \\(2\\^32 - 512 grains of 64 KiB`));
    });
  }
});

const dir = tempDir('vmdk-size-');
afterAll(() => dir.cleanup());

function vmdkinfoMediaSize(path: string): number {
  const r = spawnSync('vmdkinfo', [path], { encoding: 'utf8' });
  const m = /Media size:.*\((\d+) bytes\)/.exec(r.stdout);
  return m ? Number(m[1]) : -1;
}

describeQemu('sparse VMDKs over 2 TiB that img creates: qemu-img, qemu-io and vmdkinfo read them', () => {
  // Just past the old 2 TiB bound: qemu-img check walks every preallocated grain table (3.5 s here; 3 TiB takes 5 s, map 11 s).
  const size = 2 * TiB + 2 ** 20;
  for (const subformat of ['monolithicSparse', 'streamOptimized'] as const) {
    it(`${subformat} of 2 TiB + 1 MiB with a grain at each end`, async () => {
      const path = join(dir.path, `${subformat}-big.vmdk`);
      const disk = await createVmdk(await FileStorage.create(path), { size, subformat, resolver: fileResolver });
      await disk.write(0, new Uint8Array(GRAIN).fill(0x11));
      await disk.write(size - GRAIN, new Uint8Array(GRAIN).fill(0x5a));
      await disk.close();
      expect(qemuInfo(path)['virtual-size']).toBe(size);
      const check = qemuCheck(path);
      expect(check.status, check.stderr).toBe(0);
      const io = qemuIo(path, 'vmdk', ['read -P 0x11 0 64k', `read -P 0x5a ${size - GRAIN} 64k`, `read -P 0 ${2 * TiB} 64k`]);
      expect(io).not.toMatch(/fail/i);
      expect(io.match(/read 65536\/65536 bytes/g)).toHaveLength(3);
      // vmdkinfo (libvmdk) as a second reader: required in CI, as write-interop.test.ts has it.
      if (hasTool('vmdkinfo') || inCI) expect(vmdkinfoMediaSize(path)).toBe(size);
    });
  }

  it('qemu-img creates a monolithicSparse a sector past the bound, but it cannot be written (its grain table count wrapped)', () => {
    const path = join(dir.path, 'past.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', path, String(MAX_SPARSE_SIZE + 512)]);
    const r = spawnSync('qemu-io', ['-f', 'vmdk', '-c', 'write 0 64k', path], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`).toMatch(/write failed: Invalid argument/);
  });
});
