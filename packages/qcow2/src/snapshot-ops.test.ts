import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryStorage, bytesEqual } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, seededBytes, tempDir, withStorage } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { dataFor } from '../test/write-model.js';
import { fixturePath } from '../test/fixtures.js';

async function clean(storage: MemoryStorage): Promise<void> {
  const c = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'c.qcow2' }));
  expect({ corruptions: c.corruptions, leaks: c.leaks }, c.messages.slice(0, 5).join('\n')).toEqual({ corruptions: 0, leaks: 0 });
}

describe('internal snapshots: create, apply, delete', () => {
  it('random writes, snapshots, reverts and deletes against models of every snapshot', async () => {
    type Op =
      | { op: 'write'; offset: number; length: number; seed: number }
      | { op: 'snap' }
      | { op: 'apply'; pick: number }
      | { op: 'delete'; pick: number }
      | { op: 'zero'; offset: number; length: number }
      | { op: 'compressed'; cluster: number; seed: number }
      | { op: 'discard'; offset: number; length: number };
    const size = 256 * 1024;
    const range = fc.record({ offset: fc.nat(size - 1), length: fc.integer({ min: 1, max: 20000 }) }).map((r) => ({ offset: r.offset, length: Math.min(r.length, size - r.offset) }));
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 4, arbitrary: fc.tuple(range, fc.nat()).map(([r, seed]) => ({ op: 'write' as const, ...r, seed })) },
      { weight: 1, arbitrary: range.map((r) => ({ op: 'zero' as const, ...r })) },
      { weight: 2, arbitrary: fc.constant({ op: 'snap' as const }) },
      { weight: 1, arbitrary: fc.nat().map((pick) => ({ op: 'apply' as const, pick })) },
      { weight: 1, arbitrary: fc.nat().map((pick) => ({ op: 'delete' as const, pick })) },
      { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.nat()).map(([cluster, seed]) => ({ op: 'compressed' as const, cluster, seed: seed * 3 })) },
      { weight: 1, arbitrary: range.map((r) => ({ op: 'discard' as const, ...r })) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 14 }), fc.constantFrom('4k', '512', '16k-ext'), async (ops, kind) => {
        const storage = new MemoryStorage({ name: 's.qcow2' });
        const options = kind === '16k-ext' ? { clusterSize: '16k', extendedL2: true } : { clusterSize: kind, refcountBits: kind === '512' ? 4 : 16 };
        const disk = await createQcow2(storage, { size, ...options });
        let model = new Uint8Array(size);
        const snaps = new Map<string, Uint8Array>();
        let n = 0;
        for (const o of ops) {
          if (o.op === 'write') {
            const d = dataFor(o.length, o.seed);
            await disk.write(o.offset, d);
            model.set(d, o.offset);
          } else if (o.op === 'zero') {
            await disk.writeZeroes(o.offset, o.length);
            model.fill(0, o.offset, o.offset + o.length);
          } else if (o.op === 'compressed') {
            const cs = disk.clusterSize;
            const c = o.cluster % Math.ceil(size / cs);
            const d = dataFor(Math.min(cs, size - c * cs), o.seed);
            await disk.writeCompressed(c * cs, d);
            model.set(d, c * cs);
          } else if (o.op === 'discard') {
            await disk.discard(o.offset, o.length);
            model.set(await disk.read(o.offset, o.length), o.offset);
          } else if (o.op === 'snap') {
            const info = await disk.createSnapshot(`snap-${n++}`);
            snaps.set(info.name, model.slice());
          } else if (snaps.size) {
            const names = [...snaps.keys()];
            const name = names[o.pick % names.length]!;
            if (o.op === 'apply') {
              await disk.applySnapshot(name);
              model = snaps.get(name)!.slice();
            } else {
              await disk.deleteSnapshot(name);
              snaps.delete(name);
            }
          }
        }
        expect(bytesEqual(await disk.read(0, size), model)).toBe(true);
        expect(disk.snapshots.map((s) => s.name)).toEqual([...snaps.keys()]);
        for (const [name, content] of snaps) {
          const view = await disk.openSnapshot(name);
          expect(bytesEqual(await view.read(0, view.size), content), name).toBe(true);
          await view.close();
        }
        await disk.close();
        await clean(storage);
      }),
      { seed: Number(process.env.IMG_SEED ?? 31337), numRuns: Number(process.env.IMG_RUNS ?? 30) },
    );
  });
});

