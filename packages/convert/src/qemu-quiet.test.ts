// -q as qemu-img takes it on the commands that have it, and create's "Formatting" line as qemu-img prints it.
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-quiet-');
afterAll(() => tmp.cleanup());

describeQemu("img create prints qemu-img create's line; -q silences stdout", () => {
  const cases: Array<[string, string[]]> = [
    ['qcow2', []],
    ['qcow2', ['-o', 'compat=0.10']],
    ['qcow2', ['-o', 'preallocation=metadata']],
    ['qcow2', ['-o', 'compression_type=zstd,extended_l2=on,refcount_bits=8,cluster_size=128k']],
    ['qcow2', ['-o', 'cluster_size=64k,lazy_refcounts=true,compat=v3']],
    ['vpc', ['-o', 'subformat=fixed']],
    ['vpc', []],
    ['raw', []],
  ];
  cases.forEach(([fmt, opts], i) => {
    it(`create -f ${fmt} ${opts.join(' ')}`, () => {
      const ours = join(tmp.path, `c${i}-img`);
      const theirs = join(tmp.path, `c${i}-qemu`);
      const a = run('img', ['create', '-f', fmt, ...opts, ours, '1M']);
      const b = spawnSync('qemu-img', ['create', '-f', fmt, ...opts, theirs, '1M'], { encoding: 'utf8' });
      expect(a.status, a.stderr).toBe(0);
      expect(a.stdout.replace(ours, 'X')).toBe(b.stdout.replace(theirs, 'X'));
    });
  });

  it('create with a backing file names it as qemu-img does', () => {
    const base = join(tmp.path, 'base.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '2M']);
    const a = run('img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(tmp.path, 'top-img.qcow2')]);
    const b = spawnSync('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(tmp.path, 'top-qemu.qcow2')], { encoding: 'utf8' });
    expect(a.stdout.replace('top-img', 'top')).toBe(b.stdout.replace('top-qemu', 'top'));
  });

  it('-q prints nothing on stdout and keeps the exit status', () => {
    const img = join(tmp.path, 'q.qcow2');
    for (const args of [
      ['create', '-q', '-f', 'qcow2', img, '1M'],
      ['resize', '-q', img, '2M'],
      ['check', '-q', img],
      ['compare', '-q', img, img],
      ['snapshot', '-q', '-c', 's1', img],
      ['amend', '-q', '-o', 'lazy_refcounts=on', img],
      ['convert', '-q', '-O', 'raw', img, join(tmp.path, 'q.raw')],
    ]) {
      const r = run('img', args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout, args.join(' ')).toBe('');
      if (args[0] === 'convert') expect(r.stderr).toBe('');
    }
    const other = join(tmp.path, 'other.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', other, '3M']);
    const diff = run('img', ['compare', '-q', img, other]);
    expect(diff.stdout).toBe('');
    expect(diff.status).toBe(spawnSync('qemu-img', ['compare', '-q', img, other]).status);
  });
});

describeQemu('-q wins over -p, as in qemu-img; the progress bar ends its line', () => {
  it('convert, commit, rebase, compare, sparsify and compact print no progress under -q -p', () => {
    const raw = join(tmp.path, 'p.raw');
    const base = join(tmp.path, 'pb.qcow2');
    const top = join(tmp.path, 'pt.qcow2');
    qemuImg(['create', '-q', '-f', 'raw', raw, '8M']);
    qemuImg(['create', '-q', '-f', 'qcow2', base, '8M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    spawnSync('qemu-io', ['-c', 'write -P 7 0 1M', top]);
    for (const args of [
      ['convert', '-q', '-p', '-O', 'qcow2', raw, join(tmp.path, 'pq.qcow2')],
      ['commit', '-q', '-p', '-d', top],
      ['rebase', '-q', '-p', '-b', '', top],
      ['compare', '-q', '-p', raw, raw],
      ['sparsify', '-q', '-p', top],
      ['compact', '-q', '-p', top],
    ]) {
      const r = run('img', args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout + r.stderr, args.join(' ')).toBe('');
      // qemu-img agrees: -q silences -p (it has no sparsify or compact).
      if (['sparsify', 'compact'].includes(args[0]!)) continue;
      const q = spawnSync('qemu-img', args, { encoding: 'utf8' });
      expect(q.stdout + q.stderr, `qemu-img ${args.join(' ')}`).toBe('');
    }
  });

  it("-p prints qemu-img's percentage lines on stdout, and what follows them starts on a line of its own", () => {
    const base = join(tmp.path, 'lb.qcow2');
    const top = join(tmp.path, 'lt.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '8M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    spawnSync('qemu-io', ['-c', 'write -P 7 0 1M', top]);
    const r = run('img', ['commit', '-p', top]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r( {4}\(\d+\.\d\d\/100%\)\r)* {4}\(100\.00\/100%\)\r\nImage committed\.\n$/);
    expect(r.stderr).toBe('');
    // A compare that stops at a difference leaves its bar short of 100 %: the bar's line is ended all the same.
    const other = join(tmp.path, 'lo.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', other, '8M']);
    spawnSync('qemu-io', ['-c', 'write -P 7 0 1M', '-c', 'write -P 9 6M 4k', other]);
    const c = run('img', ['compare', '-p', top, other]);
    expect(c.stdout).toMatch(/^( {4}\(\d+\.\d\d\/100%\)\r)+\nContent mismatch at offset 6291456!\n$/);
    expect(c.status).toBe(1);
    expect(c.stderr).toBe('');
    // As qemu-img's: the same lines, the same place (the percentages follow each tool's own steps).
    const q = qemuImg(['compare', '-p', top, other], { allowFail: true });
    expect(q.stdout).toMatch(/^( {4}\(\d+\.\d\d\/100%\)\r)+Content mismatch at offset 6291456!\n/);
  });
});
