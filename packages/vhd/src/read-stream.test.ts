import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, type StreamSource } from '@img/block';
import { chunked, collectBytes, describeQemu, qemuCompare, qemuInfo, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { vhdChecksum } from './checksum.js';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { vhdDriver } from './driver.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';
import { readVhdStream } from './read-stream.js';
import { createVhdStream } from './stream.js';
import { readVhdLayout } from './read-layout.js';

const collect = collectBytes;

/** Applies a StreamSource's pieces to a flat buffer, checking they never overlap and come in increasing order per block. */
async function flatten(src: StreamSource): Promise<{ bytes: Uint8Array; pieces: number }> {
  const parts: Array<{ offset: number; data: Uint8Array }> = [];
  for await (const p of src.pieces) parts.push(p);
  expect(src.size).toBeGreaterThanOrEqual(0);
  const out = new Uint8Array(src.size);
  const sorted = [...parts].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) expect(sorted[i]!.offset).toBeGreaterThanOrEqual(sorted[i - 1]!.offset + sorted[i - 1]!.data.length);
  for (const p of parts) out.set(p.data.subarray(0, Math.max(0, Math.min(p.data.length, src.size - p.offset))), p.offset);
  return { bytes: out, pieces: parts.length };
}

async function sample(blockSize = 65536): Promise<VhdDisk> {
  const d = await createVhd(new MemoryStorage({ name: 's.vhd' }), { size: 3_000_000 + 1024, blockSize });
  await d.write(0, seededBytes(70_000, 1));
  await d.write(1 << 20, new Uint8Array(Math.min(blockSize * 2, 1 << 17))); // allocated blocks that hold only zeros
  await d.write(2_500_123 - (2_500_123 % 512), seededBytes(5000, 2));
  await d.write(d.size - 700, seededBytes(700, 3)); // the partial block at the end
  return d;
}

function u32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0, false);
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    const r = await p;
    if (r && typeof r === 'object' && 'pieces' in r) for await (const _ of (r as StreamSource).pieces);
  } catch (e) {
    if (ImageError.isInstance(e)) return `${e.code} ${e.message}`;
    throw e;
  }
  return 'ok';
}

describe('createVhdStream / vhdDriver.stream', () => {
  it('announces the exact length before the first chunk, for dynamic and fixed, with and without zero detection', async () => {
    const d = await sample();
    for (const options of [{}, { subformat: 'fixed' }, { block_size: '4K' }, { detect_zeroes: 'on' }, { type: 'dynamic', blockSize: 512, detectZeroes: true }]) {
      const s = await vhdDriver.stream!(d, options);
      const bytes = await collect(s.chunks);
      expect(bytes.length, JSON.stringify(options)).toBe(s.length);
      const out = await openVhd(MemoryStorage.from(bytes, { name: 'o.vhd' }));
      expect(out.size).toBe(d.size);
      expect(Buffer.from(await out.read(0, out.size)).equals(Buffer.from(await d.read(0, d.size)))).toBe(true);
      expect(await checkVhd(MemoryStorage.from(bytes))).toMatchObject({ corruptions: 0, leaks: 0 });
    }
  });

  it('zero detection leaves all-zero blocks unallocated', async () => {
    const d = await sample();
    const plain = await openVhd(MemoryStorage.from(await collect((await createVhdStream(d, { blockSize: 65536 })).chunks)));
    const sparse = await openVhd(MemoryStorage.from(await collect((await createVhdStream(d, { blockSize: 65536, detectZeroes: true })).chunks)));
    const used = async (x: VhdDisk) => (await readVhdLayout(x.storage)).bat.filter((e) => e !== 0xffffffff).length;
    expect((await used(plain)) - (await used(sparse))).toBe(2);
  });

  it('refuses differencing and force_size, and bad block sizes, as ERR_IMG_INVALID_ARG', async () => {
    const d = await sample();
    for (const o of [{ subformat: 'differencing' }, { force_size: 'on' }, { block_size: '3000' }, { subformat: 'qcow' }]) {
      expect(await codeOf(vhdDriver.stream!(d, o))).toMatch(/^ERR_IMG_INVALID_ARG/);
    }
    // 40 GiB of 512-byte blocks: a BAT of 80 Mi entries, beyond what any reader accepts (and a 320 MiB table).
    const big = await openVhd(MemoryStorage.from(new Uint8Array(readFileSync(join(testImagesDir, 'vhd/dynamic-40g.vhd')))));
    expect(await codeOf(vhdDriver.stream!(big, { block_size: '512' }))).toMatch(/^ERR_IMG_INVALID_ARG .*BAT entries/);
    expect(await codeOf(createVhd(new MemoryStorage(), { size: big.size, blockSize: 512 }))).toMatch(/^ERR_IMG_INVALID_ARG .*BAT entries/);
    const small = await createVhd(new MemoryStorage(), { size: 1 << 20, blockSize: 512 });
    expect(await codeOf(small.resize(big.size))).toMatch(/^ERR_IMG_INVALID_ARG .*BAT entries/);
  });
});

