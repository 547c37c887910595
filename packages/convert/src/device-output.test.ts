// A block device as the output of img convert, as qemu-img takes one: written into as it is (raw), never
// truncated, created or removed; a failed conversion leaves the device's node in place (one removed /dev/loop0).
// Needs a loop device (root and /dev/loop-control): skipped with a notice where there is none.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { FileStorage } from '@img/block/node';
import { removeOutputFile } from './node.js';
import { run } from './test/cli.js';

const MiB = 1024 * 1024;
const tmp = tempDir('img-device-out-');

/** A loop device over a new 64 MiB file, or undefined where loop devices cannot be set up here. */
function loopDevice(): string | undefined {
  if (process.platform !== 'linux' || !existsSync('/dev/loop-control')) return undefined;
  const backing = join(tmp.path, 'loop.img');
  writeFileSync(backing, new Uint8Array(64 * MiB).fill(0xa5));
  const r = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const device = loopDevice();
afterAll(() => {
  if (device) spawnSync('losetup', ['-d', device]);
  tmp.cleanup();
});
if (!device) process.stderr.write('\n[img tests] NOTICE: no loop device here (not root, or no /dev/loop-control): the block-device output tests are SKIPPED.\n');

describe('removeOutputFile', () => {
  it('removes a regular file and leaves anything else (a FIFO, a directory, a device) in place', async () => {
    const file = join(tmp.path, 'partial.qcow2');
    writeFileSync(file, 'x');
    await removeOutputFile(file);
    expect(existsSync(file)).toBe(false);
    const fifo = join(tmp.path, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await removeOutputFile(fifo);
    expect(statSync(fifo).isFIFO()).toBe(true);
    const dir = join(tmp.path, 'dir');
    mkdirSync(dir);
    await removeOutputFile(dir);
    expect(statSync(dir).isDirectory()).toBe(true);
    await removeOutputFile('/dev/null');
    expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
    await removeOutputFile(join(tmp.path, 'never-there'));
  });
});

describeQemu('img convert onto a block device', () => {
  it.skipIf(!device)('writes the disk into the device over its old bytes, as qemu-img; refuses other formats and a smaller device without writing; the node stays', async () => {
    const dev = device!;
    const src = join(tmp.path, 'src.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '64M']);
    qemuIo(src, 'qcow2', ['write -P 0x5a 1M 8M', 'write -P 0x11 40M 3M', 'write -z 50M 1M']);
    // Its size is the device's, as qemu-img info says (stat says 0 bytes).
    const storage = await FileStorage.open(dev, { lock: false });
    expect(await storage.size()).toBe(64 * MiB);
    await storage.close();
    expect(run('img', ['info', '-f', 'raw', dev]).stdout).toMatch(/virtual size: 64 MiB \(67108864 bytes\)/);
    const r = run('img', ['convert', '-f', 'qcow2', '-O', 'raw', src, dev]);
    expect(r.status, r.stderr).toBe(0);
    expect(statSync(dev).isBlockDevice()).toBe(true);
    // The old 0xa5 bytes where the source has holes are zeros now.
    qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'raw', src, dev]);

    const before = readFileSync(join(tmp.path, 'loop.img'));
    const big = join(tmp.path, 'big.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', big, '128M']);
    const tooBig = run('img', ['convert', '-f', 'qcow2', '-O', 'raw', big, dev]);
    expect(tooBig.status).toBe(1);
    expect(tooBig.stderr).toMatch(/the block device is 67108864 bytes, smaller than the 134217728 bytes of the source/);
    // qcow2 is laid out on a device (device-formats.test.ts); vpc is not.
    const other = run('img', ['convert', '-f', 'qcow2', '-O', 'vpc', src, dev]);
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(/ERR_IMG_UNSUPPORTED: .*onto a block device as raw or qcow2 only/);
    const opts = run('img', ['convert', '-f', 'qcow2', '-O', 'raw', '-o', 'preallocation=full', src, dev]);
    expect(opts.status).toBe(1);
    expect(statSync(dev).isBlockDevice()).toBe(true);
    spawnSync('blockdev', ['--flushbufs', dev]);
    expect(Buffer.compare(readFileSync(join(tmp.path, 'loop.img')), before)).toBe(0);
  });
});
