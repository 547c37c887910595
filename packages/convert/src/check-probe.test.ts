// img check learns the format from the file's bytes alone, so metadata that would refuse a full open is counted, as
// qemu-img check counts it: exit 2 with the problems, not exit 1 with an open error. Its counts come from the image alone; its chain is opened first (as qemu-img check opens it) only to refuse one that does not open.
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuImg, qemuIo, tempDir } from '@img/testkit';

const bin = fileURLToPath(new URL('../dist/bin/img.js', import.meta.url));
const dir = tempDir('img-check-probe-');
const p = (name: string) => join(dir.path, name);
afterAll(() => dir.cleanup());

function img(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [bin, ...args], { cwd: dir.path, encoding: 'utf8', timeout: 30_000 });
}

function readBe(path: string, offset: number, bytes: 4 | 8): number {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(bytes);
    readSync(fd, b, 0, bytes, offset);
    return bytes === 4 ? b.readUInt32BE(0) : Number(b.readBigUInt64BE(0));
  } finally {
    closeSync(fd);
  }
}

function patch(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

function u64(value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  return b;
}

describeQemu('img check counts broken metadata instead of refusing to open it', () => {
  beforeAll(() => {
    // qcow2 whose L1 table (l1_table_offset, header 0x28) lies 16 MiB into a file of about 1 MiB.
    qemuImg(['create', '-f', 'qcow2', p('l1-past-end.qcow2'), '64M']);
    qemuIo(p('l1-past-end.qcow2'), 'qcow2', ['write -P 1 0 1M']);
    patch(p('l1-past-end.qcow2'), 40, u64(16 * 1024 * 1024));
    // Dynamic VHD whose BAT entries 0 and 1 name the same block (overlapping blocks).
    qemuImg(['create', '-f', 'vpc', p('overlap.vhd'), '64M']);
    qemuIo(p('overlap.vhd'), 'vpc', ['write -P 1 0 4M']);
    const bat = readBe(p('overlap.vhd'), 512 + 16, 8); // dynamic header (after the footer copy): table offset at 0x10
    const first = readBe(p('overlap.vhd'), bat, 4);
    const entry = Buffer.alloc(4);
    entry.writeUInt32BE(first);
    patch(p('overlap.vhd'), bat + 4, entry);
    // qcow2 whose backing file is gone: check needs the image only.
    qemuImg(['create', '-f', 'qcow2', p('base.qcow2'), '16M']);
    qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('orphan.qcow2')]);
    rmSync(p('base.qcow2'));
    copyFileSync(p('l1-past-end.qcow2'), p('l1-past-end-copy.qcow2'));
  });

  it('qcow2, L1 table past the end of the file: the same status and counts as qemu-img check, probed or with -f', () => {
    const oracle = qemuCheck(p('l1-past-end.qcow2'));
    expect(oracle.status).toBe(2);
    for (const args of [['--output=json'], ['--output=json', '-f', 'qcow2']]) {
      const r = img(['check', ...args, 'l1-past-end.qcow2']);
      expect(r.status, r.stderr).toBe(oracle.status);
      const ours = JSON.parse(r.stdout) as Record<string, unknown>;
      for (const key of ['corruptions', 'leaks', 'check-errors', 'image-end-offset', 'total-clusters']) {
        expect(ours[key], key).toEqual(oracle.result?.[key]);
      }
    }
    const human = img(['check', 'l1-past-end.qcow2']);
    expect(human.status).toBe(2);
    expect(human.stdout).toContain('1 errors were found on the image.');
    expect(human.stderr).toMatch(/ERROR L1 table at 0x1000000 lies past the end of the file/);
  });

  it('a full open still refuses that image (info), and repair does not take it', () => {
    expect(img(['info', 'l1-past-end.qcow2']).status).toBe(1);
    const r = img(['check', '-r', 'all', 'l1-past-end-copy.qcow2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/L1 table at 0x1000000/);
  });

  it('VHD with overlapping blocks: exit 2 with the overlap counted, probed or with -f', () => {
    expect(img(['info', 'overlap.vhd']).status).toBe(1);
    for (const args of [[], ['-f', 'vhd']]) {
      const r = img(['check', ...args, 'overlap.vhd']);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/BAT entries 0 and 1 point at overlapping blocks/);
      const json = JSON.parse(img(['check', '--output=json', ...args, 'overlap.vhd']).stdout) as { corruptions?: number };
      expect(json.corruptions).toBeGreaterThanOrEqual(1);
    }
  });

  it('--image-opts driver=FORMAT is -f FORMAT: a qcow2 given as raw is refused, or with --force-format has no check (63) as in qemu-img', () => {
    qemuImg(['create', '-q', '-f', 'qcow2', p('plain.qcow2'), '1M']);
    for (const args of [
      ['-f', 'raw', 'plain.qcow2'],
      ['--image-opts', 'driver=raw,file.filename=plain.qcow2'],
    ]) {
      const refused = img(['check', ...args]);
      expect(refused.status, refused.stderr).toBe(1);
      expect(refused.stderr).toMatch(/ERR_IMG_UNSAFE: raw: plain\.qcow2: the file looks like qcow2, not raw/);
      const forced = img(['check', '--force-format', ...args]);
      expect(forced.status, forced.stderr).toBe(qemuImg(['check', ...args], { allowFail: true, cwd: dir.path }).status);
      expect(forced.status).toBe(63);
    }
    expect(img(['check', '--image-opts', 'driver=qcow2,file.filename=plain.qcow2']).status).toBe(0);
  });

  it('check opens the backing chain as qemu-img check does: an image whose backing file is gone fails (status 1)', () => {
    const r = img(['check', 'orphan.qcow2']);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^img check: ERR_IMG_NOT_FOUND: qcow2: orphan\.qcow2: backing file "base\.qcow2" .*does not exist\n$/);
  });
});
