/**
 * Regressions from the interoperability campaign (tools/interop): valid
 * options qemu-img accepts, handled as qemu-img handles them.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuIo, tempDir, withStorage } from '@img/testkit';
import { createQcow2 } from './create.js';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';
import './driver.js';

describeQemu('qcow2 options from the interop campaign', () => {
  let dir: string;
  let cleanup: () => void;
  beforeEach(() => ({ path: dir, cleanup } = tempDir('img-interop-opts-')));
  afterEach(() => cleanup());

  it('creates a missing external data file, as qemu-img create does, and empties an existing one as qemu-img does', async () => {
    const image = join(dir, 'd.qcow2');
    const disk = await createQcow2(await FileStorage.create(image), { size: 3 << 20, dataFile: 'data.bin', resolver: fileResolver });
    await disk.write(70_000, new Uint8Array(5000).fill(0x4d));
    await disk.close();
    expect(existsSync(join(dir, 'data.bin'))).toBe(true);
    // qemu-img resolves a data file name against its working directory (img: against the image's directory).
    expect(qemuCheck(image, 'qcow2', dir).status).toBe(0);
    qemuImg(['convert', '-O', 'raw', image, join(dir, 'out.raw')], { cwd: dir });
    const out = readFileSync(join(dir, 'out.raw'));
    expect(out.length).toBe(3 << 20);
    expect(out.subarray(70_000, 75_000).every((b) => b === 0x4d)).toBe(true);
    expect(out[69_999]).toBe(0);

    // An existing data file is emptied, as qemu-img create empties it (it truncates the file it names).
    const raw = join(dir, 'disk.raw');
    writeFileSync(raw, new Uint8Array(1 << 20).fill(0x21));
    const wrap = join(dir, 'w.qcow2');
    const w = await createQcow2(await FileStorage.create(wrap), { size: 1 << 20, dataFile: 'disk.raw', dataFileRaw: true, resolver: fileResolver });
    await w.close();
    expect(readFileSync(raw)[1000]).toBe(0);
    expect(qemuImg(['check', wrap], { cwd: dir }).status).toBe(0);
  });

  it('counts an extended L2 entry with a cluster offset and no subcluster in use as a use of its cluster (qemu: unallocated-alloc)', async () => {
    // preallocation=metadata gives every entry a host cluster with an empty bitmap; a discard leaves one too.
    const image = join(dir, 'x.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k,preallocation=metadata', image, '1M']);
    qemuIo(image, 'qcow2', ['write -P 1 0 64k', 'discard 0 32k', 'write -P 2 131072 4k', 'discard 131072 4k']);
    const q = qemuCheck(image, 'qcow2');
    expect(q.status).toBe(0);
    const result = await withStorage(FileStorage.open(image), (s) => checkQcow2(s));
    expect({ corruptions: result.corruptions, leaks: result.leaks, allocated: result.allocatedClusters }).toEqual({ corruptions: 0, leaks: 0, allocated: q.result!['allocated-clusters'] });

    // A write into such a cluster uses the cluster the entry names: nothing leaks, nothing is shared.
    const disk = await openQcow2(await FileStorage.open(image, { readOnly: false }), { readOnly: false });
    await disk.write(200_000, new Uint8Array(3000).fill(0x6b));
    await disk.close();
    expect(qemuCheck(image, 'qcow2').status).toBe(0);
    expect(qemuIo(image, 'qcow2', ['read -P 0x6b 200000 3000', 'read -P 2 131072 4k', 'read -P 0 204000 60000'])).not.toMatch(/fail/i);
  });

  it('keeps the host offset of an unallocated subcluster past the end of a shorter backing file, as qemu-img map does', async () => {
    const base = join(dir, 'base.raw');
    const top = join(dir, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'raw', base, String(1 << 20)]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', base, '-F', 'raw', top, String((1 << 20) + 65536)]);
    // Allocates the cluster past the backing's end through one subcluster; the others stay unallocated.
    qemuIo(top, 'qcow2', ['write -P 7 1048576 2048']);
    const qemu = (JSON.parse(qemuImg(['map', '--output=json', top]).stdout) as { start: number; offset?: number }[]).find((e) => e.start === 1048576 + 2048);
    expect(qemu?.offset).toBeGreaterThan(0);
    const disk = await openQcow2(await FileStorage.open(top), { resolver: fileResolver });
    const ours = [];
    for await (const e of disk.extents({ hostOffsets: true })) ours.push(e);
    await disk.close();
    expect(ours.find((e) => e.offset === 1048576 + 2048)).toMatchObject({ kind: 'hole', depth: 0, hostOffset: qemu!.offset });
  });
});
