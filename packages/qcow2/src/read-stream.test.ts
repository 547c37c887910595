import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, bytesEqual, writeU32Be, type Disk, type StreamSource } from '@img/block';
import { chunked, collectBytes, describeQemu, qemuCheck, qemuCompare, seededBytes, tempDir } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { qcow2Driver } from './driver.js';
import { createQcow2Stream } from './stream.js';
import { readQcow2Stream } from './read-stream.js';
import { fixtureNames, loadFixture, memoryResolver } from '../test/fixtures.js';

const collect = collectBytes;

/** Applies a StreamSource's pieces to a flat buffer, checking that they never overlap. */
async function flatten(src: StreamSource): Promise<Uint8Array> {
  const parts: Array<{ offset: number; data: Uint8Array }> = [];
  for await (const p of src.pieces) parts.push(p);
  const out = new Uint8Array(src.size);
  const sorted = [...parts].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) expect(sorted[i]!.offset).toBeGreaterThanOrEqual(sorted[i - 1]!.offset + sorted[i - 1]!.data.length);
  for (const p of parts) {
    expect(p.offset + p.data.length).toBeLessThanOrEqual(src.size);
    out.set(p.data, p.offset);
  }
  return out;
}

async function codeOf(p: Promise<StreamSource>): Promise<string> {
  try {
    const r = await p;
    for await (const _ of r.pieces);
  } catch (e) {
    if (ImageError.isInstance(e)) return `${e.code} ${e.message}`;
    throw e;
  }
  return 'ok';
}

async function sample(): Promise<Disk> {
  const d = await createQcow2(new MemoryStorage({ name: 's.qcow2' }), { size: 5 * 1024 * 1024 + 512, clusterSize: '4k' });
  await d.write(1000, seededBytes(300_000, 1));
  await d.write(2 * 1024 * 1024, new Uint8Array(3 * 4096)); // allocated clusters that hold only zeros
  await d.write(3 * 1024 * 1024 + 4096, seededBytes(5000, 2));
  await d.writeCompressed(4 * 1024 * 1024, new Uint8Array(8192).fill(7));
  await d.write(d.size - 700, seededBytes(700, 3)); // the partial cluster at the end
  return d;
}

describe('createQcow2Stream / qcow2Driver.stream', () => {
  it('announces the exact length before the first chunk; the image reads back as the source and checks clean', async () => {
    const d = await sample();
    const want = await d.read(0, d.size);
    for (const options of [{}, { clusterSize: '512', refcountBits: '1' }, { clusterSize: 65536, compat: 'v2' }, { extendedL2: 'on', clusterSize: '32k' }, { detectZeroes: 'on' }, { detectZeroes: true, lazyRefcounts: 'on', refcountBits: 64 }]) {
      const s = await qcow2Driver.stream!(d, options);
      const bytes = await collect(s.chunks);
      expect(bytes.length, JSON.stringify(options)).toBe(s.length);
      const out = await openQcow2(MemoryStorage.from(bytes, { name: 'o.qcow2' }));
      expect(out.size).toBe(d.size);
      expect(bytesEqual(await out.read(0, out.size), want), JSON.stringify(options)).toBe(true);
      expect(await checkQcow2(MemoryStorage.from(bytes))).toMatchObject({ corruptions: 0, leaks: 0 });
    }
  });

  it('detect_zeroes leaves all-zero clusters unallocated', async () => {
    const d = await sample();
    const plain = await createQcow2Stream(d, { clusterSize: '4k' });
    const sparse = await createQcow2Stream(d, { clusterSize: '4k', detectZeroes: 'on' });
    expect(plain.length - sparse.length).toBe(3 * 4096);
    const off = await createQcow2Stream(d, { clusterSize: '4k', detectZeroes: 'off', preallocation: 'off', dataFileRaw: false } as Record<string, unknown>);
    expect(off.length).toBe(plain.length);
  });

  it('refuses what a stand-alone stream cannot hold, as ERR_IMG_INVALID_ARG', async () => {
    const d = await sample();
    for (const o of [{ backingFile: 'x' }, { dataFile: 'd' }, { preallocation: 'full' }, { clusterSize: '3000' }, { detectZeroes: 'maybe' }]) {
      const e = await qcow2Driver.stream!(d, o).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(ImageError.isInstance(e) && e.code, JSON.stringify(o)).toBe('ERR_IMG_INVALID_ARG');
    }
  });
});

