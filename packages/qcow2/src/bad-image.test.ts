/**
 * Damaged images: each bound the spec or qemu sets is broken once, and the
 * open (or the read that meets it) must fail with the right code and name
 * the field; nothing may crash, hang or allocate by the broken value.
 */
import { describe, expect, it, vi } from 'vitest';
import { readU32Be, readU64Be, MemoryStorage, writeU32Be } from '@img/block';
import { openBytes, loadFixture, setU32, setU64, imageError, memoryResolver } from '../test/fixtures.js';
import { openQcow2 } from './open.js';

const BASE = 'refcount-16.qcow2'; // v3, 4 KiB clusters, 128 KiB, data at 0 and 64 KiB
const base = () => loadFixture(BASE);
const l1Offset = (b: Uint8Array) => readU64Be(b, 40);
/** Offset bits 9-55 of the L1/L2 entry at `at`. */
const entryAt = (b: Uint8Array, at: number) => (readU32Be(b, at) & 0xffffff) * 2 ** 32 + ((readU32Be(b, at + 4) & 0xfffffe00) >>> 0);

async function expectCorrupt(bytes: Uint8Array, field: RegExp | string, message?: RegExp) {
  const e = await imageError(openBytes(bytes));
  expect(e.code).toBe('ERR_IMG_CORRUPT');
  expect(String(e.data.field)).toMatch(field);
  expect(e.message).toMatch(/^qcow2: test\.qcow2: /);
  if (message) expect(e.message).toMatch(message);
  return e;
}

