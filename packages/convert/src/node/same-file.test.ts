// The same-file guard, tried as a user would: every way of naming an input
// as an output is refused with ERR_IMG_SAME_FILE, and the input is left
// byte-for-byte as it was (nothing written, nothing truncated).
import { createHash } from 'node:crypto';
import { linkSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeEach, expect, it } from 'vitest';
import { ImageError } from '@img/block';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { convertFile } from '../node.js';
import { run } from '../test/cli.js';

const tmp = tempDir('img-same-file-');
afterAll(() => tmp.cleanup());
const at = (name: string) => join(tmp.path, name);

function digest(name: string): string {
  return createHash('sha256')
    .update(readFileSync(at(name)))
    .digest('hex');
}

function snapshotFiles(names: string[]): Record<string, { sha: string; mtime: number }> {
  return Object.fromEntries(names.map((n) => [n, { sha: digest(n), mtime: statSync(at(n)).mtimeMs }]));
}

let before: Record<string, { sha: string; mtime: number }>;
const watched = ['base.qcow2', 'overlay.qcow2', 'parent.vhd', 'child.vhd', 'disk.raw'];

describeQemu('same-file guard', () => {
  beforeEach(() => {
    spawnSync('sh', ['-c', 'rm -rf ./*'], { cwd: tmp.path });
    qemuImg(['create', '-f', 'qcow2', at('base.qcow2'), '16M']);
    qemuIo(at('base.qcow2'), 'qcow2', ['write -P 0x5a 0 1M']);
    qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('overlay.qcow2')]);
    qemuIo(at('overlay.qcow2'), 'qcow2', ['write -P 0x33 1M 64k']);
    qemuImg(['create', '-f', 'vpc', at('parent.vhd'), '8M']);
    qemuIo(at('parent.vhd'), 'vpc', ['write -P 0x11 0 512k']);
    expect(run('img', ['create', '-f', 'vhd', '-b', 'parent.vhd', 'child.vhd'], { cwd: tmp.path }).status).toBe(0);
    qemuImg(['convert', '-O', 'raw', at('base.qcow2'), at('disk.raw')]);
    symlinkSync('base.qcow2', at('sym.qcow2'));
    linkSync(at('base.qcow2'), at('hard.qcow2'));
    symlinkSync('disk.raw', at('sym.raw'));
    before = snapshotFiles(watched);
  });

  const refusals: Array<[string, 'img' | 'img-convert', string[]]> = [
    ['the input as its own output', 'img-convert', ['qcow2', 'raw', 'base.qcow2', 'base.qcow2']],
    ['the input through a symlink', 'img-convert', ['qcow2', 'raw', 'base.qcow2', 'sym.qcow2']],
    ['the input through a hard link', 'img-convert', ['qcow2', 'qcow2', 'base.qcow2', 'hard.qcow2']],
    ['the input through ./ and ../', 'img-convert', ['raw', 'raw', 'disk.raw', `../${tmp.path.split('/').pop()}/./disk.raw`]],
    ['a raw input through a symlink', 'img-convert', ['raw', 'qcow2', 'sym.raw', 'disk.raw']],
    ["the input's backing file", 'img-convert', ['qcow2', 'raw', 'overlay.qcow2', 'base.qcow2']],
    ["the input's backing file through a link", 'img-convert', ['qcow2', 'qcow2', 'overlay.qcow2', 'hard.qcow2']],
    ["a VHD's parent", 'img-convert', ['vhd', 'raw', 'child.vhd', 'parent.vhd']],
    ['the -B backing file', 'img-convert', ['raw', 'qcow2', 'disk.raw', 'base.qcow2', '-B', 'base.qcow2', '-F', 'qcow2']],
    ["the -B backing file's own backing file", 'img-convert', ['raw', 'qcow2', 'disk.raw', 'hard.qcow2', '-B', 'overlay.qcow2', '-F', 'qcow2']],
    ['img convert onto its input', 'img', ['convert', 'qcow2', 'raw', 'overlay.qcow2', 'overlay.qcow2']],
    ['img create over its own backing file', 'img', ['create', '-f', 'qcow2', '-b', 'sym.qcow2', '-F', 'qcow2', 'base.qcow2']],
    ['img create over a file of its backing chain', 'img', ['create', '-f', 'qcow2', '-b', 'overlay.qcow2', '-F', 'qcow2', 'hard.qcow2']],
    ['img rebase onto itself', 'img', ['rebase', '-b', 'hard.qcow2', '-F', 'qcow2', 'base.qcow2']],
    ['img rebase -u onto itself', 'img', ['rebase', '-u', '-b', 'sym.qcow2', '-F', 'qcow2', 'base.qcow2']],
    ['img rebase onto a chain holding the image', 'img', ['rebase', '-b', 'overlay.qcow2', '-F', 'qcow2', 'hard.qcow2']],
  ];

  for (const [what, cmd, args] of refusals) {
    it(`refuses ${what}, writing nothing`, () => {
      const r = run(cmd, args, { cwd: tmp.path });
      expect(r.status, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/ERR_IMG_SAME_FILE: .*refusing to write/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(snapshotFiles(watched)).toEqual(before);
    });
  }

  it('refuses an image whose backing file is a link to itself for every command that reads the chain and writes', () => {
    // qemu-img rebase -u writes the name without looking: the image now names itself through a hard link.
    qemuImg(['rebase', '-u', '-b', 'hard.qcow2', '-F', 'qcow2', at('base.qcow2')]);
    const self = snapshotFiles(['base.qcow2']);
    for (const args of [
      ['resize', 'base.qcow2', '32M'],
      ['commit', 'base.qcow2'],
    ]) {
      const r = run('img', args, { cwd: tmp.path });
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/ERR_IMG_(SAME_FILE|CHAIN)/);
      expect(snapshotFiles(['base.qcow2'])).toEqual(self);
    }
  });

  it('refuses an output on standard output that is the input, and an output that is standard input', () => {
    const bin = (name: string) => new URL(`../../dist/bin/${name}.js`, import.meta.url).pathname;
    const out = spawnSync('sh', ['-c', `"${process.execPath}" "${bin('img-convert')}" qcow2 raw base.qcow2 - >> base.qcow2`], { cwd: tmp.path, encoding: 'utf8' });
    expect(out.status).toBe(1);
    expect(out.stderr).toMatch(/ERR_IMG_SAME_FILE: standard output/);
    const inp = spawnSync('sh', ['-c', `"${process.execPath}" "${bin('img-convert')}" raw qcow2 - disk.raw < sym.raw`], { cwd: tmp.path, encoding: 'utf8' });
    expect(inp.status).toBe(1);
    expect(inp.stderr).toMatch(/ERR_IMG_SAME_FILE/);
    expect(snapshotFiles(watched)).toEqual(before);
  });

  it('is part of the API: convertFile refuses with ERR_IMG_SAME_FILE', async () => {
    const err = await convertFile({ srcFormat: 'qcow2', dstFormat: 'raw', input: at('overlay.qcow2'), output: at('hard.qcow2') }).catch((e: unknown) => e);
    expect(ImageError.isInstance(err)).toBe(true);
    expect((err as ImageError).code).toBe('ERR_IMG_SAME_FILE');
    expect((err as ImageError).data.file).toBe(at('hard.qcow2'));
    expect(snapshotFiles(watched)).toEqual(before);
  });

  it('still converts into a new file, and over an unrelated existing one', () => {
    expect(run('img-convert', ['qcow2', 'raw', 'overlay.qcow2', 'new.raw'], { cwd: tmp.path }).status).toBe(0);
    expect(run('img-convert', ['qcow2', 'raw', 'overlay.qcow2', 'new.raw'], { cwd: tmp.path }).status).toBe(0);
    expect(qemuImg(['compare', at('overlay.qcow2'), at('new.raw')]).status).toBe(0);
  });
});
