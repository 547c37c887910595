import { mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, diskExtents, sparseCopy, type Resolver } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCompare, seededBytes, tempDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { parentCandidates } from './chain.js';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { vhdDriver } from './driver.js';
import type { VhdDisk } from './disk.js';
import { createVhdFile, openVhdFile } from './node.js';
import { openVhd } from './open.js';
import { readVhdLayout } from './read-layout.js';

const SIZE = 256 * 1024;

/** A parent with data everywhere and a child holding a few whole and partial blocks, in memory under `p.vhd` and `c.vhd`. */
async function chain(): Promise<{ files: Map<string, Uint8Array>; resolver: Resolver; top: Uint8Array; base: Uint8Array }> {
  const files = new Map<string, Uint8Array>();
  const ps = new MemoryStorage({ name: 'p.vhd' });
  const p = await createVhd(ps, { size: SIZE, blockSize: 8192 });
  const base = seededBytes(SIZE, 1);
  await p.write(0, base);
  const cs = new MemoryStorage({ name: 'c.vhd' });
  const c = await createVhd(cs, { parent: { disk: p, relativePath: 'p.vhd' }, blockSize: 4096 });
  await c.write(4096, seededBytes(8192, 2));
  await c.write(70_000, seededBytes(700, 3));
  const top = await c.read(0, SIZE);
  await c.close();
  files.set('p.vhd', ps.toBytes());
  files.set('c.vhd', cs.toBytes());
  const resolver: Resolver = async ({ name }) => {
    const base = name.split(/[\\/]/).pop()!;
    if (!files.has(base)) throw new ImageError('ERR_IMG_NOT_FOUND', `${base} not found`);
    return persisting(files, base);
  };
  return { files, resolver, top, base };
}

