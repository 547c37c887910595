/**
 * sparsifyVhd and compactVhd on memory images: what they release and
 * move, the guest view unchanged, check clean afterwards; differencing
 * disks keep zero sectors that cover parent data; the granularity; fixed
 * disks; abort and resume.
 */
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { loadVhdWriters, seededBytes } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { compactVhd } from './compact.js';
import { createVhd } from './create.js';
import { openVhd } from './open.js';
import { readVhdLayout } from './read-layout.js';
import { sparsifyVhd } from './sparsify.js';

const BLOCK = 4096;
const SPAN = 512 + BLOCK;

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

async function guest(bytes: Uint8Array, resolver?: Resolver): Promise<Uint8Array> {
  const d = await openVhd(MemoryStorage.from(bytes, { name: '/img/c.vhd' }), resolver ? { resolver } : {});
  try {
    return await d.read(0, d.size);
  } finally {
    await d.close();
  }
}

async function clean(bytes: Uint8Array, resolver?: Resolver): Promise<void> {
  const r = await checkVhd(MemoryStorage.from(bytes, { name: '/img/c.vhd' }), resolver ? { resolver } : {});
  expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
}

/** A dynamic disk of `blocks` 4 KiB blocks, all written, then every other one overwritten with zeros. */
async function pattern2(blocks: number): Promise<MemoryStorage> {
  const storage = new MemoryStorage({ name: '/img/c.vhd' });
  const d = await createVhd(storage, { size: blocks * BLOCK, blockSize: BLOCK });
  await d.write(0, seededBytes(blocks * BLOCK, 1));
  for (let b = 0; b < blocks; b += 2) await d.writeZeroes(b * BLOCK, BLOCK);
  await d.close();
  return fresh(storage);
}

/** A writable storage with the bytes of a closed one. */
function fresh(storage: MemoryStorage): MemoryStorage {
  return MemoryStorage.from(storage.toBytes(), { name: storage.name });
}

