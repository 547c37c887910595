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