describeQemu('snapshots and qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-snap-'));
  });
  afterAll(() => cleanup());

  it('qemu lists and exports the snapshots we take, and checks the image clean after apply and delete', async () => {
    const path = join(dir, 'ours.qcow2');
    const disk = await createQcow2(await FileStorage.create(path), { size: 512 * 1024, clusterSize: '4k' });
    const a = seededBytes(512 * 1024, 1);
    await disk.write(0, a);
    await disk.createSnapshot('first', { date: new Date(1_700_000_000_123) });
    await disk.write(100_000, seededBytes(50_000, 2));
    await disk.writeCompressed(256 * 1024, new Uint8Array(8192).fill(5));
    await disk.createSnapshot('second');
    await disk.discard(0, 64 * 1024);
    await disk.close();
    expect(qemuCheck(path).status).toBe(0);
    const list = qemuImg(['snapshot', '-l', path]).stdout;
    expect(list).toMatch(/first/);
    expect(list).toMatch(/second/);
    const info = JSON.parse(qemuImg(['info', '--output=json', path]).stdout) as { snapshots: Array<{ name: string; 'date-sec': number; 'date-nsec': number }> };
    expect(info.snapshots[0]).toMatchObject({ name: 'first', 'date-sec': 1_700_000_000, 'date-nsec': 123_000_000 });
    const out = join(dir, 'first.raw');
    qemuImg(['convert', '-O', 'raw', '-l', 'snapshot.name=first', path, out]);
    expect(bytesEqual(new Uint8Array(readFileSync(out)), a)).toBe(true);
    // Apply with us, check with qemu; delete with qemu, check with us.
    const again = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await again.applySnapshot('first');
    expect(bytesEqual(await again.read(0, again.size), a)).toBe(true);
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
    qemuImg(['snapshot', '-d', 'second', path]);
    expect((await withStorage(FileStorage.open(path), (s) => checkQcow2(s))).corruptions).toBe(0);
  });

  it('an image with every one of 20480 clusters mapped (many chunks of counted references): create, apply and delete leave qemu-img check clean and the data as it was', async () => {
    const path = join(dir, 'mapped.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096,preallocation=metadata', path, '80M']);
    const disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    const a = seededBytes(1 << 20, 3);
    // Data at both ends and in the middle, so that the snapshot's counts change in chunks far apart.
    for (const at of [0, 40 << 20, 79 << 20]) await disk.write(at, a);
    await disk.createSnapshot('s');
    await disk.write(40 << 20, seededBytes(1 << 20, 4));
    await disk.close();
    expect(qemuCheck(path).status).toBe(0);
    const again = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await again.applySnapshot('s');
    expect(bytesEqual(await again.read(40 << 20, 1 << 20), a)).toBe(true);
    await again.deleteSnapshot('s');
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
    const map = JSON.parse(qemuImg(['map', '--output=json', path]).stdout) as Array<{ data: boolean; length: number }>;
    expect(map.filter((e) => e.data).reduce((n, e) => n + e.length, 0)).toBe(80 << 20);
  });

  it('apply and delete on qemu-made snapshots leave an image qemu checks clean', async () => {
    const path = join(dir, 'theirs.qcow2');
    copyFileSync(fixturePath('snapshots.qcow2'), path);
    const s1 = join(dir, 's1.raw');
    qemuImg(['convert', '-O', 'raw', '-l', 'snapshot.name=s1', path, s1]);
    const disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await disk.applySnapshot('s1');
    expect(bytesEqual(await disk.read(0, disk.size), new Uint8Array(readFileSync(s1)))).toBe(true);
    await disk.write(0, new Uint8Array(10000).fill(1));
    await disk.deleteSnapshot('s2');
    await disk.close();
    const q = qemuCheck(path);
    expect(q.status, q.stderr).toBe(0);
    expect(qemuImg(['snapshot', '-l', path]).stdout).not.toMatch(/s2/);
  });
});

describe('snapshots and narrow refcounts', () => {
  it('a snapshot that would overflow a refcount is refused before anything changes (no corrupt bit, still writable)', async () => {
    const storage = new MemoryStorage({ name: 'n.qcow2' });
    const disk = await createQcow2(storage, { size: 1 << 20, clusterSize: 4096, refcountBits: 2 });
    // Three small compressed clusters share one host cluster: its refcount is 3, the most 2 bits hold.
    await disk.writeCompressed(0, new Uint8Array(3 * 4096).fill(9));
    await disk.write(65536, seededBytes(4096, 1));
    // Its L2 entry lands with a flush (or the snapshot's own settling): taken first, it is not the snapshot's change.
    await disk.flush();
    const before = storage.toBytes();
    await expect(disk.createSnapshot('s1')).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
    expect(bytesEqual(storage.toBytes(), before)).toBe(true);
    await disk.write(8192 * 4, seededBytes(4096, 2));
    await disk.close();
    await clean(storage);
    expect((await openQcow2(MemoryStorage.from(storage.toBytes()))).header.incompatibleFeatures).toBe(0n);
  });
});

describe('snapshot names', () => {
  it('up to 255 bytes (what qemu keeps; it cuts longer ones), any bytes and duplicates allowed; a longer name is refused and nothing changes', async () => {
    const storage = new MemoryStorage({ name: 'names.qcow2' });
    const disk = await createQcow2(storage, { size: 1 << 20 });
    const longest = 'é'.repeat(127) + 'x'; // 255 bytes of UTF-8
    await disk.createSnapshot(longest);
    await disk.createSnapshot('');
    await disk.createSnapshot('');
    const before = storage.toBytes();
    await expect(disk.createSnapshot(longest + 'y')).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      message: 'qcow2: a snapshot name is at most 255 bytes, as qemu stores them (this one is 256; qemu-img cuts longer names short)',
    });
    expect(bytesEqual(storage.toBytes(), before)).toBe(true);
    expect(disk.snapshots.map((s) => s.name)).toEqual([longest, '', '']);
    await disk.close();
  });
});
