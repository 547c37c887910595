import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage } from '@img/block';
import { testImagesDir } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { vhdChecksum } from './checksum.js';
import { openVhd } from './open.js';
import { createVhd } from './create.js';

const DYN = new Uint8Array(readFileSync(join(testImagesDir, 'vhd/dynamic-default.vhd')));
const FIXED = new Uint8Array(readFileSync(join(testImagesDir, 'vhd/fixed-default.vhd')));

function u32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0, false);
}
function fixHeader(b: Uint8Array): void {
  u32(b, 512 + 0x24, vhdChecksum(b.subarray(512, 1536), 0x24));
}
function fixFooters(b: Uint8Array): void {
  for (const at of [0, b.length - 512]) u32(b, at + 64, vhdChecksum(b.subarray(at, at + 512), 64));
}
function edit(base: Uint8Array, fn: (b: Uint8Array) => void): MemoryStorage {
  const b = base.slice();
  fn(b);
  return MemoryStorage.from(b, { name: 'x.vhd' });
}
async function openError(storage: MemoryStorage): Promise<ImageError> {
  try {
    await openVhd(storage);
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw e;
  }
  throw new Error('opened');
}

describe('validation of untrusted metadata', () => {
  for (const [name, value] of [
    ['0', 0],
    ['not a power of two', 3 * 1024 * 1024],
    ['2^31', 2 ** 31],
    ['256 (below a sector)', 256],
  ] as const) {
    it(`block size ${name} is ERR_IMG_CORRUPT naming the field`, async () => {
      const e = await openError(edit(DYN, (b) => (u32(b, 512 + 0x20, value), fixHeader(b))));
      expect(e.code).toBe('ERR_IMG_CORRUPT');
      expect(e.message).toMatch(/^vhd: x\.vhd: block size/);
      expect(e.data.offset).toBe(512 + 0x20);
    });
  }
  it('a BAT entry past the end of the file', async () => {
    const e = await openError(edit(DYN, (b) => u32(b, 1536 + 4, 0x00ffffff)));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toBe('vhd: x.vhd: BAT entry 1 at 0x604 points past the end of the file (0x1fffffe00)');
    expect(e.data.offset).toBe(1536 + 4);
  });
  it('a BAT entry pointing into the BAT or the header', async () => {
    const e = await openError(edit(DYN, (b) => u32(b, 1536 + 8, 3)));
    expect(e.message).toMatch(/BAT entry 2 at 0x608 points into the (BAT|dynamic header)/);
  });
  it('two BAT entries sharing a block', async () => {
    const b = DYN.slice();
    const entry1 = new DataView(b.buffer).getUint32(1536 + 4, false);
    const e = await openError(edit(b, (x) => u32(x, 1536 + 8, entry1)));
    expect(e.message).toMatch(/BAT entries 1 and 2 point at overlapping blocks/);
  });
  it('max table entries beyond the limit or the file', async () => {
    let e = await openError(edit(DYN, (b) => (u32(b, 512 + 0x1c, 0xffffffff), fixHeader(b))));
    expect(e.message).toMatch(/max table entries/);
    e = await openError(edit(DYN, (b) => (u32(b, 512 + 0x1c, 0x100000), fixHeader(b))));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
  });
  it('a BAT too small for the disk size', async () => {
    const e = await openError(edit(DYN, (b) => (u32(b, 512 + 0x1c, 1), fixHeader(b))));
    expect(e.message).toMatch(/cannot cover/);
  });
  it('a data offset outside the file', async () => {
    const e = await openError(edit(DYN, (b) => (u32(b, 0x14, 0x7fff0000), u32(b, b.length - 512 + 0x14, 0x7fff0000), fixFooters(b))));
    expect(e.message).toMatch(/data offset/);
  });
  it('a disk larger than 2040 GiB', async () => {
    const e = await openError(
      edit(FIXED, (b) => {
        const at = b.length - 512;
        b.set([0x71, 0x65, 0x6d, 0x32], at + 0x1c); // qem2: sized by current size
        u32(b, at + 0x30, 0x200);
        u32(b, at + 0x34, 0);
        u32(b, at + 64, vhdChecksum(b.subarray(at), 64));
      }),
    );
    expect(e.message).toMatch(/2040 GiB/);
  });
  it('a fixed disk larger than its file', async () => {
    const e = await openError(edit(FIXED, (b) => (u32(b, b.length - 512 + 0x38, 0x0fff0411), u32(b, b.length - 512 + 64, vhdChecksum(b.subarray(b.length - 512), 64)))));
    expect(e.message).toMatch(/does not fit/);
  });
  it('no "conectix" anywhere (zeros, a tiny file, a qcow2 file): not a vhd image, ERR_IMG_WRONG_FORMAT', async () => {
    const qcow2 = new Uint8Array(4096);
    qcow2.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    for (const bytes of [new Uint8Array(4096), new Uint8Array(10), new Uint8Array(0), qcow2]) {
      const e = await openError(MemoryStorage.from(bytes, { name: 'x.vhd' }));
      expect([e.code, e.message]).toEqual(['ERR_IMG_WRONG_FORMAT', 'vhd: x.vhd: not a vhd image']);
    }
  });
  it('the cookie with bad fields stays ERR_IMG_CORRUPT', async () => {
    // A fixed footer whose disk type is 9, and a cookie at offset 0 of a file too short for anything.
    const bad = edit(FIXED, (b) => (u32(b, b.length - 512 + 0x3c, 9), u32(b, b.length - 512 + 64, vhdChecksum(b.subarray(b.length - 512), 64))));
    expect((await openError(bad)).code).toBe('ERR_IMG_CORRUPT');
    const cut = DYN.slice(0, 700);
    expect((await openError(MemoryStorage.from(cut, { name: 'x.vhd' }))).code).toBe('ERR_IMG_CORRUPT');
  });
  it('a bad dynamic header cookie', async () => {
    const e = await openError(edit(DYN, (b) => (b[512] = 0x58)));
    expect(e.message).toMatch(/no dynamic disk header/);
  });
});