describe('bad headers', () => {
  it('short file, version 0', async () => {
    await expectCorrupt(base().slice(0, 50), 'header');
    await expectCorrupt(setU32(base(), 4, 0), 'version', /version 0 at 0x4/);
  });

  it('not a qcow2 image: no magic (naming the format found), or the qcow v1 version', async () => {
    const wrong = async (bytes: Uint8Array, message: string) => {
      const e = await imageError(openBytes(bytes));
      expect(e.code).toBe('ERR_IMG_WRONG_FORMAT');
      expect(e.message).toBe(`qcow2: test.qcow2: ${message}`);
      return e;
    };
    expect((await wrong(setU32(base(), 0, 0x12345678), 'not a qcow2 image')).data).toMatchObject({ field: 'magic', offset: 0 });
    await wrong(new Uint8Array(0), 'not a qcow2 image');
    await wrong(new Uint8Array(3), 'not a qcow2 image');
    const v1 = await wrong(setU32(base(), 4, 1), 'not a qcow2 image: it looks like a qcow (v1) image');
    expect(v1.data).toMatchObject({ field: 'version', offset: 4, actual: 1 });
    // A fixed VHD: its footer is the last 512 bytes, past what a header read sees.
    const vhd = new Uint8Array(64 * 1024);
    vhd.set(new TextEncoder().encode('conectix'), vhd.length - 512);
    await wrong(vhd, 'not a qcow2 image: it looks like a VHD image');
    await wrong(new TextEncoder().encode('QED\0' + ' '.repeat(200)), 'not a qcow2 image: it looks like a QED image');
  });

  it('a version newer than 3 is unsupported, naming it', async () => {
    const e = await imageError(openBytes(setU32(base(), 4, 4)));
    expect(e.code).toBe('ERR_IMG_UNSUPPORTED');
    expect(e.message).toMatch(/^qcow2: test\.qcow2: version 4 at 0x4 /);
    expect(e.data).toMatchObject({ field: 'version', actual: 4 });
  });

  it('cluster_bits outside 9..21', async () => {
    await expectCorrupt(setU32(base(), 20, 8), 'cluster_bits', /0x14/);
    await expectCorrupt(setU32(base(), 20, 22), 'cluster_bits');
    await expectCorrupt(setU32(base(), 20, 0xffffffff), 'cluster_bits');
  });

  it('refcount_order above 6', async () => {
    await expectCorrupt(setU32(base(), 96, 7), 'refcount_order');
  });

  it('header_length not a multiple of 8, below 104, or past the first cluster', async () => {
    await expectCorrupt(setU32(base(), 100, 108 + 1), 'header_length');
    await expectCorrupt(setU32(base(), 100, 96), 'header_length');
    await expectCorrupt(setU32(base(), 100, 8192), 'header_length');
  });

  it('64-bit fields above 2^53', async () => {
    await expectCorrupt(setU32(base(), 24, 0x00400000), 'size');
    await expectCorrupt(setU32(base(), 40, 0xffffffff), 'l1_table_offset');
  });

  it('L1 table: over 32 MiB, past the end of the file, unaligned, too small for the size', async () => {
    const huge = setU32(base(), 36, 0x01000000);
    const before = process.memoryUsage().arrayBuffers;
    await expectCorrupt(huge, 'l1_size', /32 MiB/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * 1024 * 1024);
    await expectCorrupt(setU64(base(), 40, 1024 * 1024 * 1024), 'l1_table_offset', /past the end/);
    await expectCorrupt(setU64(base(), 40, 4096 + 8), 'l1_table_offset');
    await expectCorrupt(setU32(base(), 36, 0), 'l1_size', /too small/);
    await expectCorrupt(setU64(base(), 24, 2 ** 40), 'l1_size', /too small/);
  });

  it('refcount table: over 8 MiB, unaligned, past the end', async () => {
    await expectCorrupt(setU32(base(), 56, 4096), 'refcount_table_clusters', /8 MiB/);
    await expectCorrupt(setU64(base(), 48, 4096 * 1000), 'refcount_table_offset');
    await expectCorrupt(setU64(base(), 48, 100), 'refcount_table_offset');
  });

  it('snapshots: more than 65536, table past the end', async () => {
    await expectCorrupt(setU32(base(), 60, 65537), 'nb_snapshots');
    await expectCorrupt(setU64(setU32(base(), 60, 1), 64, 4096 * 1000), 'snapshots_offset');
    // A plausible count whose entries run off the end of the file.
    const b = setU64(setU32(base(), 60, 60000), 64, 4096);
    await expectCorrupt(b, /snapshot/);
  });

  it('a snapshot entry with too much extra data or an L1 table out of bounds', async () => {
    const bytes = loadFixture('snapshots.qcow2');
    const table = readU64Be(bytes, 64);
    const extra = bytes.slice();
    writeU32Be(extra, table + 36, 100000);
    await expectCorrupt(extra, /extra_data_size/);
    const l1 = bytes.slice();
    writeU32Be(l1, table + 8, 0x00ffffff);
    await expectCorrupt(l1, /l1_size/);
  });

  it('header extensions must end inside cluster 0', async () => {
    const b = loadFixture('chain-mid.qcow2'); // a backing format extension at 112
    // The first extension after the 112-byte header: give it a length past the cluster.
    setU32(b, 112 + 4, 5000);
    await expectCorrupt(b, 'header extension', /runs past the first cluster/);
  });

  it('backing file name too long or outside the first cluster', async () => {
    const b = setU32(setU64(base(), 8, 3000), 16, 2000);
    await expectCorrupt(b, 'backing_file_size');
    await expectCorrupt(setU32(setU64(base(), 8, 4090), 16, 100), 'backing_file_offset');
  });

  it('compression type bit and field must agree', async () => {
    const b = base();
    setU32(b, 76, readU32Be(b, 76) | 8); // compression bit, compression_type 0
    await expectCorrupt(b, 'compression_type');
    const c = base();
    c[104] = 1; // zstd without the bit
    await expectCorrupt(c, 'compression_type');
    const d = base();
    setU32(d, 76, readU32Be(d, 76) | 8);
    d[104] = 7;
    expect((await imageError(openBytes(d))).code).toBe('ERR_IMG_UNSUPPORTED');
  });

  it('extended L2 entries with clusters under 16 KiB', async () => {
    const b = base();
    setU32(b, 76, readU32Be(b, 76) | 16);
    await expectCorrupt(b, 'cluster_bits', /16 KiB/);
  });
});