/** A memory storage over files[name] that writes its bytes back there when closed. */
function persisting(files: Map<string, Uint8Array>, name: string): MemoryStorage {
  return new (class extends MemoryStorage {
    override async close(): Promise<void> {
      files.set(name, this.toBytes());
      await super.close();
    }
  })({ name, data: files.get(name)! });
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

async function openC(files: Map<string, Uint8Array>, resolver: Resolver, options = {}): Promise<VhdDisk> {
  return openVhd(persisting(files, 'c.vhd'), { resolver, ...options });
}

describe('backing, backingWritable, makeEmpty', () => {
  it('backing is the open parent; backingWritable opens it (only it) writable', async () => {
    const { files, resolver } = await chain();
    const ro = await openC(files, resolver);
    expect(ro.backing).toBe(ro.parent);
    expect(ro.backing!.readOnly).toBe(true);
    await ro.close();
    const rw = (await vhdDriver.open(persisting(files, 'c.vhd'), { resolver, backingWritable: true, readOnly: false })) as VhdDisk;
    expect(rw.backing!.readOnly).toBe(false);
    await rw.close();
  });

  it('commit: the child copied down, then makeEmpty: the parent alone reads as the child did, the child falls through', async () => {
    const { files, resolver, top } = await chain();
    const c = await openC(files, resolver, { backingWritable: true, readOnly: false });
    await sparseCopy(c, c.backing!, { topOnly: true, dstIsZero: false });
    await c.backing!.flush();
    await c.makeEmpty();
    expect(await diskExtents(c, { topOnly: true })).toEqual([{ offset: 0, length: SIZE, kind: 'hole', depth: 0 }]);
    expect(same(await c.read(0, SIZE), top)).toBe(true);
    await c.close();
    const bytes = files.get('c.vhd')!;
    // The file is cut behind its metadata.
    const reopened = await openC(files, resolver);
    expect((await readVhdLayout(reopened.storage)).bat.every((e) => e === 0xffffffff)).toBe(true);
    expect(same(await reopened.read(0, SIZE), top)).toBe(true);
    await reopened.close();
    expect(await checkVhd(MemoryStorage.from(bytes))).toMatchObject({ corruptions: 0, leaks: 0 });
    const parent = await openVhd(MemoryStorage.from(files.get('p.vhd')!));
    expect(same(await parent.read(0, SIZE), top)).toBe(true);
  });

  it('makeEmpty on a dynamic disk reads zeros; on a fixed disk or read-only it is refused', async () => {
    const d = await createVhd(new MemoryStorage({ name: 'd.vhd' }), { size: SIZE, blockSize: 4096 });
    await d.write(0, seededBytes(50_000, 4));
    await d.makeEmpty();
    expect((await d.read(0, SIZE)).every((x) => x === 0)).toBe(true);
    expect(await checkVhd(MemoryStorage.from((d.storage as MemoryStorage).toBytes()))).toMatchObject({ corruptions: 0, leaks: 0 });
    await d.write(100, seededBytes(10, 5)); // still writable afterwards
    expect((await d.read(100, 10))[0]).toBe(seededBytes(10, 5)[0]);
    const f = await createVhd(new MemoryStorage({ name: 'f.vhd' }), { type: 'fixed', size: SIZE });
    await expect(f.makeEmpty()).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
    const ro = await openVhd(MemoryStorage.from((d.storage as MemoryStorage).toBytes()));
    await expect(ro.makeEmpty()).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
  });
});

describe('setBacking (rebase -u)', () => {
  it('renamed parent (same unique id): the child finds it under the new name only', async () => {
    const { files, resolver, top } = await chain();
    files.set('q.vhd', files.get('p.vhd')!);
    const c = await openC(files, resolver, { readOnly: false });
    await c.setBacking('q.vhd', 'vpc');
    await c.close();
    files.delete('p.vhd');
    const again = await openC(files, resolver);
    expect(await parentCandidates(await readVhdLayout(again.storage))).toEqual(['./q.vhd', 'q.vhd']);
    expect((await readVhdLayout(again.storage)).header!.parentUnicodeName).toBe('q.vhd');
    expect(same(await again.read(0, SIZE), top)).toBe(true);
    expect(await checkVhd(MemoryStorage.from(files.get('c.vhd')!), { resolver })).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('a different parent with the same content (safe rebase): its unique id and timestamp are recorded', async () => {
    const { files, resolver, top, base } = await chain();
    const other = new MemoryStorage({ name: 'o.vhd' });
    const o = await createVhd(other, { size: SIZE, blockSize: 65536, timestamp: new Date('2030-01-01T00:00:00Z') });
    await o.write(0, base);
    await o.close();
    files.set('o.vhd', other.toBytes());
    const c = await openC(files, resolver, { readOnly: false });
    await c.setBacking('o.vhd');
    await c.close();
    const again = await openC(files, resolver);
    expect((await readVhdLayout(again.storage)).header!.parentUniqueId).toBe(o.uniqueId);
    expect(again.problems).toEqual([]);
    expect(same(await again.read(0, SIZE), top)).toBe(true);
  });

  it('a parent that cannot be opened yet: only the names change', async () => {
    const { files, resolver } = await chain();
    const c = await openC(files, resolver, { readOnly: false });
    const id = (await readVhdLayout(c.storage)).header!.parentUniqueId;
    await c.setBacking('later.vhd');
    await c.close();
    const again = await openVhd(MemoryStorage.from(files.get('c.vhd')!), { noBacking: true });
    expect((await readVhdLayout(again.storage)).header!.parentUniqueId).toBe(id);
    expect(await parentCandidates(await readVhdLayout(again.storage))).toContain('./later.vhd');
  });

  it('a name longer than the old locator space goes behind the last block', async () => {
    const { files, resolver, top } = await chain();
    const long = `${'d'.repeat(300)}/p.vhd`;
    files.set('p.vhd', files.get('p.vhd')!);
    const c = await openC(files, resolver, { readOnly: false });
    await c.setBacking(long);
    await c.write(200_000, seededBytes(5000, 9)); // allocation after the moved footer still works
    const now = await c.read(0, SIZE);
    await c.close();
    const again = await openC(files, resolver);
    expect((await parentCandidates(await readVhdLayout(again.storage)))[0]).toBe(`./${long}`);
    expect(same(await again.read(0, SIZE), now)).toBe(true);
    expect(same(now.subarray(0, 200_000), top.subarray(0, 200_000))).toBe(true);
    const r = await checkVhd(MemoryStorage.from(files.get('c.vhd')!));
    expect(r.corruptions).toBe(0); // the old locator's sector is now a gap (a leak)
  });

  it('undefined drops the parent: the disk becomes dynamic, present sectors stay, the rest reads as zeros', async () => {
    const { files, resolver, top } = await chain();
    const c = await openC(files, resolver, { readOnly: false });
    await c.setBacking(undefined);
    expect(c.type).toBe('dynamic');
    await c.close();
    const again = await openVhd(MemoryStorage.from(files.get('c.vhd')!));
    expect(again.type).toBe('dynamic');
    expect((await readVhdLayout(again.storage)).header!.parentUnicodeName).toBe('');
    const got = await again.read(0, SIZE);
    expect(same(got.subarray(4096, 4096 + 8192), top.subarray(4096, 4096 + 8192))).toBe(true);
    expect(got.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    expect((await checkVhd(MemoryStorage.from(files.get('c.vhd')!))).corruptions).toBe(0);
  });

  it('refuses other formats and a parent for a dynamic disk', async () => {
    const { files, resolver } = await chain();
    const c = await openC(files, resolver, { readOnly: false });
    await expect(c.setBacking('x.qcow2', 'qcow2')).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    const d = await createVhd(new MemoryStorage({ name: 'd.vhd' }), { size: SIZE });
    await expect(d.setBacking('p.vhd')).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
  });
});

describeQemu('files: rebase -u after moving the parent, commit judged by qemu-img', () => {
  const tmp = tempDir('vhd-backing-');
  afterAll(() => tmp.cleanup());

  it('a child created with absolute locators follows its moved parent after setBacking (all locator space reused)', async () => {
    const dir = tmp.path;
    const p = await createVhdFile(join(dir, 'p.vhd'), { size: SIZE, blockSize: 8192 });
    await p.write(0, seededBytes(SIZE, 7));
    await p.close();
    const c = await createVhdFile(join(dir, 'c.vhd'), { parentPath: join(dir, 'p.vhd'), blockSize: 4096 });
    await c.write(512, seededBytes(4096, 8));
    const want = await c.read(0, SIZE);
    await c.close();
    mkdirSync(join(dir, 'moved'));
    renameSync(join(dir, 'p.vhd'), join(dir, 'moved', 'p.vhd'));
    const size = statSync(join(dir, 'c.vhd')).size;
    const rw = await openVhdFile(join(dir, 'c.vhd'), { readOnly: false, noBacking: true });
    await rw.setBacking('moved/p.vhd');
    await rw.close();
    expect(statSync(join(dir, 'c.vhd')).size).toBe(size);
    const again = await openVhdFile(join(dir, 'c.vhd'));
    expect(same(await again.read(0, SIZE), want)).toBe(true);
    expect((await parentCandidates(await readVhdLayout(again.storage))).slice(0, 2)).toEqual(['./moved/p.vhd', join(dir, 'moved/p.vhd')]);
    await again.close();
    const fs = await FileStorage.open(join(dir, 'c.vhd'));
    expect(await checkVhd(fs, { resolver: fileResolver })).toMatchObject({ corruptions: 0, leaks: 0 });
    await fs.close();
  });

  it('commit into a copy of the parent: qemu-img compares the parent with the child identical', async () => {
    const dir = tmp.path;
    const p = await createVhdFile(join(dir, 'cp.vhd'), { size: SIZE, blockSize: 8192 });
    await p.write(0, seededBytes(SIZE, 17));
    await p.close();
    const c = await createVhdFile(join(dir, 'cc.vhd'), { parentPath: join(dir, 'cp.vhd'), blockSize: 4096 });
    await c.write(10_000, seededBytes(30_000, 18));
    const want = await c.read(0, SIZE);
    await c.close();
    const before = statSync(join(dir, 'cc.vhd')).size;
    const top = await openVhdFile(join(dir, 'cc.vhd'), { readOnly: false, backingWritable: true });
    await sparseCopy(top, top.backing!, { topOnly: true, dstIsZero: false });
    await top.backing!.flush();
    await top.makeEmpty();
    expect(same(await top.read(0, SIZE), want)).toBe(true);
    await top.close();
    const raw = join(dir, 'cc.raw');
    writeFileSync(raw, want);
    expect(qemuCompare(join(dir, 'cp.vhd'), raw, 'vpc', 'raw')).toBe(true);
    expect(statSync(join(dir, 'cc.vhd')).size).toBeLessThan(before);
  });
});
