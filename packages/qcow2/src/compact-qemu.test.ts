/**
 * sparsifyQcow2 and compactQcow2 on images qemu wrote (qemu-img create,
 * qemu-io, qemu-img snapshot/bitmap, convert -c), judged by qemu:
 * `qemu-img check` clean (no corruption, no leak), `qemu-img compare`
 * identical to a copy taken before, and `qemu-img map` showing released
 * clusters as zeros (v3) or holes (v2).
 */
import { copyFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuMap, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { compactQcow2 } from './compact.js';
import { sparsifyQcow2 } from './sparsify.js';

const tmp = tempDir('qcow2-compact-qemu-');
afterAll(() => tmp.cleanup());
const MIB = 1024 * 1024;

function io(file: string, commands: string[], format = 'qcow2'): void {
  for (let i = 0; i < commands.length; i += 128) {
    const args = ['-f', format];
    for (const c of commands.slice(i, i + 128)) args.push('-c', c);
    const r = spawnSync('qemu-io', [...args, file], { encoding: 'utf8', maxBuffer: 64 * MIB });
    expect(r.status, r.stderr).toBe(0);
  }
}

function clean(file: string): void {
  const r = qemuCheck(file, 'qcow2', tmp.path);
  expect(r.status, `qemu-img check ${file}: ${r.stderr}`).toBe(0);
  expect(r.result?.['corruptions'] ?? 0).toBe(0);
  expect(r.result?.['leaks'] ?? 0, 'leaks').toBe(0);
}

function same(a: string, b: string): void {
  const r = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', a, b], { allowFail: true, cwd: tmp.path });
  expect(r.status, `qemu-img compare: ${r.stdout}${r.stderr}`).toBe(0);
}

function snapshotsSame(a: string, b: string, names: string[]): void {
  for (const name of names) {
    const ra = join(tmp.path, `${name}-a.raw`);
    const rb = join(tmp.path, `${name}-b.raw`);
    qemuImg(['convert', '-O', 'raw', '-l', `snapshot.name=${name}`, a, ra], { cwd: tmp.path });
    qemuImg(['convert', '-O', 'raw', '-l', `snapshot.name=${name}`, b, rb], { cwd: tmp.path });
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', ra, rb], { allowFail: true }).status, `snapshot ${name}`).toBe(0);
  }
}

async function run(file: string, opts: { sparsify?: boolean } = {}) {
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    const sparsify = opts.sparsify === false ? undefined : await sparsifyQcow2(storage, { resolver: fileResolver });
    const compact = await compactQcow2(storage);
    return { sparsify, compact };
  } finally {
    await storage.close();
  }
}

function make(name: string, size: string, options: string[] = []): string {
  const file = join(tmp.path, name);
  qemuImg(['create', '-f', 'qcow2', ...options, file, size], { cwd: tmp.path });
  return file;
}

function keep(file: string): string {
  const before = `${file}.before`;
  copyFileSync(file, before);
  return before;
}