describe('readVhdStream / vhdDriver.readStream', () => {
  it('our streamed dynamic and fixed images decode to the source, whatever the chunking', async () => {
    for (const blockSize of [512, 4096, 2 * 1024 * 1024]) {
      const d = await sample(blockSize);
      const want = await d.read(0, d.size);
      for (const type of ['dynamic', 'fixed'] as const) {
        const s = await createVhdStream(d, { type, blockSize });
        const bytes = await collect(s.chunks);
        for (const seed of [1, 2]) {
          const src = await vhdDriver.readStream!(chunked(bytes, seed));
          if (type === 'dynamic') expect(src.size).toBe(d.size);
          else expect(src.size).toBe(-1); // known at the end of a fixed disk's stream
          const got = await flatten(src);
          expect(src.size).toBe(d.size);
          expect(Buffer.from(got.bytes).equals(Buffer.from(want)), `${type} ${blockSize}`).toBe(true);
        }
      }
    }
  });

  it('decodes the committed qemu-made dynamic and fixed fixtures as openVhd reads them', async () => {
    for (const name of ['dynamic-default', 'dynamic-force-size', 'dynamic-40g', 'fixed-default', 'fixed-force-size']) {
      const bytes = new Uint8Array(readFileSync(join(testImagesDir, `vhd/${name}.vhd`)));
      const disk = await openVhd(MemoryStorage.from(bytes));
      const src = await readVhdStream(chunked(bytes, 3));
      const parts: Array<{ offset: number; data: Uint8Array }> = [];
      for await (const p of src.pieces) parts.push(p);
      expect(src.size, name).toBe(disk.size);
      for (const p of parts) {
        const n = Math.min(p.data.length, disk.size - p.offset);
        expect(Buffer.from(p.data.subarray(0, n)).equals(Buffer.from(await disk.read(p.offset, n))), name).toBe(true);
      }
      // Everything outside the pieces reads as zeros in the image.
      const covered = parts.reduce((a, p) => a + Math.min(p.data.length, disk.size - p.offset), 0);
      let dataBytes = 0;
      for await (const e of disk.extents()) if (e.kind === 'data') dataBytes += e.length;
      expect(covered).toBeGreaterThanOrEqual(Math.min(dataBytes, 64 << 20));
    }
  });

  it('a differencing disk is ERR_IMG_UNSUPPORTED (it needs its parent)', async () => {
    const parent = await createVhd(new MemoryStorage({ name: 'p.vhd' }), { size: 1 << 20, blockSize: 4096 });
    const cs = new MemoryStorage({ name: 'c.vhd' });
    const child = await createVhd(cs, { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: 4096 });
    await child.write(0, seededBytes(4096, 1));
    expect(await codeOf(readVhdStream(chunked(cs.toBytes())))).toMatch(/^ERR_IMG_UNSUPPORTED .*differencing.*file/);
  });

  it('a BAT after the blocks (pointing backwards) is ERR_IMG_UNSUPPORTED naming the first such block and suggesting a file', async () => {
    const d = await sample(4096);
    const bytes = await collect((await createVhdStream(d, { blockSize: 4096 })).chunks);
    const entries = Math.ceil(d.size / 4096);
    const batLen = Math.ceil((entries * 4) / 512) * 512;
    // Move the BAT behind the last block: a valid file, but not a streamable one.
    const end = bytes.length - 512;
    const moved = new Uint8Array(bytes.length + batLen);
    moved.set(bytes.subarray(0, end));
    moved.set(bytes.subarray(1536, 1536 + batLen), end);
    moved.set(bytes.subarray(end), end + batLen);
    u32(moved, 512 + 0x10 + 4, end);
    u32(moved, 512 + 0x24, vhdChecksum(moved.subarray(512, 1536), 0x24));
    const asFile = await openVhd(MemoryStorage.from(moved));
    expect(Buffer.from(await asFile.read(0, d.size)).equals(Buffer.from(await d.read(0, d.size)))).toBe(true);
    const first = (await readVhdLayout(asFile.storage)).bat.findIndex((e) => e !== 0xffffffff);
    const r = await codeOf(readVhdStream(chunked(moved)));
    expect(r).toMatch(new RegExp(`^ERR_IMG_UNSUPPORTED .*BAT entry ${first} points backwards.*save it to a file`));
  });

  it('a fixed disk whose data starts with a dynamic VHD is refused at the end of the stream (openVhd reads it as fixed)', async () => {
    const inner = await collect((await createVhdStream(await sample(4096), { blockSize: 4096 })).chunks);
    const outer = await createVhd(new MemoryStorage({ name: 'o.vhd' }), { type: 'fixed', size: inner.length + 4096 });
    await outer.write(0, inner);
    const bytes = (outer.storage as MemoryStorage).toBytes();
    expect((await openVhd(MemoryStorage.from(bytes))).type).toBe('fixed');
    expect(await codeOf(readVhdStream(chunked(bytes)))).toMatch(/^ERR_IMG_UNSUPPORTED .*fixed disk whose data starts with another VHD/);
  });

  it('blocks stored out of block order are decoded in file order', async () => {
    const d = await createVhd(new MemoryStorage({ name: 'r.vhd' }), { size: 64 * 1024, blockSize: 4096 });
    const model = new Uint8Array(d.size);
    for (const b of [9, 2, 15, 0, 7]) {
      const data = seededBytes(4096, b + 1);
      await d.write(b * 4096, data);
      model.set(data, b * 4096);
    }
    const src = await readVhdStream(chunked((d.storage as MemoryStorage).toBytes()));
    const offsets: number[] = [];
    const out = new Uint8Array(src.size);
    for await (const p of src.pieces) {
      offsets.push(p.offset);
      out.set(p.data, p.offset);
    }
    expect(offsets).toEqual([9, 2, 15, 0, 7].map((b) => b * 4096));
    expect(Buffer.from(out).equals(Buffer.from(model))).toBe(true);
  });

  it('a header claiming 2^26 BAT entries on a short stream allocates nothing like 256 MiB', async () => {
    const d = await createVhd(new MemoryStorage({ name: 'b.vhd' }), { size: 1 << 20, blockSize: 512 });
    const head = (d.storage as MemoryStorage).toBytes().slice(0, 1536 + 4096);
    // 2^26 entries of 512 bytes: a 32 GiB disk (within every bound), its BAT cut after 4 KiB.
    new DataView(head.buffer).setUint32(0x34, 0, false); // current size 2^35 = 8 << 32
    new DataView(head.buffer).setUint32(0x30, 8, false);
    u32(head, 64, vhdChecksum(head.subarray(0, 512), 64));
    u32(head, 512 + 0x1c, 2 ** 26);
    u32(head, 512 + 0x24, vhdChecksum(head.subarray(512, 1536), 0x24));
    expect(new DataView(head.buffer).getUint32(512 + 0x1c, false)).toBe(2 ** 26);
    const before = process.memoryUsage().arrayBuffers;
    expect(await codeOf(readVhdStream(chunked(head)))).toMatch(/^ERR_IMG_CORRUPT .*ends.*inside the BAT/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * 1024 * 1024);
  });

  it('damage and truncation are ERR_IMG_CORRUPT, never a hang or a crash', async () => {
    const d = await sample(4096);
    const good = await collect((await createVhdStream(d, { blockSize: 4096 })).chunks);
    const fixed = await collect((await createVhdStream(d, { type: 'fixed' })).chunks);
    const cases: Array<[string, Uint8Array]> = [
      [
        'footer checksum',
        (() => {
          const b = good.slice();
          b[0x30] = b[0x30]! ^ 1;
          return b;
        })(),
      ],
      [
        'header checksum',
        (() => {
          const b = good.slice();
          b[512 + 0x3c] = 1;
          return b;
        })(),
      ],
      [
        'block size 3000',
        (() => {
          const b = good.slice();
          u32(b, 512 + 0x20, 3000);
          u32(b, 512 + 0x24, vhdChecksum(b.subarray(512, 1536), 0x24));
          return b;
        })(),
      ],
      [
        'huge BAT',
        (() => {
          const b = good.slice();
          u32(b, 512 + 0x1c, 0xfffffff0);
          u32(b, 512 + 0x24, vhdChecksum(b.subarray(512, 1536), 0x24));
          return b;
        })(),
      ],
      [
        'BAT into the header',
        (() => {
          const b = good.slice();
          u32(b, 1536, 1);
          return b;
        })(),
      ],
      [
        'overlapping blocks',
        (() => {
          const b = good.slice();
          u32(b, 1536 + 4, new DataView(b.buffer).getUint32(1536, false));
          return b;
        })(),
      ],
      ['truncated in a block', good.slice(0, 1536 + 2048 + 3000)],
      ['truncated in the BAT', good.slice(0, 1600)],
      ['only 100 bytes', good.slice(0, 100)],
      ['fixed without its footer', fixed.slice(0, fixed.length - 512)],
    ];
    for (const [name, bytes] of cases) expect(await codeOf(readVhdStream(chunked(bytes))), name).toMatch(/^ERR_IMG_CORRUPT/);
  });
});

