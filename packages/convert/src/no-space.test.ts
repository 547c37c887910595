// commit, rebase, snapshot -c and bitmap --add on a full file system (CLI audit 2 finding 4): one error line, status 1,
// that says the image still reads as before; both claims checked: qemu-img compare against the content before, and
// qemu-img check clean at once (the clusters the failed write had allocated are given back, as qemu-img does).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-no-space-');
afterAll(() => tmp.cleanup());
const MIB = 2 ** 20;

/** An 8 MiB tmpfs, where this process may mount one (root) and qemu-img is there; its path, or undefined. */
function smallFileSystem(): string | undefined {
  if (process.getuid?.() !== 0 || spawnSync('qemu-img', ['--version']).status !== 0) return undefined;
  const dir = mkdtempSync(join(tmp.path, 'full-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]).status !== 0) return undefined;
  afterAll(() => void spawnSync('umount', [dir]));
  return dir;
}
const full = smallFileSystem();

/** Takes what is left of the file system (a file written until ENOSPC); returns a function that gives it back. */
function fill(dir: string): () => void {
  const file = join(dir, 'fill');
  spawnSync('dd', ['if=/dev/zero', `of=${file}`, 'bs=4k'], { stdio: 'ignore' });
  return () => rmSync(file);
}

/** The failed command's one line: the ENOSPC error, then what still holds. */
function expectNoSpaceLine(r: { status: number; stdout: string; stderr: string }, command: string, state: string): void {
  expect(r.status).toBe(1);
  expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  expect(r.stderr).toMatch(new RegExp(`^img ${command}: ERR_IMG_IO: .*no space left on device \\(ENOSPC\\); `));
  expect(r.stderr).toContain(`; ${state}\n`);
}

/** Nothing leaked: qemu-img check finds `file` clean (exit 0, not 3) right after the failure, on the still full file system. */
function expectClean(file: string): void {
  const r = qemuImg(['check', file], { allowFail: true });
  expect(r.status, r.stdout).toBe(0);
}

const same = (a: string, b: string) => qemuImg(['compare', a, b], { allowFail: true }).status;

describe.runIf(full !== undefined)('img commit, rebase, snapshot -c and bitmap --add on a full file system', () => {
  /**
   * `img commit` of a qcow2 top holding 12 MiB into a `format` base on the full file system: it fails in the one
   * line, and the top still reads as before (qemu-img compare with a copy taken first). Answers the base's path.
   */
  function commitOntoFull(format: 'qcow2' | 'vpc', label: string): string {
    const d = mkdtempSync(join(tmp.path, `${label}-`));
    const raw = join(d, 'data.raw');
    writeFileSync(raw, randomBytes(12 * MIB));
    const base = join(full!, `base.${format}`);
    const top = join(d, 'top.qcow2');
    qemuImg(['create', '-q', '-f', format, base, '64M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', format, top]);
    qemuImg(['convert', '-n', '-f', 'raw', '-O', 'qcow2', '--target-is-zero', raw, top]);
    const before = join(d, 'before.qcow2');
    qemuImg(['convert', '-O', 'qcow2', top, before]);
    const r = run('img', ['commit', top]);
    expectNoSpaceLine(r, 'commit', `${top} still holds all its data and its chain reads as before`);
    expect(same(before, top)).toBe(0);
    return base;
  }

  it('commit: the top and its chain read as before; nothing leaks in the base', () => {
    const base = commitOntoFull('qcow2', 'commit');
    expectClean(base);
    rmSync(base);
  });

  it('commit into a dynamic VHD: the base is put back as it was, footer at its end (qemu-img leaves the block head there)', () => {
    const base = commitOntoFull('vpc', 'commit-vhd');
    const check = run('img', ['check', base]);
    expect(check.status, check.stdout + check.stderr).toBe(0);
    const bytes = readFileSync(base);
    expect(bytes.subarray(bytes.length - 512, bytes.length - 504).toString('latin1')).toBe('conectix');
    rmSync(base);
  });

  it('rebase -b "": the overlay keeps its backing file and reads as before; nothing leaks', () => {
    const d = mkdtempSync(join(tmp.path, 'rebase-'));
    const base = join(d, 'base.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '64M']);
    qemuIo(base, 'qcow2', ['write -P 3 0 8M']);
    const ov = join(full!, 'ov.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', ov]);
    qemuIo(ov, 'qcow2', ['write -P 4 8M 1M']);
    const before = join(d, 'before.qcow2');
    copyFileSync(ov, before);
    const unfill = fill(full!);
    const r = run('img', ['rebase', '-b', '', ov]);
    expectNoSpaceLine(r, 'rebase', `${ov} keeps its old backing file and reads as before`);
    expect(JSON.parse(qemuImg(['info', '--output=json', ov]).stdout)['backing-filename']).toBe(base);
    expect(same(before, ov)).toBe(0);
    expectClean(ov);
    unfill();
    rmSync(ov);
  });

  it('snapshot -c and bitmap --add: the image reads as before, with no new snapshot or bitmap; nothing leaks', () => {
    const d = mkdtempSync(join(tmp.path, 'snapshot-'));
    const file = join(full!, 's.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
    qemuIo(file, 'qcow2', ['write -P 5 0 1M']);
    const before = join(d, 'before.qcow2');
    copyFileSync(file, before);
    const unfill = fill(full!);
    const s = run('img', ['snapshot', '-c', 'snap1', file]);
    expectNoSpaceLine(s, 'snapshot', `${file} reads as before and has no new snapshot`);
    expect(qemuImg(['snapshot', '-l', file]).stdout).toBe('');
    expect(same(before, file)).toBe(0);
    expectClean(file);
    const b = run('img', ['bitmap', '--add', file, 'bm1']);
    expectNoSpaceLine(b, 'bitmap', `${file} reads as before`);
    expect(JSON.parse(qemuImg(['info', '--output=json', file]).stdout)['format-specific'].data.bitmaps).toBeUndefined();
    expect(same(before, file)).toBe(0);
    expectClean(file);
    unfill();
    rmSync(file);
  });
});
