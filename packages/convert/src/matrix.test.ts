// The full conversion matrix through the built img-convert, judged by qemu-img.
import { writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuInfo, qemuIo, tempDir, testImagesDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-matrix-');
afterAll(() => tmp.cleanup());

const qemuName = (fmt: string) => (fmt === 'vhd' ? 'vpc' : fmt);
const ext = (fmt: string) => (fmt === 'raw' ? 'img' : fmt);

const sources: Array<{ file: string; format: string }> = [
  { file: 'raw/demo.img', format: 'raw' },
  { file: 'raw/odd-size.img', format: 'raw' },
  { file: 'qcow2/v3-64k.qcow2', format: 'qcow2' },
  { file: 'qcow2/chain-top.qcow2', format: 'qcow2' },
  { file: 'qcow2/compressed-zstd-64k.qcow2', format: 'qcow2' },
  { file: 'qcow2/extended-l2-overlay.qcow2', format: 'qcow2' },
  { file: 'vhd/dynamic-default.vhd', format: 'vhd' },
  { file: 'vhd/fixed-default.vhd', format: 'vhd' },
];

describeQemu('img-convert matrix: raw/qcow2/vhd into raw/qcow2/vhd', () => {
  for (const src of sources) {
    for (const dst of ['raw', 'qcow2', 'vhd']) {
      it(`${src.file} -> ${dst}`, () => {
        const input = join(testImagesDir, src.file);
        const output = join(tmp.path, `${src.file.replace(/[/.]/g, '_')}.${ext(dst)}`);
        const r = run('img-convert', [src.format, dst, input, output]);
        expect(r.status, r.stderr).toBe(0);
        // VHD sizes are whole sectors and qemu may round; compare content over the source's size.
        expect(qemuCompare(input, output, qemuName(src.format), qemuName(dst))).toBe(true);
        if (dst === 'qcow2') {
          const check = qemuCheck(output, 'qcow2');
          expect(check.status, check.stderr).toBe(0);
        }
        expect(qemuInfo(output, qemuName(dst))['virtual-size']).toBe(qemuInfo(input, qemuName(src.format))['virtual-size']);
      });
    }
  }
});

describeQemu('img-convert options', () => {
  const textLike = join(tmp.path, 'text.img');
  function makeTextLike(): void {
    // 4 MiB of compressible, text-like data with a hole in the middle
    const words = ['alpha', 'beta', 'gamma', 'delta', 'qcow2', 'cluster', 'refcount', 'image', '\n'];
    let s = '';
    let i = 0;
    while (s.length < 2 << 20) s += words[(i = (i * 7 + 3) % words.length)]! + ' ';
    const buf = Buffer.alloc(6 << 20);
    buf.write(s.slice(0, 2 << 20), 0, 'latin1');
    buf.write(s.slice(0, 1 << 20), 5 << 20, 'latin1');
    writeFileSync(textLike, buf);
  }

  for (const type of ['zlib', 'zstd']) {
    it(`-c compresses (${type}) and qemu reads the result`, () => {
      makeTextLike();
      const out = join(tmp.path, `c-${type}.qcow2`);
      const r = run('img-convert', ['-c', ...(type === 'zstd' ? ['-o', 'compression_type=zstd'] : []), 'raw', 'qcow2', textLike, out]);
      expect(r.status, r.stderr).toBe(0);
      expect(qemuCompare(textLike, out, 'raw', 'qcow2')).toBe(true);
      const check = qemuCheck(out, 'qcow2');
      expect(check.status).toBe(0);
      expect(Number(check.result?.['compressed-clusters'])).toBeGreaterThan(40);
      expect(statSync(out).size).toBeLessThan(1 << 20);
      expect(JSON.stringify(qemuInfo(out, 'qcow2'))).toContain(`"compression-type": "${type}"`.replace(': ', ':'));
    });
  }

  it('-c on a format that cannot compress is a clear error', () => {
    makeTextLike();
    const r = run('img-convert', ['-c', 'raw', 'vhd', textLike, join(tmp.path, 'c.vhd')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/ERR_IMG_UNSUPPORTED: vhd: this format cannot store compressed data/);
  });

  it('-B makes an overlay holding only what differs from the backing file', () => {
    const base = join(tmp.path, 'b-base.qcow2');
    const full = join(tmp.path, 'b-full.img');
    qemuImg(['create', '-f', 'qcow2', base, '8M']);
    qemuIo(base, 'qcow2', ['write -P 0x11 0 4M']);
    qemuImg(['convert', '-O', 'raw', base, full]);
    // the new content differs in 64 KiB at 1 MiB and zeroes 64 KiB at 2 MiB
    qemuIo(full, 'raw', ['write -P 0x22 1M 64k', 'write -z 2M 64k', 'write -P 0x33 6M 64k']);
    const out = join(tmp.path, 'b-overlay.qcow2');
    const r = run('img-convert', ['-B', 'b-base.qcow2', '-F', 'qcow2', 'raw', 'qcow2', full, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCompare(full, out, 'raw', 'qcow2')).toBe(true);
    const info = qemuInfo(out, 'qcow2');
    expect(info['backing-filename']).toBe('b-base.qcow2');
    const map = JSON.parse(qemuImg(['map', '--output=json', out]).stdout) as Array<{ start: number; length: number; depth: number; data: boolean; present: boolean }>;
    const top = map.filter((m) => m.depth === 0 && m.present);
    expect(top.map((m) => [m.start, m.length])).toEqual([
      [1 << 20, 65536],
      [2 << 20, 65536],
      [6 << 20, 65536],
    ]);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
  });

  it('-l converts an internal snapshot', () => {
    const src = join(testImagesDir, 'qcow2', 'snapshots.qcow2');
    const info = qemuInfo(src, 'qcow2') as { snapshots: Array<{ id: string; name: string }> };
    const snap = info.snapshots[0]!;
    const ours = join(tmp.path, 'snap-ours.img');
    const theirs = join(tmp.path, 'snap-qemu.img');
    const r = run('img-convert', ['-l', snap.name, 'qcow2', 'raw', src, ours]);
    expect(r.status, r.stderr).toBe(0);
    qemuImg(['convert', '-l', `snapshot.name=${snap.name}`, '-O', 'raw', src, theirs]);
    expect(qemuCompare(ours, theirs, 'raw', 'raw')).toBe(true);
    expect(run('img-convert', ['-l', 'nosuch', 'qcow2', 'raw', src, join(tmp.path, 'x.img')]).status).toBe(1);
  });

  it('-S 0 writes everything; the default leaves zeros sparse', () => {
    const input = join(testImagesDir, 'raw', 'demo.img');
    const dense = join(tmp.path, 'dense.qcow2');
    const sparse = join(tmp.path, 'sparse.qcow2');
    expect(run('img-convert', ['-S', '0', 'raw', 'qcow2', input, dense]).status).toBe(0);
    expect(run('img-convert', ['raw', 'qcow2', input, sparse]).status).toBe(0);
    expect(statSync(dense).size).toBeGreaterThan(8 << 20);
    expect(statSync(sparse).size).toBeLessThan(3 << 20);
    expect(qemuCompare(dense, sparse)).toBe(true);
  });

  const combos = [
    'cluster_size=512,compat=0.10',
    'cluster_size=512,refcount_bits=1',
    'cluster_size=4k,refcount_bits=2,lazy_refcounts=on',
    'cluster_size=64k,refcount_bits=4,extended_l2=on',
    'cluster_size=2M,refcount_bits=64,lazy_refcounts=off,compat=1.1',
    'cluster_size=16k,refcount_bits=32,extended_l2=on,lazy_refcounts=on',
    'compat=0.10,refcount_bits=16',
  ];
  for (const combo of combos) {
    for (const compress of [false, true]) {
      it(`raw -> qcow2 -o ${combo}${compress ? ' -c' : ''}: qemu-img check clean, compare identical`, () => {
        const input = join(testImagesDir, 'raw', 'demo.img');
        const out = join(tmp.path, `combo-${combos.indexOf(combo)}-${compress}.qcow2`);
        const r = run('img-convert', [...(compress ? ['-c'] : []), '-o', combo, 'raw', 'qcow2', input, out]);
        expect(r.status, r.stderr).toBe(0);
        const check = qemuCheck(out, 'qcow2');
        expect(check.status, check.stderr).toBe(0);
        expect(qemuCompare(input, out, 'raw', 'qcow2')).toBe(true);
        const info = qemuInfo(out, 'qcow2') as { 'cluster-size': number; 'format-specific': { data: Record<string, unknown> } };
        for (const kv of combo.split(',')) {
          const [k, v] = kv.split('=') as [string, string];
          const data = info['format-specific'].data;
          if (k === 'refcount_bits') expect(data['refcount-bits']).toBe(Number(v));
          if (k === 'compat') expect(data.compat).toBe(v);
          if (k === 'lazy_refcounts') expect(data['lazy-refcounts']).toBe(v === 'on');
          if (k === 'extended_l2') expect(data['extended-l2']).toBe(v === 'on');
        }
      });
    }
  }

  it('-o passes create options and -o help lists them', () => {
    const input = join(testImagesDir, 'raw', 'demo.img');
    const out = join(tmp.path, 'opts.qcow2');
    const r = run('img-convert', ['-o', 'cluster_size=4k,refcount_bits=8,lazy_refcounts=on,compat=1.1', 'raw', 'qcow2', input, out]);
    expect(r.status, r.stderr).toBe(0);
    const info = qemuInfo(out, 'qcow2') as { 'cluster-size': number; 'format-specific': { data: Record<string, unknown> } };
    expect(info['cluster-size']).toBe(4096);
    expect(info['format-specific'].data['refcount-bits']).toBe(8);
    expect(info['format-specific'].data['lazy-refcounts']).toBe(true);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    const help = run('img-convert', ['-o', 'help', 'raw', 'qcow2', input, out]);
    expect(help.stdout).toMatch(/cluster_size/);
    const vhd = join(tmp.path, 'opts.vhd');
    expect(run('img-convert', ['-o', 'subformat=fixed', 'raw', 'vhd', input, vhd]).status).toBe(0);
    expect(JSON.stringify(qemuInfo(vhd, 'vpc'))).toMatch(/"actual-size"/);
    expect(statSync(vhd).size).toBe((8 << 20) + 512);
  });
});
