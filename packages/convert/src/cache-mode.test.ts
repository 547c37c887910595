// convert -t (qemu-img's output cache mode): none and directsync write the
// copied data around the page cache (checked with util-linux fincore, which
// asks the kernel which pages of a file are cached), and every mode writes
// the same image (checked with qemu-img compare and check).
import { closeSync, existsSync, ftruncateSync, openSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, seededRandom, tempDir, pageCacheBytes as cached } from '@img/testkit';
import { convertFile } from './node.js';
import { run } from './test/cli.js';

const tmp = tempDir('img-cache-mode-');
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;

/**
 * 24 MiB of random data in 3 MiB runs with file holes between them, as a
 * raw file (zeros written as bytes would be placed, skipped and then moved
 * over by the qcow2 writer, through the cache).
 */
const input = join(tmp.path, 'in.raw');
{
  const rnd = seededRandom(7);
  const fd = openSync(input, 'w');
  for (let at = 0; at < 40 * MiB; at += 5 * MiB) {
    const run = new Uint8Array(3 * MiB);
    for (let i = 0; i < run.length; i++) run[i] = Math.floor(rnd() * 256);
    writeSync(fd, run, 0, run.length, at);
  }
  ftruncateSync(fd, 40 * MiB);
  closeSync(fd);
}

/** Whether this file system takes O_DIRECT: a direct open says so. */
async function directHere(): Promise<boolean> {
  const s = await FileStorage.create(join(tmp.path, 'probe'), { direct: true, lock: false });
  await s.close();
  return s.direct;
}

describeQemu('convert -t', () => {
  for (const format of ['qcow2', 'raw', 'vpc']) {
    it(`-t none and -t directsync into ${format}: the data never enters the page cache, and the image is the input's`, async () => {
      const direct = await directHere();
      if (statfsSync(tmp.path).type === 0xef53) expect(direct).toBe(true); // ext4, the usual /tmp
      for (const mode of ['none', 'directsync']) {
        const out = join(tmp.path, `out-${mode}.${format}`);
        const r = run('img', ['convert', '-t', mode, '-f', 'raw', '-O', format, input, out]);
        expect(r.status, r.stderr).toBe(0);
        const inCache = cached(out);
        // 24 MiB of data written: with O_DIRECT only metadata (a qcow2's header and tables, a VHD's bitmaps) is cached.
        if (direct && inCache !== undefined) expect(inCache).toBeLessThan(2 * MiB);
        qemuImg(['compare', '-q', '-f', format, '-F', 'raw', out, input]);
        if (format === 'qcow2') qemuImg(['check', out]);
      }
      // Without -t the copy loop picks the page cache or the disk per piece, by what each has cost lately
      // (FileStorage direct 'auto'); IMG_COPY_DIRECT_AUTO makes it take one path, so that each can be seen:
      // through the cache the data is cached, as qemu-img leaves it (the measure above can tell), around it not.
      for (const path of ['cache', 'direct']) {
        const plain = join(tmp.path, `out-plain-${path}.${format}`);
        process.env.IMG_COPY_DIRECT_AUTO = path;
        try {
          expect(run('img', ['convert', '-f', 'raw', '-O', format, input, plain]).status).toBe(0);
        } finally {
          delete process.env.IMG_COPY_DIRECT_AUTO;
        }
        const inCache = cached(plain);
        if (inCache !== undefined && path === 'cache') expect(inCache).toBeGreaterThan(20 * MiB);
        if (inCache !== undefined && path === 'direct' && direct) expect(inCache).toBeLessThan(2 * MiB);
        qemuImg(['compare', '-q', '-f', format, '-F', 'raw', plain, input]);
        if (format === 'qcow2') qemuImg(['check', plain]);
      }
    });
  }

  it('-n -t none into an existing raw image: the data never enters the page cache, over zeros (--target-is-zero) or old data; without -t it does', async () => {
    const direct = await directHere();
    for (const mode of ['none', undefined]) {
      const out = join(tmp.path, `into-${mode ?? 'plain'}.raw`);
      qemuImg(['create', '-q', '-f', 'raw', out, '40M']);
      const r = run('img', ['convert', '-n', '--target-is-zero', ...(mode ? ['-t', mode] : []), '-f', 'raw', '-O', 'raw', input, out]);
      expect(r.status, r.stderr).toBe(0);
      // Before compare, which reads the file into the page cache.
      const inCache = cached(out);
      qemuImg(['compare', '-q', '-f', 'raw', '-F', 'raw', out, input]);
      if (inCache === undefined) continue;
      if (mode === 'none' && direct) expect(inCache).toBeLessThan(2 * MiB);
      if (!mode) expect(inCache).toBeGreaterThan(20 * MiB);
    }
    // Over a target that may hold data (-n alone): the data goes around the page cache as well, and the
    // input's holes between the runs (16 MiB) are punched in the target (FileStorage.punchHole), not
    // written as zeros through the cache (they were, up to session 19: about 16 MiB cached).
    const over = join(tmp.path, 'over.raw');
    writeFileSync(over, new Uint8Array(40 * MiB).fill(0x55));
    expect(run('img', ['convert', '-n', '-t', 'none', '-f', 'raw', '-O', 'raw', input, over]).status).toBe(0);
    const overCache = cached(over);
    qemuImg(['compare', '-q', '-f', 'raw', '-F', 'raw', over, input]);
    if (overCache !== undefined && direct) expect(overCache).toBeLessThan(2 * MiB);
  });

  it('every cache mode writes the same image, through the API as through the command; a bad one is refused as qemu-img refuses it', async () => {
    for (const cache of ['none', 'directsync', 'writeback', 'writethrough', 'unsafe'] as const) {
      const out = join(tmp.path, `api-${cache}.qcow2`);
      const result = await convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input, output: out, cache });
      expect(result.bytesWritten).toBe(24 * MiB);
      qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'raw', out, input]);
    }
    await expect(convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input, output: join(tmp.path, 'api-bad.qcow2'), cache: 'nonee' as 'none' })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    expect(existsSync(join(tmp.path, 'api-bad.qcow2'))).toBe(false);
    const vhd = join(tmp.path, 'out.vhd');
    expect(run('img', ['convert', '-t', 'none', '-f', 'raw', '-O', 'vpc', input, vhd]).status).toBe(0);
    qemuImg(['compare', '-q', '-f', 'vpc', '-F', 'raw', vhd, input]);
    const bad = run('img', ['convert', '-t', 'nonee', '-f', 'raw', '-O', 'qcow2', input, join(tmp.path, 'bad.qcow2')]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^img convert: Invalid cache option: nonee\n/);
  });
});

describe('FileStorage direct', () => {
  it('is off for read-only opens and by default', async () => {
    const ro = await FileStorage.open(input, { direct: true, lock: false });
    expect(ro.direct).toBe(false);
    await ro.close();
    const plain = await FileStorage.open(input, { readOnly: false, lock: false });
    expect(plain.direct).toBe(false);
    await plain.close();
  });
});
