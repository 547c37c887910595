import { copyFileSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, assertExtentCover, diskExtents, type ResolveRequest, type Storage } from '@img/block';
import { VHD_OP_KINDS, applyVhdOp as apply, clampVhdOp, seededBytes, slowStorage, tempDir, type VhdOp } from '@img/testkit';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { vhdChainLayers } from './chain.js';
import { createVhd, createVhdImage, type VhdParentSpec } from './create.js';
import { VhdDisk } from './disk.js';
import { createVhdFile, openVhdChain, openVhdFile } from './node.js';
import { openVhd, openVhdChain as openChainCore } from './open.js';
import { readVhdInto } from './read.js';
import { writeVhd } from './write.js';
import { baseName } from './parent-locator.js';
import { readVhdLayout } from './read-layout.js';

/** A resolver over named in-memory images (fresh storage per open, so closing is harmless). */
function memoryResolver(images: Map<string, MemoryStorage>, calls: ResolveRequest[] = []) {
  return async (request: ResolveRequest): Promise<Storage> => {
    calls.push(request);
    const s = images.get(baseName(request.name));
    if (!s) throw new Error(`no ${request.name}`);
    return MemoryStorage.from(s.toBytes(), { name: baseName(request.name) });
  };
}

const SIZE = 1024 * 1024 + 3 * 512;

/** Steps inside a disk of `size` bytes, each at most `maxLength` long. */
function opArbOf(size: number, maxLength: number): fc.Arbitrary<VhdOp> {
  return fc.record({ kind: fc.constantFrom(...VHD_OP_KINDS), offset: fc.nat(size - 1), length: fc.integer({ min: 1, max: maxLength }), seed: fc.nat() }).map((o) => clampVhdOp(o, size));
}
const opArb = opArbOf(SIZE, 40_000);

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

describe('differencing chains: sector-level model', () => {
  it('random writes, zeroes and discards through a 3-deep chain read like a flat disk', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 8 }), fc.array(opArb, { maxLength: 8 }), fc.array(opArb, { minLength: 1, maxLength: 8 }), fc.constantFrom(4096, 65536, 2 * 1024 * 1024), async (baseOps, midOps, topOps, blockSize) => {
        const images = new Map<string, MemoryStorage>();
        const model = new Uint8Array(SIZE);
        const mk = (name: string) => {
          const s = new MemoryStorage({ name });
          images.set(name, s);
          return s;
        };
        const base = await createVhd(mk('base.vhd'), { size: SIZE, blockSize });
        for (const op of baseOps) await apply(base, model, op);
        const mid = await createVhd(mk('mid.vhd'), { parent: { disk: base, relativePath: 'base.vhd' }, blockSize });
        for (const op of midOps) await apply(mid, model, op);
        const top = await createVhd(mk('top.vhd'), { parent: { disk: mid, relativePath: 'mid.vhd' }, blockSize });
        for (const op of topOps) await apply(top, model, op);
        expect(same(await top.read(0, SIZE), model)).toBe(true);
        // Reopened from the bytes, through the resolver.
        const calls: ResolveRequest[] = [];
        const again = await openVhd(MemoryStorage.from(images.get('top.vhd')!.toBytes(), { name: 'top.vhd' }), { resolver: memoryResolver(images, calls) });
        expect(calls.map((c) => [c.kind, c.writable])).toEqual([
          ['parent', false],
          ['parent', false],
        ]);
        expect(same(await again.read(0, SIZE), model)).toBe(true);
        const extents = await diskExtents(again);
        assertExtentCover(extents, 0, SIZE);
        for (const e of extents) {
          expect(e.depth).toBeLessThanOrEqual(2);
          if (e.kind !== 'data') expect(model.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).toBe(true);
        }
        // topOnly: exactly the sectors the top layer holds are data.
        for (const e of await diskExtents(again, { topOnly: true })) {
          expect(e.depth).toBe(0);
          expect(e.kind === 'data' || e.kind === 'hole').toBe(true);
        }
        await again.close();
      }),
      { seed: 99, numRuns: 30 },
    );
  });

  it('a partial-sector write copies the rest of the sector from the parent', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b' }), { size: 1 << 20 });
    await base.write(0, new Uint8Array(4096).fill(7));
    const child = await createVhd(new MemoryStorage({ name: 'c' }), { parent: { disk: base, relativePath: 'b' } });
    await child.write(100, new Uint8Array([1, 2, 3]));
    const got = await child.read(0, 1024);
    expect([...got.subarray(98, 105)]).toEqual([7, 7, 1, 2, 3, 7, 7]);
    expect(got.subarray(512).every((b) => b === 7)).toBe(true);
    const loc = await child.sectorLocation(100);
    expect(loc.depth).toBe(0);
    expect(loc.kind).toBe('data');
    expect((await child.sectorLocation(600)).depth).toBe(1);
  });

  it('writeZeroes and discard in a child hide the parent data', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b' }), { size: 1 << 20 });
    await base.write(0, new Uint8Array(1 << 20).fill(9));
    const child = await createVhd(new MemoryStorage({ name: 'c' }), { parent: { disk: base, relativePath: 'b' }, blockSize: 4096 });
    await child.writeZeroes(1000, 10_000);
    await child.discard(500_000, 300);
    const got = await child.read(0, 1 << 20);
    expect(got.subarray(1000, 11_000).every((b) => b === 0)).toBe(true);
    expect(got[999]).toBe(9);
    expect(got[11_000]).toBe(9);
    expect(got.subarray(500_000, 500_300).every((b) => b === 0)).toBe(true);
  });
});

