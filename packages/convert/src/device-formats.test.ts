// A qcow2 image onto a block device, as qemu-img writes one (an LVM volume holding a qcow2): img convert -O qcow2
// and img create -f qcow2 lay the image out from the start of the device, never resize or remove it, and rely on
// no device byte reading as zeros. Checked with qemu-img on loop devices full of random bytes. Needs loop devices
// (root and /dev/loop-control): skipped with a notice where there are none, a failure in CI.
import { randomFillSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, inCI, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const MiB = 1024 * 1024;
const tmp = tempDir('img-device-formats-');
const attached: string[] = [];

/** A loop device over a new file of `bytes`, or undefined where loop devices cannot be set up here. */
function loopDevice(name: string, bytes: number): string | undefined {
  if (process.platform !== 'linux' || !existsSync('/dev/loop-control')) return undefined;
  const backing = join(tmp.path, name);
  writeFileSync(backing, new Uint8Array(bytes).fill(0xff));
  const r = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  const dev = r.stdout.trim();
  attached.push(dev);
  return dev;
}

const devA = loopDevice('a.img', 64 * MiB);
const devB = devA && loopDevice('b.img', 64 * MiB);
const devSmall = devB && loopDevice('small.img', 4 * MiB);
const ready = devA !== undefined && devB !== undefined && devSmall !== undefined;
afterAll(() => {
  for (const dev of attached) spawnSync('losetup', ['-d', dev]);
  tmp.cleanup();
});
if (!ready) process.stderr.write(`\n[img tests] NOTICE: no loop devices here (not root, or no /dev/loop-control): the qcow2-onto-a-block-device tests are ${inCI ? 'FAILING (CI)' : 'SKIPPED'}.\n`);

/** Overwrites the whole device with random bytes (through the device, so every reader sees them). */
function fillWithGarbage(dev: string): void {
  const size = Number(readFileSync(`/sys/class/block/${dev.slice('/dev/'.length)}/size`, 'utf8').trim()) * 512;
  const fd = openSync(dev, 'r+');
  try {
    const buf = new Uint8Array(4 * MiB);
    for (let at = 0; at < size; at += buf.length) writeSync(fd, randomFillSync(buf), 0, Math.min(buf.length, size - at), at);
  } finally {
    closeSync(fd);
  }
}

/** The bytes of the device (through it). */
function deviceBytes(dev: string): Buffer {
  return readFileSync(dev);
}

/** qemu-img map of an image as the guest sees it: where data and zeros are, without host offsets. */
function guestMap(file: string, format: string): Array<{ start: number; length: number; data: boolean; zero: boolean }> {
  const map = JSON.parse(qemuImg(['map', '--output=json', '-f', format, file]).stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  const out: Array<{ start: number; length: number; data: boolean; zero: boolean }> = [];
  for (const { start, length, data, zero } of map) {
    const last = out[out.length - 1];
    if (last && last.data === data && last.zero === zero && last.start + last.length === start) last.length += length;
    else out.push({ start, length, data, zero });
  }
  return out;
}

/** qemu-img check of the qcow2 on `dev`: clean, and nothing leaked. */
function expectCleanQcow2(dev: string): void {
  const r = qemuImg(['check', '-f', 'qcow2', dev], { allowFail: true });
  expect(r.status, r.stdout + r.stderr).toBe(0);
  expect(r.stdout).toMatch(/No errors were found on the image/);
}

/** A raw source whose data does not fill its clusters: 4 KiB pieces, zero runs inside data, a short tail. */
function rawSource(): string {
  const file = join(tmp.path, 'src.raw');
  const bytes = new Uint8Array(24 * MiB);
  randomFillSync(bytes, 0, 5 * MiB);
  bytes.fill(0, 300_000, 370_000);
  randomFillSync(bytes, 9 * MiB + 4096, 4096);
  bytes.set([1, 2, 3], 20 * MiB + 777);
  randomFillSync(bytes, 24 * MiB - 1000, 1000);
  writeFileSync(file, bytes);
  return file;
}

function qcow2Source(): string {
  const file = join(tmp.path, 'src.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', file, '40M']);
  qemuIo(file, 'qcow2', ['write -P 0x5a 1M 8M', 'write -P 0x11 20M 64k', 'write -P 0x22 30M 3M', 'write -z 31M 1M', 'write -P 0x33 40894464 4096']);
  return file;
}

const suite = ready || !inCI ? describeQemu : describe;

suite('img convert -O qcow2 / img create -f qcow2 onto a block device', () => {
  if (!ready && inCI) {
    it('requires loop devices in CI', () => {
      throw new Error('loop devices (root, /dev/loop-control, losetup) are required in CI for the block-device tests');
    });
    return;
  }

  it.skipIf(!ready)('converts a qcow2 source onto a device of random bytes: qemu-img check clean, compare identical, img info probes qcow2, the same guest map as qemu-img convert', () => {
    const src = qcow2Source();
    fillWithGarbage(devA!);
    fillWithGarbage(devB!);
    const r = run('img', ['convert', '-f', 'qcow2', '-O', 'qcow2', src, devA!]);
    expect(r.status, r.stderr).toBe(0);
    expect(statSync(devA!).isBlockDevice()).toBe(true);
    expectCleanQcow2(devA!);
    qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', src, devA!]);
    const info = run('img', ['info', devA!]);
    expect(info.status, info.stderr).toBe(0);
    expect(info.stdout).toMatch(/file format: qcow2/);
    expect(info.stdout).toMatch(/virtual size: 40 MiB \(41943040 bytes\)/);
    const check = run('img', ['check', devA!]);
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toMatch(/No errors were found on the image/);
    expect(run('img', ['compare', src, devA!]).status).toBe(0);
    // img map reads the device's image as qemu-img map does (a device has no holes to ask about: lseek SEEK_DATA is EINVAL).
    const map = run('img', ['map', '--output=json', devA!]);
    expect(map.status, map.stderr).toBe(0);
    expect(JSON.parse(map.stdout)).toEqual(JSON.parse(qemuImg(['map', '--output=json', '-f', 'qcow2', devA!]).stdout));
    // qemu-img's own conversion onto the other device: the same disk, mapped the same way.
    qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', src, devB!]);
    expect(guestMap(devA!, 'qcow2')).toEqual(guestMap(devB!, 'qcow2'));
    qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', devA!, devB!]);
  });

  it.skipIf(!ready)('converts a raw source with partly written clusters (every cluster size, compressed, v2, subclusters) without reading a stale device byte', () => {
    const src = rawSource();
    for (const options of [[], ['-o', 'cluster_size=512'], ['-o', 'cluster_size=4k,refcount_bits=1'], ['-o', 'compat=0.10'], ['-o', 'extended_l2=on,cluster_size=128k'], ['-c']]) {
      fillWithGarbage(devA!);
      const r = run('img', ['convert', '-f', 'raw', '-O', 'qcow2', ...options, src, devA!]);
      expect(r.status, `${options.join(' ')}: ${r.stderr}`).toBe(0);
      expectCleanQcow2(devA!);
      qemuImg(['compare', '-q', '-f', 'raw', '-F', 'qcow2', src, devA!]);
    }
  });

  it.skipIf(!ready)('creates a qcow2 on a device (reads as zeros, preallocated or not), then img convert -n writes into it, as into a file', () => {
    const empty = join(tmp.path, 'empty.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', empty, '24M']);
    for (const prealloc of ['off', 'metadata', 'full']) {
      fillWithGarbage(devA!);
      const c = run('img', ['create', '-f', 'qcow2', '-o', `preallocation=${prealloc}`, devA!, '24M']);
      expect(c.status, c.stderr).toBe(0);
      expectCleanQcow2(devA!);
      qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', empty, devA!]);
    }
    // An image bigger than the device: only its metadata must fit, as qemu-img create allows.
    const big = run('img', ['create', '-f', 'qcow2', devA!, '10G']);
    expect(big.status, big.stderr).toBe(0);
    expectCleanQcow2(devA!);
    expect(JSON.parse(qemuImg(['info', '--output=json', devA!]).stdout)['virtual-size']).toBe(10 * 1024 * MiB);

    // Small clusters: many refcount blocks, so the writer must find where the image ends on the device.
    const src = rawSource();
    for (const make of [() => run('img', ['create', '-f', 'qcow2', '-o', 'cluster_size=512', devA!, '24M']), () => qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', devA!, '24M'])]) {
      fillWithGarbage(devA!);
      expect(make().status).toBe(0);
      const r = run('img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, devA!]);
      expect(r.status, r.stderr).toBe(0);
      expectCleanQcow2(devA!);
      qemuImg(['compare', '-q', '-f', 'raw', '-F', 'qcow2', src, devA!]);
    }
  });

  it.skipIf(!ready)('refuses a device too small for the image before writing to it, fails cleanly where the data outgrows it, and never removes the node', () => {
    const src = rawSource();
    fillWithGarbage(devSmall!);
    const before = deviceBytes(devSmall!);
    const r = run('img', ['convert', '-f', 'raw', '-O', 'qcow2', src, devSmall!]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`ERR_IMG_INVALID_ARG: convert: ${devSmall!}: the block device is 4194304 bytes, smaller than the \\d+ bytes a qcow2 image of the source needs`));
    const c = run('img', ['create', '-f', 'qcow2', '-o', 'preallocation=metadata', devSmall!, '8M']);
    expect(c.status).toBe(1);
    expect(c.stderr).toMatch(new RegExp(`ERR_IMG_INVALID_ARG: qcow2: ${devSmall!}: the block device is 4194304 bytes, too small for the \\d+ bytes the new image lays out`));
    expect(statSync(devSmall!).isBlockDevice()).toBe(true);
    expect(deviceBytes(devSmall!).equals(before)).toBe(true);
    // Compressed random data cannot be measured ahead: the write past the end fails, naming the device.
    const full = run('img', ['convert', '-f', 'raw', '-O', 'qcow2', '-c', src, devSmall!]);
    expect(full.status).toBe(1);
    expect(full.stderr).toMatch(new RegExp(`ERR_IMG_IO: ${devSmall!}: the block device is 4194304 bytes, too small for the qcow2 image of the source: no space left on device \\(ENOSPC\\)`));
    expect(statSync(devSmall!).isBlockDevice()).toBe(true);
    // -n into an image bigger than the device: the write past its end fails the same way.
    expect(run('img', ['create', '-f', 'qcow2', devSmall!, '24M']).status).toBe(0);
    const into = run('img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, devSmall!]);
    expect(into.status).toBe(1);
    expect(into.stderr).toMatch(/ENOSPC/);
    expect(statSync(devSmall!).isBlockDevice()).toBe(true);
  });

  it.skipIf(!ready)('refuses vpc and vmdk onto a device (what qemu-img leaves there does not read back), writing nothing', () => {
    const src = qcow2Source();
    fillWithGarbage(devSmall!);
    const before = deviceBytes(devSmall!);
    for (const format of ['vpc', 'vmdk']) {
      const r = run('img', ['convert', '-f', 'qcow2', '-O', format, src, devSmall!]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/ERR_IMG_UNSUPPORTED: .*img writes onto a block device as raw or qcow2 only/);
      const c = run('img', ['create', '-f', format, devSmall!, '1M']);
      expect(c.status).toBe(1);
      expect(c.stderr).toMatch(/ERR_IMG_UNSUPPORTED: .*img writes onto a block device as raw or qcow2 only/);
    }
    expect(deviceBytes(devSmall!).equals(before)).toBe(true);
  });
});