describe('readQcow2Stream / qcow2Driver.readStream', () => {
  it('our streams decode to the source, whatever the chunking and layout', async () => {
    const d = await sample();
    const want = await d.read(0, d.size);
    for (const options of [{}, { clusterSize: '512', refcountBits: 1 }, { compat: 'v2' }, { extendedL2: true, clusterSize: '64k' }, { detectZeroes: 'on', clusterSize: '2M' }] as const) {
      const bytes = await collect((await createQcow2Stream(d, options)).chunks);
      for (const seed of [1, 2]) {
        const src = await qcow2Driver.readStream!(chunked(bytes, seed));
        expect(src.size).toBe(d.size);
        expect(bytesEqual(await flatten(src), want), `${JSON.stringify(options)} ${seed}`).toBe(true);
      }
    }
  });

  it('decodes every committed stand-alone fixture as openQcow2 reads it, or refuses it as not streamable', async () => {
    const seen: Record<string, string> = {};
    for (const name of fixtureNames()) {
      const bytes = loadFixture(name);
      const disk = await openQcow2(MemoryStorage.from(bytes, { name }), { resolver: memoryResolver });
      try {
        const src = await readQcow2Stream(chunked(bytes, 3));
        const got = await flatten(src);
        expect(src.size, name).toBe(disk.size);
        expect(bytesEqual(got, await disk.read(0, disk.size)), name).toBe(true);
        seen[name] = 'ok';
      } catch (e) {
        if (!ImageError.isInstance(e)) throw e;
        expect(e.code, `${name}: ${e.message}`).toBe('ERR_IMG_UNSUPPORTED');
        seen[name] = e.message.includes('backing file') ? 'backing' : e.message.includes('data file') ? 'data-file' : 'order';
      } finally {
        await disk.close();
      }
    }
    // Every qemu-written image without another file decodes.
    for (const name of ['v3-64k.qcow2', 'v2-4k.qcow2', 'compressed-zstd-512.qcow2', 'compressed-zlib-64k.qcow2', 'extended-l2.qcow2', 'refcount-1.qcow2', 'zero-clusters.qcow2']) expect(seen[name], name).toBe('ok');
    expect(seen['chain-top.qcow2']).toBe('backing');
    expect(seen['data-file.qcow2']).toBe('data-file');
  });

  it('a cluster placed before the L2 table that maps it is ERR_IMG_UNSUPPORTED naming it and suggesting a file', async () => {
    const cs = 4096;
    const storage = new MemoryStorage({ name: 'o.qcow2' });
    const d = await createQcow2(storage, { size: 8 << 20, clusterSize: cs });
    const cover = (cs / 8) * cs; // guest bytes per L2 table
    await d.write(0, seededBytes(cs, 1)); // table 0, then its data cluster
    await d.write(cover, seededBytes(cs, 2)); // table 1, then its data
    await d.discard(0, cs); // frees the first data cluster
    await d.write(cover + cs, seededBytes(cs, 3)); // table 1 gets the freed cluster, which lies before it
    await d.close();
    const message = await codeOf(readQcow2Stream(chunked(storage.toBytes())));
    expect(message).toMatch(/^ERR_IMG_UNSUPPORTED .*guest offset 0x201000 .*before the L2 table.*save it to a file/);
  });

  it('refuses backing files, external data files, encryption and unknown features; bad or short streams are corrupt', async () => {
    const d = await sample();
    const good = await collect((await createQcow2Stream(d)).chunks);
    const withCrypt = good.slice();
    writeU32Be(withCrypt, 32, 2);
    expect(await codeOf(readQcow2Stream(chunked(withCrypt)))).toMatch(/^ERR_IMG_UNSUPPORTED .*an encrypted image cannot be read as a stream/);
    const unknownBit = good.slice();
    writeU32Be(unknownBit, 76, 1 << 20);
    expect(await codeOf(readQcow2Stream(chunked(unknownBit)))).toMatch(/^ERR_IMG_UNSUPPORTED .*bit 20/);
    expect(await codeOf(readQcow2Stream(chunked(loadFixture('chain-top.qcow2'))))).toMatch(/^ERR_IMG_UNSUPPORTED .*backing file/);
    expect(await codeOf(readQcow2Stream(chunked(loadFixture('data-file.qcow2'))))).toMatch(/^ERR_IMG_UNSUPPORTED .*data file/);
    expect(await codeOf(readQcow2Stream(chunked(good.subarray(0, 50))))).toMatch(/^ERR_IMG_CORRUPT/);
    expect(await codeOf(readQcow2Stream(chunked(good.subarray(0, 70_000))))).toMatch(/^ERR_IMG_CORRUPT .*ends/);
    const hugeL1 = good.slice();
    writeU32Be(hugeL1, 36, 5_000_000);
    expect(await codeOf(readQcow2Stream(chunked(hugeL1)))).toMatch(/^ERR_IMG_CORRUPT .*32 MiB/);
    const l1OnHeader = good.slice();
    const l1At = new DataView(good.buffer).getUint32(44);
    writeU32Be(l1OnHeader, l1At + 4, 0);
    writeU32Be(l1OnHeader, l1At, 0x80000000);
    writeU32Be(l1OnHeader, l1At + 4, 0x200);
    expect(await codeOf(readQcow2Stream(chunked(l1OnHeader)))).toMatch(/^ERR_IMG_CORRUPT/);
  });
});