describe('finding parents', () => {
  const tmp = tempDir('vhd-chain-');
  afterAll(() => tmp.cleanup());

  async function makeChain(dir: string): Promise<{ base: string; child: string; data: Uint8Array }> {
    mkdirSync(dir, { recursive: true });
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    const b = await createVhdFile(base, { size: 1 << 20 });
    await b.write(0, seededBytes(1 << 20, 5));
    await b.close();
    const c = await createVhdFile(child, { parentPath: base });
    await c.write(4096, new Uint8Array(512).fill(1));
    const data = await c.read(0, 1 << 20);
    await c.close();
    return { base, child, data };
  }

  it('records W2ru, W2ku and MacX locators and the parent name', async () => {
    const { child } = await makeChain(join(tmp.path, 'a'));
    const disk = await openVhdFile(child);
    const h = (await readVhdLayout(disk.storage)).header!;
    expect(h.parentLocators.slice(0, 3).map((l) => l.platformCode)).toEqual(['W2ru', 'W2ku', 'MacX']);
    expect(h.parentUnicodeName).toBe('base.vhd');
    const info = await disk.info();
    expect(info.backingFile).toBe('./base.vhd');
    expect(info.formatSpecific!['parent-uuid']).toBe((disk.parent as VhdDisk).uniqueId);
    expect(disk.problems).toEqual([]);
    await disk.close();
  });

  it('a moved pair is found through the relative locator; a moved parent through searchPath', async () => {
    const { base, child, data } = await makeChain(join(tmp.path, 'b'));
    const moved = join(tmp.path, 'b2');
    mkdirSync(moved);
    copyFileSync(child, join(moved, 'child.vhd'));
    copyFileSync(base, join(moved, 'base.vhd'));
    const d1 = await openVhdChain(join(moved, 'child.vhd'));
    expect(vhdChainLayers(d1).map((l) => l.storage.name)).toEqual([join(moved, 'child.vhd'), join(moved, 'base.vhd')]);
    expect(same(await d1.read(0, 1 << 20), data)).toBe(true);
    await d1.close();
    // Parent away from both recorded places: only the search path finds it.
    const elsewhere = join(tmp.path, 'b3');
    mkdirSync(elsewhere);
    renameSync(join(moved, 'base.vhd'), join(elsewhere, 'base.vhd'));
    renameSync(base, join(tmp.path, 'b', 'gone.vhd'));
    await expect(openVhdChain(join(moved, 'child.vhd'))).rejects.toMatchObject({ code: 'ERR_IMG_NOT_FOUND' });
    const d2 = await openVhdChain(join(moved, 'child.vhd'), { searchPath: [elsewhere] });
    expect(same(await d2.read(0, 1 << 20), data)).toBe(true);
    await d2.close();
  });

  it('refuses a parent with another unique id unless told; reports a timestamp mismatch', async () => {
    const { base, child } = await makeChain(join(tmp.path, 'c'));
    const impostor = await createVhdFile(base, { size: 1 << 20, timestamp: new Date('2021-01-01Z') });
    await impostor.close();
    const e = await openVhdFile(child).catch((x: unknown) => x);
    expect(ImageError.isInstance(e) && e.code).toBe('ERR_IMG_MISMATCH');
    expect(String((e as Error).message)).toMatch(/has unique id \S+, but this image's parent unique id is \S+: the parent changed after this image was made \(allowUuidMismatch/);
    const d = await openVhdFile(child, { allowUuidMismatch: true });
    expect(d.problems.map((p) => p.code)).toEqual(expect.arrayContaining(['parent-uuid-mismatch', 'parent-timestamp-mismatch']));
    await d.close();
  });

  it('untrusted refuses without calling the resolver; noBacking reads the parent as zeros', async () => {
    const { child } = await makeChain(join(tmp.path, 'd'));
    const calls: ResolveRequest[] = [];
    const spy = async (r: ResolveRequest): Promise<Storage> => {
      calls.push(r);
      throw new Error('must not be called');
    };
    await expect(openVhdFile(child, { untrusted: true, resolver: spy })).rejects.toMatchObject({ code: 'ERR_IMG_UNSAFE' });
    expect(calls).toEqual([]);
    // Without a resolver: the same error as qcow2's and VMDK's, naming the option that reads without the parent.
    await expect(openVhd(MemoryStorage.from(new Uint8Array(readFileSync(child)), { name: 'child.vhd' }))).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      message: expect.stringMatching(/has a parent ".+" but no resolver was given to open it \(pass a resolver, or noBacking/),
    });
    const d = await openVhdFile(child, { noBacking: true, resolver: spy });
    const got = await d.read(0, 8192);
    expect(got.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(got.subarray(4096, 4608).every((b) => b === 1)).toBe(true);
    expect((await diskExtents(d)).map((e) => e.kind)).toEqual(['hole', 'data', 'hole']);
    await d.close();
    const core = await openChainCore(MemoryStorage.from(new Uint8Array(0)), {}).catch((x: unknown) => x);
    expect(ImageError.isInstance(core)).toBe(true);
  });

  it('detects cycles and enforces the depth limit', async () => {
    const images = new Map<string, MemoryStorage>();
    const fake = (uuid: string): VhdParentSpec => ({ disk: { size: 1 << 20, footer: { uniqueId: uuid, timestamp: 0 }, storage: { name: 'x' } } as unknown as VhdDisk, relativePath: '' });
    const A = '11111111-1111-4111-8111-111111111111';
    const B = '22222222-2222-4222-8222-222222222222';
    const a = new MemoryStorage({ name: 'a.vhd' });
    const b = new MemoryStorage({ name: 'b.vhd' });
    await createVhd(a, { uuid: A, parent: { ...fake(B), relativePath: 'b.vhd' } });
    await createVhd(b, { uuid: B, parent: { ...fake(A), relativePath: 'a.vhd' } });
    images.set('a.vhd', a);
    images.set('b.vhd', b);
    await expect(openVhd(MemoryStorage.from(a.toBytes(), { name: 'a.vhd' }), { resolver: memoryResolver(images) })).rejects.toMatchObject({ code: 'ERR_IMG_CHAIN' });
    // A straight chain of 5 with a limit of 3.
    const chain = new Map<string, MemoryStorage>();
    let parent: VhdDisk | undefined;
    for (let i = 0; i < 5; i++) {
      const s = new MemoryStorage({ name: `l${i}.vhd` });
      chain.set(`l${i}.vhd`, s);
      parent = await createVhd(s, parent ? { parent: { disk: parent, relativePath: `l${i - 1}.vhd` } } : { size: 1 << 20 });
    }
    const top = () => MemoryStorage.from(chain.get('l4.vhd')!.toBytes(), { name: 'l4.vhd' });
    await expect(openVhd(top(), { resolver: memoryResolver(chain), maxChainDepth: 3 })).rejects.toMatchObject({ code: 'ERR_IMG_CHAIN' });
    const ok = await openVhd(top(), { resolver: memoryResolver(chain), maxChainDepth: 5 });
    expect(vhdChainLayers(ok).length).toBe(5);
  });
});

describe('vhdDriver with a parent, as the CLI calls it', () => {
  const tmp = tempDir('vhd-driver-');
  afterAll(() => tmp.cleanup());
  it('create with backingFile (size -1: from the parent) and open through the generic resolver', async () => {
    const { vhdDriver } = await import('./driver.js');
    const { FileStorage, fileResolver } = await import('@img/block/node');
    const base = await createVhdFile(join(tmp.path, 'base.vhd'), { size: 3 << 20 });
    await base.write(0, new Uint8Array(4096).fill(4));
    await base.close();
    const storage = await FileStorage.create(join(tmp.path, 'top.vhd'));
    const top = await vhdDriver.create(storage, { size: -1, backingFile: 'base.vhd', resolver: fileResolver });
    expect(top.size).toBe(3 << 20);
    await top.write(512, new Uint8Array(512).fill(5));
    await top.close();
    const calls: ResolveRequest[] = [];
    const opened = await vhdDriver.open(await FileStorage.open(join(tmp.path, 'top.vhd')), {
      resolver: async (r) => (calls.push(r), fileResolver(r)),
    });
    expect(calls.map((c) => [c.name, c.kind])).toEqual([['./base.vhd', 'parent']]);
    const got = await opened.read(0, 2048);
    expect([got[0], got[600], got[1500]]).toEqual([4, 5, 4]);
    const info = await opened.info!();
    expect(info.backingFile).toBe('./base.vhd');
    expect(info.fullBackingFile).toBe(join(tmp.path, 'base.vhd'));
    await opened.close();
    await expect(vhdDriver.create(new MemoryStorage(), { size: -1, backingFile: 'base.vhd' })).rejects.toThrow(/resolver/);
  });
});

describe('a differencing disk opened writable without its parent', () => {
  it('writes zeros instead of leaving parent data visible, and refuses partial sectors it cannot fill', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b.vhd' }), { size: 1 << 20 });
    await base.write(0, new Uint8Array(1 << 20).fill(8));
    const s = new MemoryStorage({ name: 'c.vhd' });
    await createVhd(s, { parent: { disk: base, relativePath: 'b.vhd' }, blockSize: 4096 });
    const lonely = await openVhd(s, { noBacking: true, readOnly: false });
    await lonely.writeZeroes(8192, 4096);
    await lonely.write(0, new Uint8Array(512).fill(1));
    await lonely.write(10, new Uint8Array([2])); // sector 0 is in this layer: fine
    await expect(lonely.write(700, new Uint8Array([3]))).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
    const images = new Map([['b.vhd', base.storage as MemoryStorage]]);
    const again = await openVhd(MemoryStorage.from(s.toBytes(), { name: 'c.vhd' }), { resolver: memoryResolver(images) });
    const got = await again.read(0, 16384);
    expect(got.subarray(8192, 12288).every((b) => b === 0)).toBe(true);
    expect([got[0], got[10], got[600], got[12288]]).toEqual([1, 2, 8, 8]);
  });
});