describe('feature bits', () => {
  it('an unknown incompatible bit is refused, naming the bit', async () => {
    const b = setU32(base(), 76, 1 << 9);
    const e = await imageError(openBytes(b));
    expect(e.code).toBe('ERR_IMG_UNSUPPORTED');
    expect(e.message).toMatch(/bit 9/);
    const high = setU32(base(), 72, 0x80000000);
    expect((await imageError(openBytes(high))).message).toMatch(/bit 63/);
  });

  it('the name comes from the feature name table when it has one', async () => {
    const b = loadFixture('v3-64k.qcow2'); // qemu wrote a feature name table into this one
    // Rename qemu's entry for incompatible bit 4 ("extended L2 entries") to a future bit 6.
    const text = new TextDecoder('latin1').decode(b.subarray(0, 4096));
    const at = text.indexOf('lazy refcounts') - 2;
    expect(at).toBeGreaterThan(0);
    b[at] = 0; // incompatible
    b[at + 1] = 6;
    b.set(new TextEncoder().encode('time travel\0\0\0\0\0\0\0\0'), at + 2);
    setU32(b, 76, 1 << 6);
    const e = await imageError(openBytes(b));
    expect(e.message).toMatch(/bit 6 \(time travel\)/);
  });

  it('unknown compatible and autoclear bits are fine; dirty images read', async () => {
    const b = setU32(setU32(base(), 84, 0xfffffffe), 92, 0xfffffff0);
    const disk = await openBytes(b);
    expect(await disk.read(0, 4)).toEqual(new Uint8Array([0x11, 0x11, 0x11, 0x11]));
    await disk.close();
    const dirty = await openBytes(loadFixture('dirty.qcow2'));
    expect((await dirty.info()).dirty).toBe(true);
    expect((await dirty.read(0, 8192)).every((x) => x === 0x16)).toBe(true);
  });

  it('encrypted images open read-only without their passphrase, but their data does not read', async () => {
    const aes = await openBytes(setU32(base(), 32, 1));
    expect((await aes.info()).encrypted).toBe(true);
    expect((await imageError(aes.read(0, 512))).code).toBe('ERR_IMG_INVALID_ARG');
    await aes.close();
    expect((await imageError(openBytes(setU32(base(), 32, 1), { readOnly: false }))).code).toBe('ERR_IMG_UNSUPPORTED');
    // LUKS without the encryption header pointer: corrupt; an unknown method: unsupported.
    expect((await imageError(openBytes(setU32(base(), 32, 2)))).message).toMatch(/without the encryption header pointer/);
    expect((await imageError(openBytes(setU32(base(), 32, 3)))).code).toBe('ERR_IMG_UNSUPPORTED');
  });

  it('the corrupt bit allows read-only opens only', async () => {
    const bytes = loadFixture('corrupt-bit.qcow2');
    const disk = await openBytes(bytes);
    expect((await disk.read(4096, 2))[0]).toBe(0x18);
    expect((await disk.info()).formatSpecific?.corrupt).toBe(true);
    const e = await imageError(openBytes(bytes, { readOnly: false }));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toMatch(/read-only/);
  });
});

describe('bad tables met while reading', () => {
  it('an L2 table past the end of the file', async () => {
    const b = base();
    setU64(b, l1Offset(b), 0x50000);
    const disk = await openBytes(b);
    const e = await imageError(disk.read(0, 512));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toBe('qcow2: test.qcow2: L2 table at 0x50000 (L1 entry 0) lies past the end of the file');
    await imageError(disk.extents()[Symbol.asyncIterator]().next());
  });

  it('an unaligned L1 or L2 entry', async () => {
    const b = base();
    const l1 = l1Offset(b);
    const l2 = entryAt(b, l1);
    setU64(b, l2, 4096 * 5 + 512);
    const e = await imageError((await openBytes(b)).read(0, 512));
    expect(e.message).toMatch(/unaligned cluster offset 0x5200/);
    const c = base();
    writeU32Be(c, l1 + 4, (readU32Be(c, l1 + 4) + 512) >>> 0);
    expect((await imageError((await openBytes(c)).read(0, 512))).message).toMatch(/unaligned L2 table offset/);
  });

  it('compressed clusters that are garbage, inflate to too much or too little', async () => {
    const bytes = loadFixture('compressed-zlib-4k.qcow2');
    const disk0 = await openBytes(bytes);
    // Find a compressed cluster through the L2 table.
    const l2 = entryAt(bytes, l1Offset(bytes));
    let index = -1;
    for (let i = 0; i < 24; i++) if (readU32Be(bytes, l2 + i * 8) & 0x40000000) index = index < 0 ? i : index;
    expect(index).toBeGreaterThanOrEqual(0);
    await disk0.close();
    const hi = readU32Be(bytes, l2 + index * 8);
    const lo = readU32Be(bytes, l2 + index * 8 + 4);
    const x = 62 - (12 - 8);
    const host = (hi & (2 ** (x - 32) - 1)) * 2 ** 32 + lo;
    const garbage = bytes.slice();
    garbage.fill(0xff, host, host + 16);
    const e = await imageError((await openBytes(garbage)).read(index * 4096, 4096));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toMatch(/compressed cluster at 0x/);
    // Too little: a valid stream of 100 bytes.
    const { deflateRawSync } = await import('node:zlib');
    const short = bytes.slice();
    short.set(deflateRawSync(new Uint8Array(100)), host);
    expect((await imageError((await openBytes(short)).read(index * 4096, 4096))).message).toMatch(/instead of one cluster/);
    // Too much: a stream of two clusters, bounded by the output limit.
    const long = bytes.slice();
    long.set(deflateRawSync(new Uint8Array(64 * 1024)), host);
    expect((await imageError((await openBytes(long)).read(index * 4096, 4096))).message).toMatch(/more than one cluster/);
  });

  it('a compressed cluster past the end of the file', async () => {
    const bytes = loadFixture('compressed-zlib-4k.qcow2');
    const l2 = entryAt(bytes, l1Offset(bytes));
    setU32(bytes, l2, 0x40000000 | 0x100); // offset far beyond the file
    const e = await imageError((await openBytes(bytes)).read(0, 4096));
    expect(e.message).toMatch(/past the end of the file/);
  });

  it('extended L2 bitmaps that mark a subcluster allocated and zero', async () => {
    const bytes = loadFixture('extended-l2.qcow2');
    const l2 = entryAt(bytes, l1Offset(bytes));
    setU32(bytes, l2 + 8, 1);
    setU32(bytes, l2 + 12, 1);
    expect((await imageError((await openBytes(bytes)).read(0, 512))).message).toMatch(/both allocated and zero/);
  });
});

