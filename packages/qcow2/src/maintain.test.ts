/**
 * What img rebase -u, commit and measure need: setBacking, makeEmpty,
 * backingWritable, measureQcow2 — judged by qemu-img.
 */
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { bytesEqual } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuInfo, qemuIo, seededBytes, tempDir } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';

describeQemu('maintenance operations', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-maint-'));
  });
  afterAll(() => cleanup());

  it('setBacking rewrites only the reference (rebase -u), keeping the other extensions', async () => {
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    qemuImg(['create', '-f', 'qcow2', base, '1M']);
    qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', '-o', 'cluster_size=4k', top, '1M']);
    qemuIo(top, 'qcow2', ['write -P 0x42 0 8k']);
    let disk = await openQcow2(await FileStorage.open(top, { readOnly: false }), { readOnly: false, resolver: fileResolver });
    await disk.setBacking('a-much-longer-name-for-the-same-base-image.qcow2', 'qcow2');
    await disk.close();
    let info = qemuInfo(top, 'qcow2');
    expect(info['backing-filename']).toBe('a-much-longer-name-for-the-same-base-image.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    copyFileSync(base, join(dir, 'a-much-longer-name-for-the-same-base-image.qcow2'));
    expect(qemuCheck(top).status).toBe(0);
    disk = await openQcow2(await FileStorage.open(top, { readOnly: false }), { readOnly: false, noBacking: true });
    await disk.setBacking(undefined);
    await disk.close();
    info = qemuInfo(top, 'qcow2');
    expect(info['backing-filename']).toBeUndefined();
    expect(qemuCheck(top).status).toBe(0);
    const again = await openQcow2(await FileStorage.open(top));
    expect((await again.read(0, 2))[1]).toBe(0x42);
    expect((await again.info()).backingFile).toBeUndefined();
    await again.close();
  });

  it('commit: backingWritable opens the backing file writable; makeEmpty leaves reads to it', async () => {
    const base = join(dir, 'cbase.qcow2');
    const top = join(dir, 'ctop.qcow2');
    const baseData = seededBytes(1 << 20, 1);
    const b = await createQcow2(await FileStorage.create(base), { size: 1 << 20, clusterSize: '4k' });
    await b.write(0, baseData);
    await b.close();
    const t = await createQcow2(await FileStorage.create(top), { size: 1 << 20, clusterSize: '16k', backingFile: 'cbase.qcow2', backingFormat: 'qcow2', resolver: fileResolver });
    const topData = seededBytes(100_000, 2);
    await t.write(300_000, topData);
    await t.writeZeroes(600_000, 50_000);
    const expected = await t.read(0, 1 << 20);
    await t.close();
    const disk = await openQcow2(await FileStorage.open(top, { readOnly: false }), { readOnly: false, resolver: fileResolver, backingWritable: true });
    const backing = disk.backing!;
    expect(backing.readOnly).toBe(false);
    for await (const e of disk.extents({ topOnly: true })) {
      if (e.kind === 'data') await backing.write(e.offset, await disk.read(e.offset, e.length));
      else if (e.kind === 'zero') await backing.writeZeroes(e.offset, e.length);
    }
    await disk.makeEmpty();
    const after = [];
    for await (const e of disk.extents({ topOnly: true })) after.push(e.kind);
    expect(after).toEqual(['hole']);
    expect(bytesEqual(await disk.read(0, 1 << 20), expected)).toBe(true);
    await disk.close();
    expect(qemuCheck(top).status).toBe(0);
    expect(qemuCheck(base).status).toBe(0);
    const out = join(dir, 'ctop.raw');
    qemuImg(['convert', '-O', 'raw', top, out]);
    expect(bytesEqual(new Uint8Array(readFileSync(out)), expected)).toBe(true);
  });
});

describeQemu('measureQcow2 agrees with qemu-img measure', () => {
  const optionSets: Array<[string[], Record<string, unknown>]> = [
    [[], {}],
    [['-o', 'cluster_size=4k'], { clusterSize: '4k' }],
    [['-o', 'cluster_size=512,refcount_bits=64'], { clusterSize: '512', refcountBits: '64' }],
    [['-o', 'extended_l2=on'], { extendedL2: 'on' }],
    [['-o', 'cluster_size=2M,refcount_bits=1'], { clusterSize: '2M', refcountBits: '1' }],
    [['-o', 'preallocation=full,cluster_size=4k'], { preallocation: 'full', clusterSize: '4k' }],
    // falloc counts every data cluster as full does; metadata only the metadata (img counted falloc as metadata).
    [['-o', 'preallocation=falloc'], { preallocation: 'falloc' }],
    [['-o', 'preallocation=falloc,cluster_size=512,refcount_bits=64'], { preallocation: 'falloc', clusterSize: '512', refcountBits: '64' }],
    [['-o', 'preallocation=metadata,cluster_size=2M'], { preallocation: 'metadata', clusterSize: '2M' }],
    // A backing file: every cluster of a source counts (it may share nothing with the new backing file); measure takes it with preallocation.
    [['-o', 'backing_file=base.qcow2,backing_fmt=qcow2'], { backingFile: 'base.qcow2', backingFormat: 'qcow2' }],
    [['-o', 'backing_file=base.qcow2,preallocation=falloc,cluster_size=16k'], { backingFile: 'base.qcow2', preallocation: 'falloc', clusterSize: '16k' }],
  ];
  const sourceSets = [optionSets[0]!, optionSets[1]!, optionSets[6]!, optionSets[9]!, optionSets[10]!];
  it('for sizes', async () => {
    const { measureQcow2 } = await import('./measure.js');
    for (const [args, options] of optionSets) {
      for (const size of [0, 1 << 20, 12345 * 1024, 2 ** 30, 100 * 2 ** 30]) {
        const q = JSON.parse(qemuImg(['measure', '-O', 'qcow2', ...args, '--size', String(size), '--output=json']).stdout) as Record<string, number>;
        const ours = await measureQcow2({ size, options });
        expect(ours, `${args.join(' ')} ${size}`).toEqual({ required: q.required, fullyAllocated: q['fully-allocated'] });
      }
    }
  });
  it('for source images (whole chains)', async () => {
    const { measureQcow2 } = await import('./measure.js');
    const { fixtureNames, fixturePath } = await import('../test/fixtures.js');
    // qemu asks the file system where a source's host file has holes and skips them; extents come from
    // qcow2 metadata alone. How sparse a checked-out fixture is depends on how it got onto the disk, so
    // both measure copies written in full (no holes), beside each other so backing names resolve.
    // Preallocated fixtures are left out: qemu's answer for them is about holes by construction.
    const dir = mkdtempSync(join(tmpdir(), 'qcow2-measure-'));
    const fixtureDir = dirname(fixturePath(fixtureNames()[0]!));
    for (const f of readdirSync(fixtureDir)) writeFileSync(join(dir, f), readFileSync(join(fixtureDir, f)));
    for (const name of fixtureNames().filter((n) => !n.startsWith('data-file') && !n.startsWith('prealloc'))) {
      const path = join(dir, basename(fixturePath(name)));
      for (const [args, options] of sourceSets) {
        const q = JSON.parse(qemuImg(['measure', '-O', 'qcow2', ...args, '--output=json', path]).stdout) as Record<string, number>;
        const source = await openQcow2(await FileStorage.open(path), { resolver: fileResolver });
        const ours = await measureQcow2({ size: source.size, source, options });
        await source.close();
        expect(ours, `${name} ${args.join(' ')}`).toEqual({ required: q.required, fullyAllocated: q['fully-allocated'] });
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
