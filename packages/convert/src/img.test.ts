// `img` subcommands, run as a user would, compared field by field with qemu-img.
import { closeSync, copyFileSync, cpSync, existsSync, openSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, loadManifest, normalizeQemuMap, qemuCheck, qemuImg, qemuInfo, tempDir, testImagesDir, type QemuMapEntry } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-cli-');
afterAll(() => tmp.cleanup());

const qemuName = (fmt: string) => (fmt === 'vhd' ? 'vpc' : fmt);
const manifest = existsSync(join(testImagesDir, 'MANIFEST.json')) ? loadManifest() : { images: [] };
// Fixtures qemu itself cannot read the way we do, or that need a file outside the checkout.
const fixtures = manifest.images.filter((e) => e.format !== 'raw' || e.virtualSize > 0);

describe('img basics', () => {
  it('lists every command in --help', () => {
    const r = run('img', ['--help']);
    expect(r.status).toBe(0);
    for (const cmd of ['info', 'map', 'check', 'compare', 'create', 'resize', 'commit', 'rebase', 'snapshot', 'measure', 'amend', 'bitmap', 'inspect', 'convert']) expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
  });

  it('gives every command a --help with an example', () => {
    for (const cmd of ['info', 'map', 'check', 'compare', 'create', 'resize', 'commit', 'rebase', 'snapshot', 'measure', 'amend', 'bitmap', 'inspect', 'convert']) {
      const r = run('img', [cmd, '--help']);
      expect(r.status, cmd).toBe(0);
      expect(r.stdout, cmd).toMatch(/Usage: img/);
      expect(r.stdout, cmd).toMatch(/Example/);
    }
  });

  it('ends quietly when the reader closes the pipe (img map | head)', () => {
    const bin = new URL('../dist/bin/img.js', import.meta.url).pathname;
    const r = spawnSync('sh', ['-c', `"${process.execPath}" "${bin}" map --output=json ${join(testImagesDir, 'qcow2', 'v3-512.qcow2')} | head -c 10`], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stderr).not.toMatch(/EPIPE|Unhandled/);
  });

  it('rejects unknown commands, unknown options and missing arguments with one line and status 1', () => {
    expect(run('img', ['frobnicate']).status).toBe(1);
    const u = run('img', ['info', '--nope', 'x']);
    expect(u.status).toBe(1);
    expect(u.stderr.split('\n')[0]).toMatch(/^img info: Unknown option '--nope'/);
    const m = run('img', ['info']);
    expect(m.status).toBe(1);
    expect(m.stderr).toMatch(/^img info: expected <file>/);
  });

  it('img doctor takes no arguments or unknown options, as every command, and --help is its usage (CLI audit 2 #10)', () => {
    for (const [args, line] of [
      [['doctor', 'extra'], 'img doctor: takes no arguments (got "extra")'],
      [['doctor', '--bogus'], "img doctor: Unknown option '--bogus'"],
    ] as const) {
      const r = run('img', [...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`${line}\nimg doctor: try 'img doctor --help'\n`);
    }
    const help = run('img', ['doctor', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: img doctor\n[\s\S]*Example:\n {2}img doctor\n$/);
    expect(help.stdout).not.toMatch(/native helper:/);
    expect(run('img', ['doctor']).stdout).toMatch(/^img \d+\.\d+\.\d+\nnode: /);
  });

  it("--help's amend line names what amend takes, and its snapshot line -q and -U, as their own --help does", () => {
    const help = run('img', ['--help']).stdout;
    const amend = /^ {2}amend .*\n(?: {20,}.*\n)*/m.exec(help)![0];
    for (const key of ['compat', 'lazy_refcounts', 'refcount_bits', 'data_file', 'size']) expect(amend, key).toContain(key);
    // The keys are the ones amend -o help lists.
    const keys = [...run('img', ['amend', '-o', 'help']).stdout.matchAll(/^ {2}(\w+)=/gm)].map((m) => m[1]);
    expect(keys).toEqual(['compat', 'lazy_refcounts', 'refcount_bits', 'data_file', 'size']);
    const snapshot = /^ {2}snapshot .*$/m.exec(help)![0];
    expect(snapshot).toContain('[-q]');
    expect(snapshot).toContain('-l [-U]');
    expect(run('img', ['snapshot', '--help']).stdout).toMatch(/\[-q\].*-l \[-U\]/);
  });
});

describeQemu('img info/map --output=json agree with qemu-img on every fixture', () => {
  for (const entry of fixtures) {
    it(`${entry.file}`, () => {
      const path = join(testImagesDir, entry.file);
      const ours = JSON.parse(run('img', ['info', '--output=json', '-f', entry.format, path]).stdout) as Record<string, unknown>;
      // qemu 7.2 resolves data-file names against its working directory: run it beside the image.
      const theirs = qemuInfo(path, qemuName(entry.format), dirname(path));
      for (const key of ['virtual-size', 'cluster-size', 'backing-filename', 'backing-filename-format', 'dirty-flag']) {
        expect(ours[key], key).toEqual(theirs[key]);
      }
      expect(ours.format).toBe(qemuName(entry.format));
      const snaps = (s: unknown) => ((s as Array<Record<string, unknown>> | undefined) ?? []).map((x) => [x.id, x.name, x['vm-state-size'], x['date-sec'], x['vm-clock-nsec']]);
      expect(snaps(ours.snapshots)).toEqual(snaps(theirs.snapshots));
      if (entry.format === 'qcow2') {
        const a = (ours['format-specific'] as { data: Record<string, unknown> }).data;
        const b = (theirs['format-specific'] as { data: Record<string, unknown> }).data;
        for (const key of ['compat', 'compression-type', 'lazy-refcounts', 'refcount-bits', 'corrupt', 'extended-l2']) expect(a[key], key).toEqual(b[key]);
      }
      const map = JSON.parse(run('img', ['map', '--output=json', '-f', entry.format, path]).stdout) as QemuMapEntry[];
      const qmap = JSON.parse(qemuImg(['map', '--output=json', '-f', qemuName(entry.format), path], { cwd: dirname(path) }).stdout) as QemuMapEntry[];
      if (entry.format === 'raw') {
        // Without SEEK_HOLE our raw map is one data run; qemu sees holes.
        expect(map.reduce((n, m) => n + m.length, 0)).toBe(entry.virtualSize);
      } else {
        expect(normalizeQemuMap(map)).toEqual(normalizeQemuMap(qmap));
        // Host offsets of the top layer's data, merged where contiguous (qemu also splits on host-file holes).
        const withOffsets = (m: QemuMapEntry[]) => {
          const out: number[][] = [];
          for (const x of m.filter((e) => e.data && e.depth === 0)) {
            const last = out[out.length - 1];
            if (last && last[0]! + last[1]! === x.start && last[2]! + last[1]! === x.offset) last[1] = last[1]! + x.length;
            else out.push([x.start, x.length, x.offset!]);
          }
          return out;
        };
        expect(withOffsets(map)).toEqual(withOffsets(qmap));
      }
    });
  }
});

describeQemu('img check agrees with qemu-img check', () => {
  for (const entry of fixtures.filter((e) => e.format === 'qcow2' || e.format === 'vhd')) {
    it(`${entry.file}`, () => {
      const path = join(testImagesDir, entry.file);
      const ours = run('img', ['check', '--output=json', '-f', entry.format, path]);
      const theirs = qemuCheck(path, qemuName(entry.format), dirname(path));
      if (entry.format === 'qcow2') {
        expect(ours.status, ours.stderr).toBe(theirs.status);
        const o = JSON.parse(ours.stdout) as Record<string, unknown>;
        for (const key of ['corruptions', 'leaks', 'image-end-offset', 'allocated-clusters', 'total-clusters', 'compressed-clusters']) {
          expect(o[key] ?? 0, key).toEqual(theirs.result?.[key] ?? 0);
        }
      } else {
        // qemu cannot check VHDs; ours must call the fixtures clean.
        expect(ours.status, ours.stdout + ours.stderr).toBe(0);
      }
    });
  }
});

describeQemu('img compare, create, resize, info --backing-chain', () => {
  it('compare: 0 identical, 1 different with the offset, 2 on error', () => {
    const a = join(testImagesDir, 'raw', 'demo.img');
    const b = join(tmp.path, 'demo.qcow2');
    qemuImg(['convert', '-O', 'qcow2', a, b]);
    const same = run('img', ['compare', a, b]);
    expect(same.status).toBe(0);
    expect(same.stdout).toMatch(/Images are identical/);
    const c = join(tmp.path, 'demo2.qcow2');
    copyFileSync(b, c);
    qemuImg(['resize', c, '16M']);
    expect(run('img', ['compare', a, c]).status).toBe(0);
    expect(run('img', ['compare', '--strict', a, c]).status).toBe(1);
    const e = join(tmp.path, 'demo4.raw');
    cpSync(a, e);
    const fd = openSync(e, 'r+');
    writeSync(fd, Buffer.from([0x5a]), 0, 1, 0);
    closeSync(fd);
    const diff = run('img', ['compare', a, e]);
    expect(diff.status).toBe(1);
    expect(diff.stdout).toMatch(/Content mismatch at offset 0!/);
    expect(run('img', ['compare', a, join(tmp.path, 'nope')]).status).toBe(2);
  });

  it('create makes images qemu accepts, taking the size from a backing file', () => {
    const q = join(tmp.path, 'new.qcow2');
    expect(run('img', ['create', '-f', 'qcow2', '-o', 'cluster_size=4k', q, '10M']).status).toBe(0);
    expect(qemuInfo(q, 'qcow2')['virtual-size']).toBe(10 << 20);
    expect(qemuCheck(q, 'qcow2').status).toBe(0);
    const o = join(tmp.path, 'overlay.qcow2');
    const r = run('img', ['create', '-f', 'qcow2', '-b', basename(q), '-F', 'qcow2', o]);
    expect(r.status, r.stderr).toBe(0);
    const info = qemuInfo(o, 'qcow2');
    expect(info['virtual-size']).toBe(10 << 20);
    expect(info['backing-filename']).toBe('new.qcow2');
    const v = join(tmp.path, 'new.vhd');
    expect(run('img', ['create', '-f', 'vhd', '-o', 'subformat=fixed', v, '3000000']).status).toBe(0);
    expect(qemuInfo(v, 'vpc')['virtual-size']).toBe(3000320);
    const chain = run('img', ['info', '--backing-chain', '--output=json', o]);
    const layers = JSON.parse(chain.stdout) as Array<Record<string, unknown>>;
    expect(layers.map((l) => basename(String(l.filename)))).toEqual(['overlay.qcow2', 'new.qcow2']);
  });

  it('resize grows, and shrinks only with --shrink', () => {
    const q = join(tmp.path, 'r.qcow2');
    qemuImg(['create', '-f', 'qcow2', q, '1M']);
    expect(run('img', ['resize', q, '+1M']).status).toBe(0);
    expect(qemuInfo(q, 'qcow2')['virtual-size']).toBe(2 << 20);
    expect(run('img', ['resize', q, '1M']).status).toBe(1);
    expect(run('img', ['resize', '--shrink', q, '1M']).status).toBe(0);
    expect(qemuInfo(q, 'qcow2')['virtual-size']).toBe(1 << 20);
    expect(qemuCheck(q, 'qcow2').status).toBe(0);
  });
});