describeQemu('compactQcow2 and sparsifyQcow2 against qemu-img', () => {
  it('zeroed clusters are released and the file shrinks to what it holds (v3)', async () => {
    const file = make('v3.qcow2', '64M');
    io(file, ['write -P 0x11 0 16M', 'write -z 2M 4M', 'write -P 0 8M 2M', 'write -P 0x22 20M 1M']);
    const before = keep(file);
    const { sparsify, compact } = await run(file);
    expect(sparsify!.clustersReleased).toBe(32);
    expect(compact.sizeAfter).toBe(compact.allocatedBytes);
    expect(compact.sizeAfter).toBeLessThan(compact.sizeBefore);
    clean(file);
    same(before, file);
    const map = qemuMap(file, 'qcow2');
    const at8 = map.find((e) => e.start <= 8 * MIB && e.start + e.length > 8 * MIB)!;
    expect([at8.zero, at8.data]).toEqual([true, false]);
    expect(statSync(file).size).toBe(compact.sizeAfter);
  });

  it('v2 without a backing file: zero data becomes holes', async () => {
    const file = make('v2.qcow2', '32M', ['-o', 'compat=0.10']);
    io(file, ['write -P 0x33 0 8M', 'write -P 0 1M 2M']);
    const before = keep(file);
    const { sparsify, compact } = await run(file);
    expect(sparsify!.clustersReleased).toBe(32);
    expect(compact.sizeAfter).toBe(compact.allocatedBytes);
    clean(file);
    same(before, file);
  });

  it('a backing file: zeros over backing data become zero clusters, never holes (v3); v2 keeps them', async () => {
    for (const compat of ['1.1', '0.10']) {
      const base = make(`base-${compat}.qcow2`, '16M', ['-o', `compat=${compat}`]);
      io(base, ['write -P 0x44 0 8M']);
      const top = join(tmp.path, `top-${compat}.qcow2`);
      qemuImg(['create', '-f', 'qcow2', '-o', `compat=${compat}`, '-b', base, '-F', 'qcow2', top], { cwd: tmp.path });
      io(top, ['write -P 0 0 4M', 'write -P 0 8M 4M', 'write -P 0x55 12M 1M']);
      const before = keep(top);
      const { sparsify, compact } = await run(top);
      // v3: both zero runs go (as zero clusters); v2: only the one over the backing file's empty half.
      expect(sparsify!.clustersReleased).toBe(compat === '1.1' ? 128 : 64);
      expect(compact.sizeAfter).toBe(compact.allocatedBytes);
      clean(top);
      same(before, top);
    }
  });

  it('snapshots, a bitmap and compressed clusters: every structure moves and stays consistent', async () => {
    const src = make('c-src.qcow2', '64M');
    io(src, ['write -P 0x61 0 24M', 'write -P 0 4M 4M']);
    const file = join(tmp.path, 'c.qcow2');
    qemuImg(['convert', '-c', '-O', 'qcow2', src, file], { cwd: tmp.path });
    io(file, ['write -P 0x62 32M 8M']);
    qemuImg(['snapshot', '-c', 's1', file]);
    io(file, ['write -P 0x63 40M 8M', 'write -P 0x64 0 1M', 'write -z 32M 8M']);
    qemuImg(['bitmap', '--add', file, 'b0']);
    io(file, ['write -P 0x65 48M 4M', 'write -P 0 44M 4M']);
    qemuImg(['snapshot', '-c', 's2', file]);
    io(file, ['write -P 0x66 56M 2M', 'write -z 40M 4M']);
    const before = keep(file);
    const { compact } = await run(file);
    expect(compact.metadataClustersMoved).toBeGreaterThan(0);
    clean(file);
    same(before, file);
    snapshotsSame(before, file, ['s1', 's2']);
    expect(compact.sizeAfter).toBe(compact.allocatedBytes);
    const info = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as { 'format-specific': { data: { bitmaps?: unknown[] } } };
    expect(info['format-specific'].data.bitmaps).toHaveLength(1);
    // A second run has nothing to do.
    const again = await run(file, { sparsify: false });
    expect(again.compact.bytesMoved).toBe(0);
  });

  it('512-byte clusters: refcount blocks, the refcount table and L2 tables move too', async () => {
    const file = make('small.qcow2', '16M', ['-o', 'cluster_size=512']);
    // 12 MiB of data needs new refcount blocks and a larger refcount table (written past the data); then most is freed.
    io(file, ['write -P 0x81 0 12M', 'write -z -u 0 10M', 'write -P 0x82 11M 64k']);
    const before = keep(file);
    const { compact } = await run(file, { sparsify: false });
    expect(compact.metadataClustersMoved).toBeGreaterThan(20);
    expect(compact.sizeAfter).toBe(compact.allocatedBytes);
    clean(file);
    same(before, file);
  });

  it('an external data file: only metadata moves', async () => {
    const file = make('df.qcow2', '32M', ['-o', `data_file=${join(tmp.path, 'df.raw')}`]);
    io(file, ['write -P 0x71 0 4M', 'write -P 0x72 20M 1M']);
    const before = keep(file);
    const { sparsify, compact } = await run(file);
    expect(sparsify!.nothingToDo).toMatch(/external data file/);
    expect(compact.sizeAfter).toBeLessThanOrEqual(compact.sizeBefore);
    clean(file);
    same(before, file);
  });
});
