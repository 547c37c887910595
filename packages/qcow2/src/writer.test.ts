import { describe, expect, it } from 'vitest';
import { MemoryStorage, readU32Be, readU64Be, writeU32Be, bytesEqual } from '@img/block';
import type { Storage } from '@img/block';
import { createQcow2, parseCreateOptions } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { decodeL2Entry, l1EntryOffset } from './mapping.js';
import { imageError, loadFixture, memoryResolver } from '../test/fixtures.js';
import { seededBytes } from '@img/testkit';

const bit = (bytes: Uint8Array, at: number, n: number) => (readU32Be(bytes, at) >>> n) & 1;

describe('feature bits on write', () => {
  it('unknown autoclear bits (and bitmaps) are cleared by the first write; compatible bits stay', async () => {
    const storage = MemoryStorage.from(loadFixture('unknown-features.qcow2'), { name: 'u.qcow2' });
    const disk = await openQcow2(storage, { readOnly: false });
    expect(bit(storage.toBytes(), 92, 9)).toBe(1);
    await disk.write(0, new Uint8Array([1]));
    expect(readU32Be(storage.toBytes(), 92)).toBe(0);
    expect(bit(storage.toBytes(), 84, 7)).toBe(1);
    await disk.close();
    // The unknown header extension is still there.
    const again = await openQcow2(MemoryStorage.from(storage.toBytes(), { name: 'u.qcow2' }));
    expect(again.extensions[0]!.type).toBe(0x0badcafe);
  });

  it('lazy refcounts: dirty while writing, clean after flush', async () => {
    const storage = new MemoryStorage({ name: 'lazy.qcow2' });
    const disk = await createQcow2(storage, { size: 1 << 20, lazyRefcounts: 'on', clusterSize: '4k' });
    expect(bit(storage.toBytes(), 76, 0)).toBe(0);
    await disk.write(5000, new Uint8Array(100).fill(1));
    expect(bit(storage.toBytes(), 76, 0)).toBe(1);
    expect((await disk.info()).dirty).toBe(true);
    await disk.flush();
    expect(bit(storage.toBytes(), 76, 0)).toBe(0);
    await disk.write(9000, new Uint8Array(100).fill(2));
    expect(bit(storage.toBytes(), 76, 0)).toBe(1);
    await disk.close();
    expect(bit(storage.toBytes(), 76, 0)).toBe(0);
  });

  it('a write that meets corrupt metadata sets the corrupt bit and stops writing', async () => {
    // Extended L2 entry 0: subclusters marked both allocated and zero, which only the entry's decode (a write's) sees.
    const bytes = loadFixture('extended-l2.qcow2');
    const l1 = readU64Be(bytes, 40);
    const l2 = (readU32Be(bytes, l1) & 0xffffff) * 2 ** 32 + ((readU32Be(bytes, l1 + 4) & 0xfffffe00) >>> 0);
    writeU32Be(bytes, l2 + 8, readU32Be(bytes, l2 + 12));
    const storage = MemoryStorage.from(bytes, { name: 'c.qcow2' });
    const disk = await openQcow2(storage, { readOnly: false });
    const e = await imageError(disk.write(10, new Uint8Array(5)));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(bit(storage.toBytes(), 76, 1)).toBe(1);
    expect((await imageError(disk.write(70000, new Uint8Array(5)))).message).toMatch(/marked corrupt/);
    await disk.close();
    expect((await imageError(openQcow2(MemoryStorage.from(storage.toBytes(), { name: 'c.qcow2' }), { readOnly: false }))).code).toBe('ERR_IMG_CORRUPT');
  });

  it('an unaligned data cluster entry: the writable open refuses and writes nothing (qemu-img check counts the cluster_size bytes from it as used)', async () => {
    const bytes = loadFixture('refcount-16.qcow2');
    const l1 = readU64Be(bytes, 40);
    const l2 = (readU32Be(bytes, l1) & 0xffffff) * 2 ** 32 + ((readU32Be(bytes, l1 + 4) & 0xfffffe00) >>> 0);
    writeU32Be(bytes, l2 + 4, (readU32Be(bytes, l2 + 4) + 512) >>> 0);
    const storage = MemoryStorage.from(bytes, { name: 'c.qcow2' });
    const e = await imageError(openQcow2(storage, { readOnly: false }));
    // Its second cluster is the next entry's data cluster, with refcount 1.
    expect(e.message).toMatch(/refusing to open for writing: data cluster is used 2 times at 0x[0-9a-f]+ \(entry at 0x[0-9a-f]+\) with refcount 1/);
    expect(bytesEqual(storage.toBytes(), bytes)).toBe(true);
  });

  it('read-only images refuse every write path', async () => {
    const disk = await openQcow2(MemoryStorage.from(loadFixture('refcount-16.qcow2')));
    for (const p of [disk.write(0, new Uint8Array(1)), disk.writeZeroes(0, 1), disk.discard(0, 1), disk.writeCompressed(0, new Uint8Array(4096)), disk.resize(1 << 20)]) {
      expect((await imageError(p)).code).toBe('ERR_IMG_READ_ONLY');
    }
  });
});