describe('sparsifyVhd + compactVhd', () => {
  it('pattern 2 (write all, zero every other block): sparsify frees half the blocks, compact returns their space', async () => {
    const storage = await pattern2(64);
    const before = storage.toBytes();
    const content = await guest(before);
    const sizeBefore = before.length;
    const sp = await sparsifyVhd(storage);
    expect(sp).toMatchObject({ type: 'dynamic', blocksScanned: 64, blocksFreed: 32, bytesReleased: 32 * SPAN });
    const sparsified = storage.toBytes();
    expect(same(await guest(sparsified), content)).toBe(true);
    // Freed blocks are holes: leaks until compacted.
    expect((await checkVhd(MemoryStorage.from(sparsified))).leaks).toBeGreaterThan(0);
    const progress: number[] = [];
    const c = await compactVhd(storage, { onProgress: (done) => progress.push(done) });
    const after = storage.toBytes();
    expect(c.type).toBe('dynamic');
    expect(c.sizeBefore).toBe(sizeBefore);
    expect(c.sizeAfter).toBe(after.length);
    expect(c.sizeAfter).toBe(sizeBefore - 32 * SPAN);
    expect(c.sizeAfter).toBe(c.allocatedBytes);
    expect(c.bytesMoved).toBe(c.blocksMoved * SPAN);
    expect(progress.length).toBe(c.blocksMoved);
    expect(progress.at(-1)).toBe(c.bytesMoved);
    expect(c.blocksMoved).toBeGreaterThan(0);
    expect(c.blocksMoved).toBeLessThanOrEqual(16);
    expect(same(await guest(after), content)).toBe(true);
    await clean(after);
    // Idempotent: a second run has nothing to do.
    const again = await compactVhd(storage);
    expect(again).toMatchObject({ blocksMoved: 0, sizeAfter: after.length });
    expect(again.nothingToDo).toBeDefined();
    expect(await sparsifyVhd(storage)).toMatchObject({ blocksFreed: 0, sectorsReleased: 0 });
    // Still writable: a new block goes at the end.
    const rw = fresh(storage);
    const d = await openVhd(rw, { readOnly: false });
    await d.write(0, seededBytes(BLOCK, 5));
    await d.close();
    await clean(rw.toBytes());
  });

  it('compact fills holes left anywhere, the highest blocks first, and a crash-left tail of junk is cut', async () => {
    let storage = new MemoryStorage({ name: '/img/c.vhd' });
    const d = await createVhd(storage, { size: 16 * BLOCK, blockSize: BLOCK });
    for (let b = 0; b < 16; b++) await d.write(b * BLOCK, seededBytes(BLOCK, 10 + b));
    await d.writeZeroes(0, 3 * BLOCK);
    await d.writeZeroes(9 * BLOCK, BLOCK);
    await d.close();
    storage = fresh(storage);
    const content = await guest(storage.toBytes());
    expect((await sparsifyVhd(storage)).blocksFreed).toBe(4);
    // Junk behind the footer (an unfinished allocation) goes too.
    const junked = storage.toBytes();
    const withJunk = new Uint8Array(junked.length + 1024);
    withJunk.set(junked);
    const s2 = MemoryStorage.from(withJunk, { name: '/img/c.vhd' });
    const c = await compactVhd(s2);
    expect(c.blocksMoved).toBe(4);
    expect(c.sizeAfter).toBe(junked.length - 4 * SPAN);
    expect(same(await guest(s2.toBytes()), content)).toBe(true);
    await clean(s2.toBytes());
  });

  it('granularity: a zero run shorter than minZeroRun inside data stays; at 512 it is released', async () => {
    const make = async () => {
      const s = new MemoryStorage({ name: '/img/c.vhd' });
      const disk = await createVhd(s, { size: 4 * 65536, blockSize: 65536 });
      const data = seededBytes(65536, 3);
      data.fill(0, 1024, 2048); // 1 KiB of zeros
      data.fill(0, 8192, 16384); // 8 KiB of zeros
      await disk.write(0, data);
      await disk.close();
      return fresh(s);
    };
    const a = await make();
    const content = await guest(a.toBytes());
    expect(await sparsifyVhd(a)).toMatchObject({ blocksFreed: 0, sectorsReleased: 16 });
    expect(same(await guest(a.toBytes()), content)).toBe(true);
    const b = await make();
    expect(await sparsifyVhd(b, { minZeroRun: 512 })).toMatchObject({ blocksFreed: 0, sectorsReleased: 18 });
    expect(same(await guest(b.toBytes()), content)).toBe(true);
    // Allocated blocks with cleared sectors stay readable and writable, and check stays clean.
    await clean(b.toBytes());
    const b2 = fresh(b);
    const d = await openVhd(b2, { readOnly: false });
    await d.write(1024, new Uint8Array(512).fill(7));
    content.fill(7, 1024, 1536);
    await d.close();
    expect(same(await guest(b2.toBytes()), content)).toBe(true);
    await expect(sparsifyVhd(fresh(b2), { minZeroRun: 1000 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
  });

  it('differencing: a zero sector over a non-zero parent sector stays; over a zero parent sector it goes', async () => {
    const files = new Map<string, Uint8Array>();
    const ps = new MemoryStorage({ name: '/img/p.vhd' });
    const p = await createVhd(ps, { size: 8 * BLOCK, blockSize: BLOCK });
    // Parent: data in blocks 0-3, zeros (unallocated) in 4-7.
    await p.write(0, seededBytes(4 * BLOCK, 1));
    await p.close();
    files.set('/img/p.vhd', ps.toBytes());
    const resolver: Resolver = async ({ name }) => {
      const bytes = files.get(`/img/${name.replace(/^.*[\\/]/, '')}`);
      if (!bytes) throw new ImageError('ERR_IMG_NOT_FOUND', `${name} not found`);
      return MemoryStorage.from(bytes, { name: '/img/p.vhd' });
    };
    const parent = await openVhd(MemoryStorage.from(files.get('/img/p.vhd')!, { name: '/img/p.vhd' }));
    let cs = new MemoryStorage({ name: '/img/c.vhd' });
    const c = await createVhd(cs, { parent: { disk: parent, relativePath: 'p.vhd', absolutePath: '/img/p.vhd' }, blockSize: BLOCK });
    // Zeros over parent data (block 1), zeros over parent zeros (block 5), data (block 6), half zero over data (block 2).
    await c.write(1 * BLOCK, new Uint8Array(BLOCK));
    await c.write(5 * BLOCK, new Uint8Array(BLOCK));
    await c.write(6 * BLOCK, seededBytes(BLOCK, 9));
    const half = seededBytes(BLOCK, 8);
    half.fill(0, 0, BLOCK / 2);
    await c.write(2 * BLOCK, half);
    await c.close();
    cs = fresh(cs);
    const content = await guest(cs.toBytes(), resolver);
    expect(content.subarray(BLOCK, 2 * BLOCK).every((x) => x === 0)).toBe(true);
    await expect(sparsifyVhd(MemoryStorage.from(cs.toBytes(), { name: '/img/c.vhd' }))).rejects.toBeInstanceOf(ImageError);
    const sp = await sparsifyVhd(cs, { resolver });
    expect(sp).toMatchObject({ type: 'differencing', blocksScanned: 4, blocksFreed: 1, sectorsReleased: 8 });
    expect(same(await guest(cs.toBytes(), resolver), content)).toBe(true);
    const cp = await compactVhd(cs);
    expect(cp.sizeAfter).toBe(cp.allocatedBytes);
    expect(same(await guest(cs.toBytes(), resolver), content)).toBe(true);
    await clean(cs.toBytes(), resolver);
  });

  it('fixed disks: nothing to do, said so', async () => {
    const created = new MemoryStorage({ name: '/img/f.vhd' });
    const d = await createVhd(created, { type: 'fixed', size: 65536 });
    await d.close();
    const storage = fresh(created);
    const before = storage.toBytes();
    expect((await compactVhd(storage)).nothingToDo).toMatch(/fixed disk/);
    expect((await sparsifyVhd(storage)).nothingToDo).toMatch(/fixed disk/);
    expect(same(storage.toBytes(), before)).toBe(true);
  });

  it('abort: compact stops before the next move, leaves a consistent image, and a second run finishes', async () => {
    const storage = await pattern2(64);
    const content = await guest(storage.toBytes());
    await sparsifyVhd(storage);
    const controller = new AbortController();
    const err = await compactVhd(storage, { signal: controller.signal, onProgress: (done) => done === 3 * SPAN && controller.abort() }).catch((e: unknown) => e);
    expect((err as ImageError).code).toBe('ERR_IMG_ABORTED');
    expect(same(await guest(storage.toBytes()), content)).toBe(true);
    const r = await checkVhd(MemoryStorage.from(storage.toBytes()));
    expect(r.corruptions).toBe(0);
    const c = await compactVhd(storage);
    expect(c.blocksMoved).toBeGreaterThan(0);
    expect(c.sizeAfter).toBe(c.allocatedBytes);
    expect(same(await guest(storage.toBytes()), content)).toBe(true);
    await clean(storage.toBytes());
  });
});

describe('the layouts of real writers (alignment padding, reserved locator space, batmap)', async () => {
  const { writers } = await loadVhdWriters();
  for (const [name, make] of Object.entries(writers)) {
    it(`${name}: sparsify + compact keep the content and the reservations, and check stays clean`, async () => {
      const built = make();
      const storage = MemoryStorage.from(built.bytes, { name: `${name}.vhd` });
      const layout = await readVhdLayout(MemoryStorage.from(built.bytes), {});
      const reserved = (layout.reserved ?? []).map((r) => ({ ...r, bytes: built.bytes.slice(r.start, r.end) }));
      const differencing = layout.type === 'differencing';
      const read = async (bytes: Uint8Array) => {
        const d = await openVhd(MemoryStorage.from(bytes), { noBacking: true });
        try {
          return await d.read(0, d.size);
        } finally {
          await d.close();
        }
      };
      const content = await read(built.bytes);
      let work = storage;
      if (!differencing && layout.type !== 'fixed') {
        // Zero the first allocated block through img's writer, then release it.
        const first = [...layout.bat.keys()].find((i) => layout.bat[i] !== 0xffffffff);
        if (first !== undefined) {
          const d = await openVhd(storage, { readOnly: false });
          await d.writeZeroes(first * layout.blockSize, Math.min(layout.blockSize, d.size - first * layout.blockSize));
          await d.close();
          content.fill(0, first * layout.blockSize, (first + 1) * layout.blockSize);
          work = MemoryStorage.from(storage.toBytes(), { name: storage.name });
          expect((await sparsifyVhd(work)).blocksFreed).toBe(1);
        }
      }
      const c = await compactVhd(work);
      const after = work.toBytes();
      expect(c.sizeAfter).toBe(after.length);
      // Within one block of what it holds: gaps smaller than a block (alignment) stay.
      expect(c.sizeAfter - c.allocatedBytes).toBeLessThan(layout.bitmapBytes + layout.blockSize);
      expect(same(await read(after), content)).toBe(true);
      for (const r of reserved) expect(same(after.slice(r.start, r.end), r.bytes), `${r.what} kept`).toBe(true);
      const report = await checkVhd(MemoryStorage.from(after));
      expect([report.corruptions, report.leaks, report.checkErrors], report.messages.join('; ')).toEqual([0, 0, 0]);
    });
  }
});