describe('backing files', () => {
  const top = () => loadFixture('chain-top.qcow2');

  it('untrusted opens refuse without calling the resolver', async () => {
    const resolver = vi.fn(memoryResolver);
    const e = await imageError(openBytes(top(), { resolver, untrusted: true }));
    expect(e.code).toBe('ERR_IMG_UNSAFE');
    expect(resolver).not.toHaveBeenCalled();
  });

  it('a backing file and no resolver is a clear error; noBacking reads zeros', async () => {
    const e = await imageError(openBytes(top()));
    expect(e.code).toBe('ERR_IMG_INVALID_ARG');
    expect(e.message).toMatch(/backing file "chain-mid.qcow2" but no resolver/);
    const disk = await openBytes(top(), { noBacking: true });
    expect(await disk.read(0, 16)).toEqual(new Uint8Array(16));
    expect((await disk.read(20 * 1024, 4))[0]).toBe(0xb1);
  });

  it('asks the resolver for kind "backing", read-only, from the image', async () => {
    const resolver = vi.fn(memoryResolver);
    const disk = await openBytes(top(), { resolver });
    expect(resolver.mock.calls.map((c) => [c[0].name, c[0].kind, c[0].writable])).toEqual([
      ['chain-mid.qcow2', 'backing', false],
      ['chain-base.qcow2', 'backing', false],
    ]);
    expect((await disk.read(0, 1))[0]).toBe(0x91);
    await disk.close();
  });

  it('bounds chain depth and detects cycles', async () => {
    const e = await imageError(openBytes(top(), { resolver: memoryResolver, maxChainDepth: 2 }));
    expect(e.code).toBe('ERR_IMG_CHAIN');
    // An image whose backing file is itself.
    const self = loadFixture('chain-mid.qcow2');
    const nameAt = readU64Be(self, 8);
    const len = readU32Be(self, 16);
    const name = 'self.qcow2';
    self.set(new TextEncoder().encode(name), nameAt);
    setU32(self, 16, name.length);
    expect(len).toBeGreaterThan(0);
    const resolver = async () => MemoryStorage.from(self, { name: 'self.qcow2' });
    const cycle = await imageError(openQcow2(MemoryStorage.from(self, { name: 'self.qcow2' }), { resolver }));
    expect(cycle.code).toBe('ERR_IMG_CHAIN');
    expect(cycle.message).toMatch(/cycle/);
  });

  it('probes a missing backing format among known formats and reports it', async () => {
    const disk = await openBytes(loadFixture('no-backing-format.qcow2'), { resolver: memoryResolver });
    const info = await disk.info();
    expect(info.backingFormat).toBe('qcow2');
    expect(info.formatSpecific?.['backing-format-probed']).toBe(true);
    expect(info.fullBackingFile).toBe('chain-base.qcow2');
  });

  it('a backing format nobody registered is unsupported', async () => {
    const { FormatRegistry, rawDriver } = await import('@img/block');
    const e = await imageError(openBytes(top(), { resolver: memoryResolver, formats: new FormatRegistry([rawDriver]) }));
    expect(e.code).toBe('ERR_IMG_UNSUPPORTED');
    expect(e.message).toMatch(/"qcow2", which is not registered/);
  });
});

describe('external data files', () => {
  it('are opened through the resolver with kind "data-file"', async () => {
    const resolver = vi.fn(memoryResolver);
    const disk = await openBytes(loadFixture('data-file.qcow2'), { resolver });
    expect(resolver.mock.calls[0]![0]).toMatchObject({ name: 'data-file.img', kind: 'data-file', writable: false });
    expect((await disk.read(40960, 2))[1]).toBe(0x14);
    const info = await disk.info();
    expect(info.formatSpecific).toMatchObject({ 'data-file': 'data-file.img', 'data-file-raw': true });
  });

  it('are refused when untrusted and need a resolver', async () => {
    expect((await imageError(openBytes(loadFixture('data-file.qcow2'), { untrusted: true }))).code).toBe('ERR_IMG_UNSAFE');
    expect((await imageError(openBytes(loadFixture('data-file.qcow2')))).code).toBe('ERR_IMG_INVALID_ARG');
  });
});