describe('resize', () => {
  it('grows (moving the L1 table), shrinks only when asked, and regrown space reads as zeros', async () => {
    const storage = new MemoryStorage({ name: 'r.qcow2' });
    const disk = await createQcow2(storage, { size: 64 * 1024, clusterSize: 512 });
    const data = seededBytes(64 * 1024, 3);
    await disk.write(0, data);
    const l1Before = readU64Be(storage.toBytes(), 40);
    await disk.resize(4 * 1024 * 1024);
    expect(readU64Be(storage.toBytes(), 40)).not.toBe(l1Before);
    expect(readU32Be(storage.toBytes(), 36)).toBe((4 * 1024 * 1024) / (512 * 64));
    await disk.write(4 * 1024 * 1024 - 700, data.subarray(0, 700));
    expect(bytesEqual(await disk.read(0, 64 * 1024), data)).toBe(true);
    expect((await imageError(disk.resize(1024))).code).toBe('ERR_IMG_INVALID_ARG');
    expect((await imageError(disk.resize(1000, { shrink: true }))).code).toBe('ERR_IMG_INVALID_ARG');
    // 512-byte clusters map 32 KiB per L1 entry: 32 MiB of L1 entries is 128 GiB.
    expect((await imageError(disk.resize(256 * 2 ** 30))).message).toMatch(/32 MiB/);
    await disk.resize(10 * 1024 + 512, { shrink: true });
    expect(disk.size).toBe(10 * 1024 + 512);
    await disk.resize(64 * 1024);
    const back = await disk.read(0, 64 * 1024);
    expect(bytesEqual(back.subarray(0, 10 * 1024 + 512), data.subarray(0, 10 * 1024 + 512))).toBe(true);
    expect(back.subarray(10 * 1024 + 512).every((b) => b === 0)).toBe(true);
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });

  it('an empty (size 0) image has no L1 table, and grows cleanly', async () => {
    const storage = new MemoryStorage({ name: 'z.qcow2' });
    const disk = await createQcow2(storage, { size: 0 });
    expect(readU64Be(storage.toBytes(), 40)).toBe(0);
    await disk.resize(1 << 20);
    await disk.write(5, new Uint8Array([1, 2, 3]));
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });

  it('growing over a longer backing file shows zeros, not the backing data', async () => {
    const base = MemoryStorage.from(new Uint8Array(256 * 1024).fill(9), { name: 'b.raw' });
    const disk = await createQcow2(new MemoryStorage(), { size: 64 * 1024, clusterSize: '4k', backingFile: 'b.raw', backingFormat: 'raw', resolver: async () => base });
    expect((await disk.read(0, 1))[0]).toBe(9);
    await disk.resize(128 * 1024);
    expect((await disk.read(64 * 1024, 64 * 1024)).every((b) => b === 0)).toBe(true);
  });
});