describeQemu('streams and qemu-img', () => {
  const tmp = tempDir('vhd-rstream-');
  afterAll(() => tmp.cleanup());

  it('streamed images: qemu-img info and compare agree with the source', async () => {
    const d = await sample();
    const raw = join(tmp.path, 'src.raw');
    writeFileSync(raw, await d.read(0, d.size));
    for (const options of [{}, { subformat: 'fixed' }, { detect_zeroes: 'on', block_size: '512K' }]) {
      const s = await vhdDriver.stream!(d, options);
      const bytes = await collect(s.chunks);
      expect(bytes.length).toBe(s.length);
      const out = join(tmp.path, `s${Object.keys(options).join('-')}.vhd`);
      writeFileSync(out, bytes);
      expect(qemuInfo(out, 'vpc')['virtual-size']).toBe(d.size);
      expect(qemuCompare(raw, out, 'raw', 'vpc')).toBe(true);
    }
  });

  it('dynamic VHDs made by qemu-img convert decode identically from a stream', async () => {
    const model = new Uint8Array(5 * 1024 * 1024);
    model.set(seededBytes(300_000, 7), 10_000);
    model.set(seededBytes(70_000, 8), 4 * 1024 * 1024 + 512);
    const raw = join(tmp.path, 'q.raw');
    writeFileSync(raw, model);
    for (const [name, extra] of [
      ['q.vhd', []],
      ['q-force.vhd', ['-o', 'force_size=on']],
      ['q-fixed.vhd', ['-o', 'subformat=fixed']],
    ] as const) {
      const out = join(tmp.path, name);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', ...extra, raw, out]);
      const bytes = new Uint8Array(readFileSync(out));
      const disk = await openVhd(MemoryStorage.from(bytes));
      const got = await flatten(await readVhdStream(chunked(bytes, 5)));
      expect(got.bytes.length, name).toBe(disk.size);
      expect(Buffer.from(got.bytes).equals(Buffer.from(await disk.read(0, disk.size))), name).toBe(true);
      expect(Buffer.from(got.bytes.subarray(0, Math.min(model.length, disk.size))).equals(Buffer.from(model.subarray(0, Math.min(model.length, disk.size))))).toBe(true);
    }
  });
});