describeQemu('streams and qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  let raw: string;
  let want: Uint8Array;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-rstream-'));
    raw = join(dir, 'src.raw');
    // 6 MiB: random data, text, zeros and a partial tail.
    want = new Uint8Array(6 * 1024 * 1024 + 4096);
    want.set(seededBytes(700_000, 7), 100_000);
    const text = new TextEncoder().encode('the quick brown fox jumps over the lazy dog 0123456789\n'.repeat(40_000));
    want.set(text.subarray(0, 2 * 1024 * 1024), 3 * 1024 * 1024);
    want.set(seededBytes(3000, 8), want.length - 3000);
    writeFileSync(raw, want);
  });
  afterAll(() => cleanup());

  for (const args of [[], ['-c'], ['-c', '-o', 'compression_type=zstd'], ['-o', 'cluster_size=4k'], ['-c', '-o', 'cluster_size=4k'], ['-c', '-o', 'cluster_size=512,compression_type=zstd'], ['-o', 'extended_l2=on,cluster_size=64k']]) {
    it(`qemu-img convert -O qcow2 ${args.join(' ')} decodes identically`, async () => {
      const out = join(dir, `q${args.join('').replace(/[^a-z0-9]/g, '')}.qcow2`);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ...args, raw, out]);
      const src = await readQcow2Stream(chunked(new Uint8Array(readFileSync(out)), 5));
      expect(src.size).toBe(want.length);
      expect(bytesEqual(await flatten(src), want)).toBe(true);
    });
  }

  it('the streamed output saved to a file passes qemu-img check and compare, and has the announced length', async () => {
    const d = await openQcow2(MemoryStorage.from(new Uint8Array(0)), {}).catch(() => undefined);
    expect(d).toBeUndefined();
    const src = await createQcow2(new MemoryStorage(), { size: want.length });
    await src.write(0, want);
    for (const options of [{ detectZeroes: 'on' }, { clusterSize: '512', extendedL2: 'off', refcountBits: '2' }]) {
      const s = await qcow2Driver.stream!(src, options);
      const bytes = await collect(s.chunks);
      expect(bytes.length).toBe(s.length);
      const out = join(dir, 'streamed.qcow2');
      writeFileSync(out, bytes);
      expect(qemuCheck(out).status).toBe(0);
      expect(qemuCompare(raw, out, 'raw', 'qcow2')).toBe(true);
    }
  });
});