describe('refcount structures grow', () => {
  it('512-byte clusters with 64-bit refcounts: new self-describing blocks and a moved, larger refcount table', async () => {
    const storage = new MemoryStorage({ name: 'g.qcow2' });
    const disk = await createQcow2(storage, { size: 8 << 20, clusterSize: 512, refcountBits: 64 });
    const before = { table: readU64Be(storage.toBytes(), 48), clusters: readU32Be(storage.toBytes(), 56) };
    const data = seededBytes(6 << 20, 4);
    for (let at = 0; at < data.length; at += 1 << 20) await disk.write(at, data.subarray(at, at + (1 << 20)));
    expect(bytesEqual(await disk.read(0, data.length), data)).toBe(true);
    await disk.close();
    const after = { table: readU64Be(storage.toBytes(), 48), clusters: readU32Be(storage.toBytes(), 56) };
    // One table cluster covers 64 blocks of 64 clusters: 2 MiB of file. 6 MiB of data needs more.
    expect(after.clusters).toBeGreaterThan(before.clusters);
    expect(after.table).not.toBe(before.table);
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });
});

describe('writeCompressed', () => {
  it('stores compressible clusters compressed, others uncompressed, and needs whole clusters', async () => {
    const disk = await createQcow2(new MemoryStorage({ name: 'c.qcow2' }), { size: 64 * 1024, clusterSize: '4k' });
    await disk.writeCompressed(0, new Uint8Array(8192).fill(7));
    await disk.writeCompressed(8192, seededBytes(4096, 1));
    // The L2 entry of the uncompressed cluster lands with the flush (Scheduler.afterBarrier).
    await disk.flush();
    const check = await checkQcow2(MemoryStorage.from((disk.storage as MemoryStorage).toBytes()));
    expect(check.compressedClusters).toBe(2);
    expect(check.allocatedClusters).toBe(3);
    expect((await imageError(disk.writeCompressed(100, new Uint8Array(4096)))).code).toBe('ERR_IMG_INVALID_ARG');
    expect((await imageError(disk.writeCompressed(0, new Uint8Array(100)))).code).toBe('ERR_IMG_INVALID_ARG');
    // Two compressed clusters share one host cluster (refcount 2).
    expect(check.corruptions + check.leaks).toBe(0);
  });

  it('packs compressed clusters byte after byte, as qemu does', async () => {
    const storage = new MemoryStorage({ name: 'p.qcow2' });
    const disk = await createQcow2(storage, { size: 64 * 1024, clusterSize: '4k' });
    const text = new TextEncoder().encode('packed compressed clusters '.repeat(700)).subarray(0, 4 * 4096);
    await disk.writeCompressed(0, text);
    await disk.close();
    const bytes = storage.toBytes();
    const l1 = bytes.subarray(Number(readU64Be(bytes, 40)), Number(readU64Be(bytes, 40)) + 8);
    const l2At = l1EntryOffset(l1, 0, 4096, 'p.qcow2', 0);
    const geometry = { clusterBits: 12, clusterSize: 4096, extendedL2: false, zeroFlag: true, dataFile: false };
    const hosts = [0, 1, 2, 3].map((i) => decodeL2Entry(bytes.subarray(l2At, l2At + 4096), i, geometry, 'p.qcow2', l2At));
    for (const h of hosts) expect(h.type).toBe('compressed');
    // Each cluster starts where the compressed bytes before it end, not at the next sector.
    const starts = hosts.map((h) => (h.type === 'compressed' ? h.host : -1));
    expect(starts.some((at) => at % 512 !== 0)).toBe(true);
    const reopened = await openQcow2(MemoryStorage.from(bytes));
    expect(bytesEqual(await reopened.read(0, text.length), text)).toBe(true);
    expect(await checkQcow2(MemoryStorage.from(bytes))).toMatchObject({ compressedClusters: 4, corruptions: 0, leaks: 0 });
  });

  it('zstd images store zstd clusters (node:zlib or WebAssembly libzstd)', async () => {
    const storage = new MemoryStorage({ name: 'z.qcow2' });
    const disk = await createQcow2(storage, { size: 64 * 1024, clusterSize: '4k', compressionType: 'zstd' });
    const text = new TextEncoder().encode('compressible text '.repeat(1000)).subarray(0, 8192);
    await disk.writeCompressed(8192, text);
    expect(bytesEqual(await disk.read(8192, 8192), text)).toBe(true);
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect(check).toMatchObject({ compressedClusters: 2, corruptions: 0, leaks: 0 });
  });
});