describe('concurrent writes into a differencing disk', () => {
  it('byte-sized writes sharing sectors, with racing reads, issued at once on slow storage, all land over the parent data', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b' }), { size: 1 << 20 });
    await base.write(0, new Uint8Array(1 << 20).fill(0x40));
    // The core, so that the bitmap cache can be dropped while writes are in flight.
    const child = await createVhdImage(slowStorage(new MemoryStorage({ name: 'c' }), 3), { parent: { disk: base, relativePath: 'b' }, blockSize: 4096 });
    const model = new Uint8Array(1 << 20).fill(0x40);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 120; i++) {
      const offset = 3000 + i * 97; // several writes per sector and per block, never overlapping
      const data = seededBytes(90, i + 1);
      model.set(data, offset);
      writes.push(writeVhd(child, offset, data));
      // Readers racing the writers must not leave a stale sector bitmap in the cache.
      if (i % 3 === 0) {
        child.dropCaches();
        writes.push(readVhdInto(child, offset - 2000 > 0 ? offset - 2000 : 0, new Uint8Array(4096)));
      }
    }
    await Promise.all(writes);
    const all = new Uint8Array(1 << 20);
    await readVhdInto(child, 0, all);
    expect(Buffer.from(all).equals(Buffer.from(model))).toBe(true);
    await child.close();
  });
});
