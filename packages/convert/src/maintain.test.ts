// img commit, rebase, snapshot and measure against qemu-img.
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { countReads, describeQemu, qemuCheck, qemuCompare, qemuImg, qemuInfo, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';
import { openImageFile } from './node.js';
import { rebaseDisk } from './maintain.js';

const tmp = tempDir('img-maintain-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

function chain(prefix: string, baseFmt = 'qcow2'): { base: string; top: string; flat: string } {
  const base = p(`${prefix}-base.${baseFmt === 'raw' ? 'img' : baseFmt}`);
  const top = p(`${prefix}-top.qcow2`);
  const flat = p(`${prefix}-flat.img`);
  qemuImg(['create', '-f', baseFmt, base, '4M']);
  qemuIo(base, baseFmt, ['write -P 0x11 0 2M', 'write -P 0x12 3M 512k']);
  qemuImg(['create', '-f', 'qcow2', '-b', `${prefix}-base.${baseFmt === 'raw' ? 'img' : baseFmt}`, '-F', baseFmt, top, '6M']);
  qemuIo(top, 'qcow2', ['write -P 0x21 64k 64k', 'write -z 1M 128k', 'write -P 0x22 5M 4k', 'write -P 0x23 100 3000']);
  qemuImg(['convert', '-O', 'raw', top, flat]);
  return { base, top, flat };
}

describeQemu('img commit', () => {
  for (const baseFmt of ['qcow2', 'raw']) {
    it(`pushes an overlay's data into a ${baseFmt} backing file (growing it) and empties the overlay`, () => {
      const { base, top, flat } = chain(`commit-${baseFmt}`, baseFmt);
      const r = run('img', ['commit', top]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/Image committed/);
      expect(qemuInfo(base, baseFmt)['virtual-size']).toBe(6 << 20);
      expect(qemuCompare(base, flat, baseFmt, 'raw')).toBe(true);
      expect(qemuCompare(top, flat, 'qcow2', 'raw')).toBe(true);
      if (baseFmt === 'qcow2') expect(qemuCheck(base, 'qcow2').status).toBe(0);
      expect(qemuCheck(top, 'qcow2').status).toBe(0);
      const map = JSON.parse(qemuImg(['map', '--output=json', top]).stdout) as Array<{ depth: number; present: boolean }>;
      expect(map.filter((m) => m.depth === 0 && m.present)).toEqual([]);
    });
  }

  it('-d keeps the overlay data; a standalone image is an error', () => {
    const { base, top, flat } = chain('commit-d');
    expect(run('img', ['commit', '-d', top]).status).toBe(0);
    expect(qemuCompare(base, flat, 'qcow2', 'raw')).toBe(true);
    const map = JSON.parse(qemuImg(['map', '--output=json', top]).stdout) as Array<{ depth: number; data: boolean }>;
    expect(map.some((m) => m.depth === 0 && m.data)).toBe(true);
    const r = run('img', ['commit', base]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no backing file/);
  });
});

describeQemu('img rebase', () => {
  it('safe rebase onto another base keeps the guest view', () => {
    const { top, flat } = chain('rebase-safe');
    const other = p('rebase-safe-other.qcow2');
    qemuImg(['create', '-f', 'qcow2', other, '4M']);
    qemuIo(other, 'qcow2', ['write -P 0x11 0 1M', 'write -P 0x55 2M 1M']);
    const r = run('img', ['rebase', '-b', 'rebase-safe-other.qcow2', '-F', 'qcow2', top]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuInfo(top, 'qcow2')['backing-filename']).toBe('rebase-safe-other.qcow2');
    expect(qemuCompare(top, flat, 'qcow2', 'raw')).toBe(true);
    expect(qemuCheck(top, 'qcow2').status).toBe(0);
  });

  it('safe rebase onto a base that differs in scattered clusters allocates in the top what qemu-img rebase allocates', () => {
    // 8 MiB of data in the old base; the new one is a copy with a few clusters changed, one byte at a cluster's edge,
    // one byte in the middle of a MiB, and a run of three clusters; the top holds some clusters of its own.
    const old = p('rebase-scatter-old.qcow2');
    const next = p('rebase-scatter-new.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', old, '12M']);
    qemuIo(old, 'qcow2', ['write -P 0x31 0 8M']);
    copyFileSync(old, next);
    qemuIo(next, 'qcow2', ['write -P 0x32 65535 1', 'write -P 0x33 1572864 1', 'write -P 0x34 3M 192k', 'write -P 0x35 9M 64k']);
    const tops = ['img', 'qemu'].map((who) => {
      const top = p(`rebase-scatter-${who}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'rebase-scatter-old.qcow2', '-F', 'qcow2', top]);
      qemuIo(top, 'qcow2', ['write -P 0x41 3M 64k', 'write -P 0x42 7M 1M']);
      return top;
    });
    const flat = p('rebase-scatter-flat.img');
    qemuImg(['convert', '-O', 'raw', tops[0]!, flat]);
    const r = run('img', ['rebase', '-b', 'rebase-scatter-new.qcow2', '-F', 'qcow2', tops[0]!]);
    expect(r.status, r.stderr).toBe(0);
    qemuImg(['rebase', '-b', 'rebase-scatter-new.qcow2', '-F', 'qcow2', tops[1]!]);
    expect(qemuCompare(tops[0]!, flat, 'qcow2', 'raw')).toBe(true);
    expect(qemuCheck(tops[0]!, 'qcow2').status).toBe(0);
    const allocation = (top: string) => qemuImg(['map', '--output=json', top]).stdout.replace(/, "offset": \d+/g, '');
    expect(allocation(tops[0]!)).toBe(allocation(tops[1]!));
  });

  it('dropping the middle of a chain reads from the base only what the dropped layer holds, and places clusters as qemu-img does', async () => {
    // base (8 MiB of data) <- mid (1 MiB) <- top (its own 512 KiB); rebase top onto base.
    const make = (who: string) => {
      const base = p(`drop-${who}-base.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', base, '16M']);
      qemuIo(base, 'qcow2', ['write -P 0x51 0 8M']);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', `drop-${who}-base.qcow2`, '-F', 'qcow2', p(`drop-${who}-mid.qcow2`)]);
      qemuIo(p(`drop-${who}-mid.qcow2`), 'qcow2', ['write -P 0x52 2M 1M', 'write -z 6M 64k', 'write -P 0x53 12M 64k']);
      const top = p(`drop-${who}-top.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', `drop-${who}-mid.qcow2`, '-F', 'qcow2', top]);
      qemuIo(top, 'qcow2', ['write -P 0x54 2560k 512k']);
      return { base, top };
    };
    const ours = make('img');
    const theirs = make('qemu');
    const flat = p('drop-flat.img');
    qemuImg(['convert', '-O', 'raw', ours.top, flat]);
    const top = await openImageFile(ours.top, { format: 'qcow2', readOnly: false });
    const base = await openImageFile(ours.base, { format: 'qcow2', readOnly: true });
    const reads = countReads(base);
    try {
      const { bytesCopied } = await rebaseDisk(top, reads.disk, 'drop-img-base.qcow2', 'qcow2');
      // What mid holds under no data of top: the half of its 2M+1M run top does not cover, the zeroed 64 KiB, the 64 KiB at 12M.
      expect(bytesCopied).toBe(512 * 1024 + 64 * 1024 + 64 * 1024);
      // The base is read where mid decides (1 MiB, 64 KiB, 64 KiB less what top holds), not its 8 MiB of data.
      expect(reads.bytesRead()).toBeLessThanOrEqual(2 * 1024 * 1024);
    } finally {
      await base.close();
      await top.close();
    }
    qemuImg(['rebase', '-b', 'drop-qemu-base.qcow2', '-F', 'qcow2', theirs.top]);
    expect(qemuCompare(ours.top, flat, 'qcow2', 'raw')).toBe(true);
    expect(qemuCheck(ours.top, 'qcow2').status).toBe(0);
    const mapOf = (file: string) => qemuImg(['map', '--output=json', file]).stdout.replaceAll(/drop-(img|qemu)-/g, '');
    expect(mapOf(ours.top)).toBe(mapOf(theirs.top));
  });

  it('-b "" removes the backing file and keeps the content', () => {
    const { top, flat } = chain('rebase-none');
    expect(run('img', ['rebase', '-b', '', top]).status).toBe(0);
    expect(qemuInfo(top, 'qcow2')['backing-filename']).toBeUndefined();
    expect(qemuCompare(top, flat, 'qcow2', 'raw')).toBe(true);
    expect(qemuCheck(top, 'qcow2').status).toBe(0);
  });

  it('-u rewrites only the name', () => {
    const { top, base } = chain('rebase-u');
    copyFileSync(base, p('rebase-u-copy.qcow2'));
    expect(run('img', ['rebase', '-u', '-b', 'rebase-u-copy.qcow2', '-F', 'qcow2', top]).status).toBe(0);
    const info = qemuInfo(top, 'qcow2');
    expect(info['backing-filename']).toBe('rebase-u-copy.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    expect(qemuCheck(top, 'qcow2').status).toBe(0);
  });
});

describeQemu('img snapshot', () => {
  it('creates, lists, applies and deletes snapshots that qemu-img sees', () => {
    const img = p('snap.qcow2');
    const before = p('snap-before.img');
    qemuImg(['create', '-f', 'qcow2', img, '2M']);
    qemuIo(img, 'qcow2', ['write -P 0x31 0 1M']);
    qemuImg(['convert', '-O', 'raw', img, before]);
    expect(run('img', ['snapshot', '-c', 'first', img]).status).toBe(0);
    qemuIo(img, 'qcow2', ['write -P 0x32 512k 1M']);
    const list = qemuImg(['snapshot', '-l', img]).stdout;
    expect(list).toMatch(/first/);
    const ours = run('img', ['snapshot', '-l', '--output=json', img]);
    expect((JSON.parse(ours.stdout) as Array<{ name: string }>).map((s) => s.name)).toEqual(['first']);
    qemuImg(['snapshot', '-c', 'second', img]);
    expect(run('img', ['snapshot', '-l', img]).stdout).toMatch(/second/);
    expect(run('img', ['snapshot', '-a', 'first', img]).status).toBe(0);
    expect(qemuCompare(img, before, 'qcow2', 'raw')).toBe(true);
    expect(run('img', ['snapshot', '-d', 'first', img]).status).toBe(0);
    expect(qemuImg(['snapshot', '-l', img]).stdout).not.toMatch(/first/);
    expect(qemuCheck(img, 'qcow2').status).toBe(0);
    expect(run('img', ['snapshot', '-c', 'x', '-d', 'y', img]).status).toBe(1);
  });
});

describeQemu('img measure', () => {
  const cases: Array<[string[], string[]]> = [
    [
      ['-O', 'qcow2', '--size', '10G'],
      ['-O', 'qcow2', '--size', '10G'],
    ],
    [
      ['-O', 'qcow2', '-o', 'cluster_size=4k', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=4k', '--size', '1G'],
    ],
    [
      ['-O', 'qcow2', '-o', 'refcount_bits=64,extended_l2=on', '--size', '3G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=64,extended_l2=on', '--size', '3G'],
    ],
  ];
  for (const [ours, theirs] of cases) {
    it(`matches qemu-img measure ${theirs.join(' ')}`, () => {
      const a = JSON.parse(run('img', ['measure', '--output=json', ...ours]).stdout);
      const b = JSON.parse(qemuImg(['measure', '--output=json', ...theirs]).stdout);
      expect(a.required).toBe(b.required);
      expect(a['fully-allocated']).toBe(b['fully-allocated']);
    });
  }

  it('measures an existing image by its allocated data', () => {
    const { flat } = chain('measure');
    const a = JSON.parse(run('img', ['measure', '--output=json', '-O', 'qcow2', '-f', 'raw', flat]).stdout);
    const b = JSON.parse(qemuImg(['measure', '--output=json', '-O', 'qcow2', '-f', 'raw', flat]).stdout);
    expect(a['fully-allocated']).toBe(b['fully-allocated']);
    // qemu sees the raw file's holes; without SEEK_HOLE we may count more, never less.
    expect(a.required).toBeGreaterThanOrEqual(b.required);
  });
});

describeQemu('img amend', () => {
  it('switches compat and lazy refcounts as qemu-img amend does', () => {
    const { top } = chain('amend');
    const before = p('amend-before.img');
    qemuImg(['convert', '-O', 'raw', top, before]);
    expect(run('img', ['amend', '-o', 'lazy_refcounts=on', top]).status).toBe(0);
    expect((qemuInfo(top, 'qcow2') as { 'format-specific': { data: Record<string, unknown> } })['format-specific'].data['lazy-refcounts']).toBe(true);
    expect(run('img', ['amend', '-o', 'compat=0.10', top]).status).toBe(0);
    const info = qemuInfo(top, 'qcow2') as { 'format-specific': { data: Record<string, unknown> } };
    expect(info['format-specific'].data.compat).toBe('0.10');
    expect(qemuCheck(top, 'qcow2').status).toBe(0);
    expect(qemuCompare(top, before, 'qcow2', 'raw')).toBe(true);
    expect(run('img', ['amend', '-o', 'compat=1.1', top]).status).toBe(0);
    expect((qemuInfo(top, 'qcow2') as { 'format-specific': { data: Record<string, unknown> } })['format-specific'].data.compat).toBe('1.1');
    expect(qemuCompare(top, before, 'qcow2', 'raw')).toBe(true);
    const bad = run('img', ['amend', '-o', 'cluster_size=4k', top]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/Invalid parameter 'cluster_size'\nThis option is only supported for image creation/);
  });
});
