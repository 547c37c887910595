import { describe, expect, it } from 'vitest';
import { MemoryStorage, writeU32Be } from '@img/block';
import { L2Cache } from './l2-cache.js';
import { openQcow2 } from './open.js';
import { loadFixture, memoryResolver, openBytes } from '../test/fixtures.js';

describe('L2 cache', () => {
  it('never holds more tables than its capacity and evicts the least recently used', async () => {
    const cache = new L2Cache(3);
    const load = (n: number) => async () => new Uint8Array([n]);
    for (const n of [1, 2, 3]) await cache.get(n, load(n));
    await cache.get(1, load(1)); // 1 is now the most recent
    await cache.get(4, load(4)); // evicts 2
    expect(cache.size).toBe(3);
    expect(cache.peek(2)).toBeUndefined();
    expect(cache.peek(1)).toBeDefined();
    for (let n = 10; n < 100; n++) await cache.get(n, load(n));
    expect(cache.size).toBe(3);
  });

  it('shares one load between concurrent misses', async () => {
    const cache = new L2Cache(2);
    let loads = 0;
    const load = async () => {
      loads++;
      await new Promise((r) => setTimeout(r, 5));
      return new Uint8Array(1);
    };
    await Promise.all([cache.get(7, load), cache.get(7, load), cache.get(7, load)]);
    expect(loads).toBe(1);
  });

  it('a failed load is not cached', async () => {
    const cache = new L2Cache(2);
    await expect(cache.get(1, async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await cache.get(1, async () => new Uint8Array([9]))).toEqual(new Uint8Array([9]));
  });

  it('an image honours l2CacheSize: a one-table cache still reads correctly', async () => {
    // 512-byte clusters: the 64 KiB... image has many L2 tables (64 entries each).
    const bytes = loadFixture('grown.qcow2');
    const wide = await openBytes(bytes);
    const narrow = await openBytes(bytes, { l2CacheSize: 512 });
    expect(narrow.l2CacheStats.capacity).toBe(1);
    const a = await wide.read(0, wide.size);
    const b = await narrow.read(0, narrow.size);
    expect(Buffer.compare(a, b)).toBe(0);
    expect(narrow.l2CacheStats.tables).toBe(1);
    expect(narrow.l2CacheStats.misses).toBeGreaterThan(1);
    // The default cache holds every table of this image.
    expect(wide.l2CacheStats.tables).toBe(wide.l2CacheStats.misses);
  });
});

describe('concurrent reads', () => {
  for (const name of ['compressed-zstd-512.qcow2', 'compressed-overwritten.qcow2', 'chain-top.qcow2', 'extended-l2-overlay.qcow2', 'v3-512.qcow2']) {
    it(`${name}: many unawaited overlapping reads equal one sequential read`, async () => {
      const storage = MemoryStorage.from(loadFixture(name), { name, readOnly: true });
      const disk = await openQcow2(storage, { resolver: memoryResolver, l2CacheSize: 1024 });
      const whole = await (await openQcow2(MemoryStorage.from(loadFixture(name), { name }), { resolver: memoryResolver })).read(0, disk.size);
      let seed = 12345;
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      const reads = Array.from({ length: 300 }, () => {
        const offset = rand(disk.size);
        const length = Math.min(disk.size - offset, 1 + rand(20000));
        return { offset, length, p: disk.read(offset, length) };
      });
      for (const r of reads) {
        const got = await r.p;
        expect(Buffer.compare(got, whole.subarray(r.offset, r.offset + r.length)), `${r.offset}+${r.length}`).toBe(0);
      }
    });
  }
});

describe('snapshots', () => {
  it('VM state stored past the snapshot disk size is never shown', async () => {
    // snapshots.qcow2 has data at 64 KiB in s1; pretend s1 was a 64 KiB disk with 64 KiB of VM state after it.
    const bytes = loadFixture('snapshots.qcow2');
    const table = Number(new DataView(bytes.buffer).getBigUint64(64));
    const s1 = await (await openBytes(loadFixture('snapshots.qcow2'))).openSnapshot('s1');
    expect((await s1.read(64 * 1024, 1))[0]).toBe(0xd2);
    writeU32Be(bytes, table + 32, 64 * 1024); // vm_state_size
    writeU32Be(bytes, table + 40 + 4, 64 * 1024); // vm_state_size_large (low half)
    writeU32Be(bytes, table + 48 + 4, 64 * 1024); // disk_size (low half)
    const disk = await openBytes(bytes);
    expect(disk.snapshots[0]).toMatchObject({ name: 's1', vmStateSize: 64 * 1024, diskSize: 64 * 1024 });
    const snap = await disk.openSnapshot('1');
    expect(snap.size).toBe(64 * 1024);
    await expect(snap.read(64 * 1024, 1)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    const extents = [];
    for await (const e of snap.extents()) extents.push(e);
    expect(extents.at(-1)!.offset + extents.at(-1)!.length).toBe(64 * 1024);
    await expect(disk.openSnapshot('nope')).rejects.toMatchObject({ code: 'ERR_IMG_NOT_FOUND' });
    await expect(snap.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
  });
});
