import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('rebase-c-');
afterAll(() => tmp.cleanup());

/** qemu-io reads with a pattern check: true when every read found its pattern. */
function reads(path: string, checks: string[]): boolean {
  const out = qemuIo(path, 'qcow2', checks);
  return !/Pattern verification failed|error/i.test(out) && out.split('\n').filter((l) => l.startsWith('read ')).length === checks.length;
}

/** The allocation and compression line of qemu-img check. */
function checkLine(path: string): string {
  const r = qemuImg(['check', path]);
  expect(r.stdout).toMatch(/^No errors were found on the image\./);
  return /^\d+\/\d+ = .*$/m.exec(r.stdout)![0];
}

const size = 48 << 20;
const half = size / 2;
const third = size / 3;

// The cases of qemu's own test of rebase -c (iotest 314, qemu 8.2), run through img; qemu-io and qemu-img check judge.
describeQemu('img rebase -c (compress what rebase copies), judged by qemu-io and qemu-img check', () => {
  it("refuses a format without compressed clusters in qemu-img's words, before anything changes", () => {
    const raw = join(tmp.path, 'plain.raw');
    qemuImg(['create', '-q', '-f', 'raw', raw, '1M']);
    const r = run('img', ['rebase', '-c', '-f', 'raw', '-b', '', raw]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`img rebase: ERR_IMG_UNSUPPORTED: raw: ${raw}: Compression not supported for this file format\n`);
  });

  it("onto no backing file: the backing file's half is copied compressed, every cluster compressed", () => {
    const base = join(tmp.path, 'a.base.qcow2');
    const top = join(tmp.path, 'a.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, String(size)]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    qemuIo(base, 'qcow2', [`write -c -P 0xaa 0 ${half}`]);
    qemuIo(top, 'qcow2', [`write -c -P 0xbb ${half} ${half}`]);
    const r = run('img', ['rebase', '-c', '-b', '', top]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(reads(top, [`read -P 0xaa 0 ${half}`, `read -P 0xbb ${half} ${half}`])).toBe(true);
    expect(checkLine(top)).toBe('768/768 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters');
    expect(qemuImg(['info', '--output=json', top]).stdout).not.toMatch(/backing-filename/);
  });

  it('with a raw backing file (--compress, --backing spellings)', () => {
    const base = join(tmp.path, 'b.base.raw');
    const top = join(tmp.path, 'b.qcow2');
    qemuImg(['create', '-q', '-f', 'raw', base, String(half)]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top, String(size)]);
    qemuIo(base, 'raw', [`write -P 0xaa 0 ${half}`]);
    qemuIo(top, 'qcow2', [`write -c -P 0xbb ${half} ${half}`]);
    expect(run('img', ['rebase', '--compress', '--format', 'qcow2', '--backing', '', top]).status).toBe(0);
    expect(reads(top, [`read -P 0xaa 0 ${half}`, `read -P 0xbb ${half} ${half}`])).toBe(true);
    expect(checkLine(top)).toBe('768/768 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters');
  });

  it("removing one delta from a chain (-B, qemu-img 10.1's backing format letter): only its third is copied", () => {
    const base = join(tmp.path, 'c.base.qcow2');
    const itmd = join(tmp.path, 'c.itmd.qcow2');
    const top = join(tmp.path, 'c.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, String(size)]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', itmd]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', itmd, '-F', 'qcow2', top]);
    qemuIo(base, 'qcow2', [`write -c -P 0xaa 0 ${third}`]);
    qemuIo(itmd, 'qcow2', [`write -c -P 0xbb ${third} ${third}`]);
    qemuIo(top, 'qcow2', [`write -c -P 0xcc ${2 * third} ${third}`]);
    expect(run('img', ['rebase', '-c', '-b', base, '-B', 'qcow2', top]).status).toBe(0);
    expect(reads(top, [`read -P 0xaa 0 ${third}`, `read -P 0xbb ${third} ${third}`, `read -P 0xcc ${2 * third} ${third}`])).toBe(true);
    expect(checkLine(top)).toBe('512/768 = 66.67% allocated, 100.00% fragmented, 100.00% compressed clusters');
    expect(JSON.parse(qemuImg(['info', '--output=json', top]).stdout)['backing-filename-format']).toBe('qcow2');
  });

  it('unaligned data in the backing file: the whole cluster is written compressed', () => {
    const base = join(tmp.path, 'd.base.qcow2');
    const top = join(tmp.path, 'd.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '65536']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    qemuIo(base, 'qcow2', ['write -P 0xaa 0 32767']);
    expect(run('img', ['rebase', '-c', '-b', '', top]).status).toBe(0);
    expect(reads(top, ['read -P 0xaa 0 32767', 'read -P 0x00 32767 32769'])).toBe(true);
    expect(checkLine(top)).toBe('1/1 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters');
  });

  it('two spellings of one option with different values: status 1, one line', () => {
    const r = run('img', ['rebase', '-F', 'qcow2', '-B', 'raw', '-b', '', 'x.qcow2']);
    expect(r.status).toBe(1);
    expect(r.stderr.split('\n')[0]).toBe('img rebase: -F and -B are the same option: give it once');
  });
});