describe('create options', () => {
  it('reads strings and typed values alike', () => {
    expect(parseCreateOptions({ size: '1G' as unknown as number, clusterSize: '4k', refcountBits: '8', lazyRefcounts: 'on', extendedL2: 'off', compressionType: 'zstd' })).toMatchObject({
      size: 2 ** 30,
      clusterBits: 12,
      refcountOrder: 3,
      lazyRefcounts: true,
      extendedL2: false,
      compressionType: 1,
      version: 3,
    });
    expect(parseCreateOptions({ size: 1000, compat: '0.10' })).toMatchObject({ size: 1024, version: 2, headerLength: 72 });
  });

  it('refuses what qemu refuses', () => {
    const bad = [
      { size: 1, clusterSize: '3k' },
      { size: 1, clusterSize: '4M' },
      { size: 1, refcountBits: 3 },
      { size: 1, compat: 'v2', lazyRefcounts: true },
      { size: 1, compat: 'v2', refcountBits: 8 },
      { size: 1, extendedL2: true, clusterSize: '4k' },
      { size: 1, compressionType: 'lz4' },
      { size: 1, compressionType: 'zstd', headerLength: 104 },
      { size: 1, dataFileRaw: true },
      { size: 1, preallocation: 'sometimes' },
      { size: 1, lazyRefcounts: 'maybe' },
    ];
    for (const b of bad) expect(() => parseCreateOptions(b as never), JSON.stringify(b)).toThrow(expect.objectContaining({ code: 'ERR_IMG_INVALID_ARG' }));
  });

  it('a backing file needs a resolver', async () => {
    expect((await imageError(createQcow2(new MemoryStorage(), { size: 1 << 20, backingFile: 'x.qcow2' }))).code).toBe('ERR_IMG_INVALID_ARG');
  });
});

/**
 * A storage that records every write, truncate and flush, so that a test
 * can rebuild the file as it was at any point: what a crash would leave.
 */
class RecordingStorage extends MemoryStorage {
  log: Array<{ kind: 'write'; at: number; data: Uint8Array } | { kind: 'truncate'; size: number } | { kind: 'flush' }> = [];
  override async write(position: number, data: Uint8Array): Promise<void> {
    this.log.push({ kind: 'write', at: position, data: data.slice() });
    await super.write(position, data);
  }
  override async truncate(size: number): Promise<void> {
    this.log.push({ kind: 'truncate', size });
    await super.truncate(size);
  }
  override async flush(): Promise<void> {
    this.log.push({ kind: 'flush' });
    await super.flush();
  }
}

async function replay(initial: Uint8Array, log: RecordingStorage['log'], upTo: number): Promise<Storage> {
  const s = MemoryStorage.from(initial, { name: 'crash.qcow2' });
  for (const e of log.slice(0, upTo)) {
    if (e.kind === 'write') await s.write(e.at, e.data);
    else if (e.kind === 'truncate') await s.truncate(e.size);
  }
  return s;
}