describe('footer copies', () => {
  it('a damaged copy at offset 0: the copy at the end is used and the mismatch reported', async () => {
    const disk = await openVhd(edit(DYN, (b) => (b[0x30] = b[0x30]! ^ 1)));
    expect(disk.size).toBe(5013504);
    expect(disk.problems.map((p) => p.message).join()).toMatch(/footer copy at offset 0 is missing or invalid/);
    expect(disk.problems.map((p) => [p.code, p.offset])).toEqual([['footer-copy-invalid', 0]]);
    expect((await disk.info()).formatSpecific!['footer-mismatch']).toBeDefined();
  });
  it('a missing copy at the end (truncated after the last block): reported, still readable', async () => {
    const disk = await openVhd(MemoryStorage.from(DYN.slice(0, DYN.length - 512), { name: 'x.vhd' }));
    expect(disk.problems.map((p) => p.message).join()).toMatch(/at the end of the file is missing/);
    expect((await disk.read(2 * 1024 * 1024, 1))[0]).toBe(0x11);
  });
  it('a bad checksum on both copies still opens (as qemu), and says so', async () => {
    const disk = await openVhd(edit(DYN, (b) => (u32(b, 64, 1), u32(b, b.length - 512 + 64, 1))));
    expect(disk.problems.map((p) => p.code)).toContain('footer-checksum');
  });
  it('an old 511-byte footer on a fixed disk', async () => {
    const b = FIXED.slice(0, FIXED.length - 1);
    const disk = await openVhd(MemoryStorage.from(b, { name: 'x.vhd' }));
    expect(disk.size).toBe(313344);
    expect((await disk.read(0, 1))[0]).toBe(0x66);
  });
});

describe('a parent locator past the end of the file (hostile-input campaign)', () => {
  // Locator 7 of a dynamic disk with no block yet claims 512 bytes where the footer at the end would move to
  // when the first block is appended: read-only opens ignore it, a writable one refused to grow the file under it.
  async function image(): Promise<Uint8Array> {
    const s = new MemoryStorage({ name: 'x.vhd' });
    const d = await createVhd(s, { size: 3 << 20, blockSize: 1 << 20 });
    await d.close();
    const b = s.toBytes().slice();
    const entry = 512 + 0x240 + 7 * 24;
    u32(b, entry, 0x57327275); // W2ru
    u32(b, entry + 4, 1);
    u32(b, entry + 8, 512);
    u32(b, entry + 20, b.length); // data offset (u64: high half 0) = the end of the file
    fixHeader(b);
    return b;
  }
  it('read-only opens read on, reporting it; writable opens refuse it, so a write cannot leave an image that no longer opens', async () => {
    const b = await image();
    const ro = await openVhd(MemoryStorage.from(b, { name: 'x.vhd', readOnly: true }));
    expect(ro.problems.map((p) => p.code)).toContain('locator-outside');
    await ro.close();
    const before = b.slice();
    const s = MemoryStorage.from(b, { name: 'x.vhd' });
    await expect(openVhd(s, { readOnly: false })).rejects.toThrow(/parent locator 7 \(W2ru\) data at 0x[0-9a-f]+\+512 lies outside the file, where a new block would be appended; writable opens refuse it/);
    expect(Buffer.compare(s.toBytes(), before)).toBe(0);
    const again = await openVhd(MemoryStorage.from(before, { name: 'x.vhd', readOnly: true }));
    await again.close();
  });
});