describe('crash safety', () => {
  for (const [name, options] of [
    ['4k clusters', { clusterSize: '4k' }],
    ['512-byte clusters, 64-bit refcounts (refcount growth)', { clusterSize: 512, refcountBits: 64 }],
    ['extended L2', { clusterSize: '16k', extendedL2: true }],
  ] as const) {
    it(`${name}: a crash after any write leaves an image with no corruption`, async () => {
      const base = await createQcow2(new MemoryStorage({ name: 'x' }), { size: 2 << 20, ...options });
      await base.write(0, seededBytes(300 * 1024, 5));
      await base.close();
      const initial = (base.storage as MemoryStorage).toBytes();
      const storage = new RecordingStorage({ name: 'crash.qcow2', data: initial });
      const disk = await openQcow2(storage, { readOnly: false, resolver: memoryResolver });
      await disk.write(100 * 1024 + 7, seededBytes(200 * 1024, 6));
      await disk.writeZeroes(10 * 1024, 50 * 1024);
      await disk.discard(150 * 1024, 30 * 1024);
      await disk.writeCompressed(1 << 20, new Uint8Array(64 * 1024).fill(3));
      await disk.write((2 << 20) - 5000, seededBytes(5000, 8));
      await disk.close();
      const log = storage.log;
      const points = new Set<number>();
      for (let i = 0; i <= log.length; i += Math.max(1, Math.floor(log.length / 60))) points.add(i);
      log.forEach((e, i) => e.kind === 'flush' && points.add(i));
      points.add(log.length);
      for (const i of points) {
        const s = await replay(initial, log, i);
        const check = await checkQcow2(s);
        expect(check.corruptions, `after ${i} of ${log.length} logged operations: ${check.messages.slice(0, 3).join('; ')}`).toBe(0);
      }
    });
  }
});

/** A storage whose reads at one offset wait until released. */
class GatedStorage extends MemoryStorage {
  gateAt = -1;
  #open: Array<() => void> = [];
  entered = 0;
  release(): void {
    for (const r of this.#open.splice(0)) r();
  }
  override async readInto(position: number, target: Uint8Array): Promise<number> {
    if (position === this.gateAt) {
      this.entered++;
      await new Promise<void>((r) => this.#open.push(r));
    }
    return super.readInto(position, target);
  }
}

describe('resize racing writes', () => {
  it('writes issued around resizes that move the L1 table all land (smoke test: timing rarely opens the race the gate closes)', async () => {
    // Every I/O yields to the event loop, so that writes and the resize interleave.
    class SlowStorage extends MemoryStorage {
      n = 0;
      async #pause(): Promise<void> {
        await new Promise((r) => setTimeout(r, this.n++ % 3));
      }
      override async write(p: number, d: Uint8Array): Promise<void> {
        await this.#pause();
        await super.write(p, d);
      }
      override async readInto(p: number, t: Uint8Array): Promise<number> {
        await this.#pause();
        return super.readInto(p, t);
      }
      override async flush(): Promise<void> {
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    const storage = new SlowStorage({ name: 'rr.qcow2' });
    const disk = await createQcow2(storage, { size: 1 << 20, clusterSize: 512 });
    const model = new Uint8Array(4 << 20);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) {
      const d = seededBytes(3000, i + 1);
      const at = (i * 33000) % ((1 << 20) - 3000);
      model.set(d, at);
      jobs.push(disk.write(at, d));
      if (i % 10 === 5) jobs.push(disk.resize((1 << 20) * (1 + Math.ceil(i / 10))));
    }
    await Promise.all(jobs);
    const tail = seededBytes(5000, 99);
    await disk.write((4 << 20) - 5000, tail);
    model.set(tail, (4 << 20) - 5000);
    expect(bytesEqual(await disk.read(0, 4 << 20), model)).toBe(true);
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });
});

describe('reads racing writes', () => {
  it('a cluster freed while a read of it is in flight is not reused before the read ends', async () => {
    const storage = new GatedStorage({ name: 'gate.qcow2' });
    const disk = await createQcow2(storage, { size: 1 << 20, clusterSize: '4k' });
    await disk.write(0, new Uint8Array(4096).fill(0xaa));
    // The host cluster of guest cluster 0, from the public extents (hostOffsets).
    let host: number | undefined;
    for await (const e of disk.extents({ offset: 0, length: 4096, hostOffsets: true })) host ??= e.hostOffset;
    expect(host).toBeGreaterThan(0);
    storage.gateAt = host!;
    const read = disk.read(0, 4096);
    while (!storage.entered) await new Promise((r) => setTimeout(r, 1));
    await disk.discard(0, 4096);
    await disk.write(65536, new Uint8Array(4096).fill(0xbb));
    storage.release();
    expect((await read).every((b) => b === 0xaa)).toBe(true);
    expect((await disk.read(65536, 4096)).every((b) => b === 0xbb)).toBe(true);
    await disk.close();
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
  });
});
