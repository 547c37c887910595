import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadManifest, testImagesDir } from '@img/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BAT_UNUSED, batBytes, batFromFileOrder, nextAllocated, parseBat, serializeBat, signedEntries } from './bat.js';
import { bitRuns, bitmapSize, setBits, testBit } from './bitmap.js';
import { vhdChecksum } from './checksum.js';
import { DYNAMIC_HEADER_SIZE, PARENT_LOCATOR_ENTRY_SIZE, PARENT_NAME_SIZE, parseDynamicHeader, serializeDynamicHeader } from './dynamic-header.js';
import { FOOTER_SIZE, fromVhdTimestamp, parseFooter, serializeFooter, toVhdTimestamp } from './footer.js';
import { VHD_MAX_CHS_SECTORS, chsForSectors, chsProduct, chsRoundUp, vhdVirtualSize } from './geometry.js';
import { decodeLocatorData, encodeLocatorData, joinPath, locatorToName, relativePath, toWindowsRelative } from './parent-locator.js';
import { formatUuid, parseUuid } from './uuid.js';

const fixtures = loadManifest()
  .images.filter((e) => e.format === 'vhd')
  .map((e) => ({ file: e.file, bytes: new Uint8Array(readFileSync(join(testImagesDir, e.file))) }));

describe('structure sizes (spec constants)', () => {
  it('footer 512, dynamic header 1024, locator entry 24, parent name 512', () => {
    expect(FOOTER_SIZE).toBe(512);
    expect(DYNAMIC_HEADER_SIZE).toBe(1024);
    expect(PARENT_LOCATOR_ENTRY_SIZE).toBe(24);
    expect(PARENT_NAME_SIZE).toBe(512);
    const f = parseFooter(fixtures[0]!.bytes.subarray(fixtures[0]!.bytes.length - 512));
    expect(serializeFooter(f).length).toBe(512);
  });
});

describe('codecs round-trip on every fixture', () => {
  for (const { file, bytes } of fixtures) {
    it(`${file}: serialize(parse(b)) === b for footers, header and BAT`, () => {
      const tail = bytes.subarray(bytes.length - 512);
      const footer = parseFooter(tail);
      expect(footer.cookie).toBe('conectix');
      expect(serializeFooter(footer)).toEqual(tail);
      expect(vhdChecksum(tail, 64)).toBe(footer.checksum);
      if (footer.diskType === 2) return;
      expect(serializeFooter(parseFooter(bytes.subarray(0, 512)))).toEqual(bytes.subarray(0, 512));
      const hb = bytes.subarray(512, 1536);
      const h = parseDynamicHeader(hb);
      expect(h.cookie).toBe('cxsparse');
      expect(serializeDynamicHeader(h)).toEqual(hb);
      const bb = bytes.subarray(h.tableOffset, h.tableOffset + batBytes(h.maxTableEntries));
      expect(serializeBat(parseBat(bb, h.maxTableEntries))).toEqual(bb);
    });
  }
  it('a random footer round-trips (fast-check)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 512, maxLength: 512 }), (raw) => {
        raw[0x28] = 0; // sizes below 2^53
        raw[0x30] = 0;
        raw[0x29] = raw[0x29]! & 0x1f;
        raw[0x31] = raw[0x31]! & 0x1f;
        const f = parseFooter(raw);
        const out = serializeFooter(f);
        // Everything but the checksum is kept; the checksum is recomputed.
        expect(out.subarray(0, 64)).toEqual(raw.subarray(0, 64));
        expect(out.subarray(68)).toEqual(raw.subarray(68));
        expect(parseFooter(out)).toEqual({ ...f, checksum: vhdChecksum(out, 64) });
      }),
      { seed: 42, numRuns: 200 },
    );
  });
});

describe('geometry', () => {
  it('follows the spec algorithm and qemu rounding', () => {
    expect(chsForSectors(9792)).toEqual({ cylinders: 144, heads: 4, sectorsPerTrack: 17 });
    const g = chsRoundUp(Math.ceil(5000000 / 512));
    expect(chsProduct(g) * 512).toBe(5013504);
    expect(chsProduct(chsForSectors(VHD_MAX_CHS_SECTORS * 2))).toBe(VHD_MAX_CHS_SECTORS);
  });
  it('sizes like qemu >= 10: CHS for vpc and qemu only, current size for every other creator, maximal CHS always current size', () => {
    const g = { cylinders: 10, heads: 4, sectorsPerTrack: 17 };
    const cur = 1_000_000;
    for (const app of ['vpc ', 'qemu']) expect(vhdVirtualSize(app, g, cur)).toBe(680 * 512);
    for (const app of ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0', 'caml', 'mkim', 'vs  ', 'xen ', 'wa\0\0', 'abcd', 'VPC ', 'qemU']) expect(vhdVirtualSize(app, g, cur)).toBe(999_936);
    expect(vhdVirtualSize('vpc ', { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }, cur)).toBe(999_936);
    expect(vhdVirtualSize('vpc ', g, cur, 'current-size')).toBe(999_936);
    expect(vhdVirtualSize('win ', g, cur, 'chs')).toBe(680 * 512);
  });
  it('timestamps count from 2000-01-01 UTC', () => {
    expect(toVhdTimestamp(new Date('2000-01-01T00:00:10Z'))).toBe(10);
    expect(fromVhdTimestamp(86400).toISOString()).toBe('2000-01-02T00:00:00.000Z');
  });
});

describe('bitmaps and BAT', () => {
  it('pads bitmaps to a sector', () => {
    expect(bitmapSize(512)).toBe(512);
    expect(bitmapSize(2 * 1024 * 1024)).toBe(512);
    expect(bitmapSize(4 * 1024 * 1024)).toBe(1024);
    expect(bitmapSize(2 ** 30)).toBe(256 * 1024);
  });
  it('bits are most significant first; runs match a bit-by-bit model', () => {
    const b = new Uint8Array(8);
    setBits(b, 0, 1);
    expect(b[0]).toBe(0x80);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(63), fc.nat(20), fc.boolean()), { maxLength: 10 }), fc.nat(63), (ops, first) => {
        const bm = new Uint8Array(8);
        const model = new Array<boolean>(64).fill(false);
        for (const [start, count, value] of ops) {
          const n = Math.min(count, 64 - start);
          setBits(bm, start, n, value);
          for (let i = start; i < start + n; i++) model[i] = value;
        }
        for (let i = 0; i < 64; i++) expect(testBit(bm, i)).toBe(model[i]);
        let pos = first;
        for (const r of bitRuns(bm, first, 64 - first)) {
          expect(r.start).toBe(pos);
          for (let i = r.start; i < r.start + r.count; i++) expect(model[i]).toBe(r.set);
          pos += r.count;
        }
        expect(pos).toBe(64);
      }),
      { seed: 7, numRuns: 300 },
    );
  });
  it('BAT pads with unused entries', () => {
    const bat = new Uint32Array([5, BAT_UNUSED, 7]);
    const bytes = serializeBat(bat);
    expect(bytes.length).toBe(512);
    expect(bytes.subarray(12).every((x) => x === 0xff)).toBe(true);
    expect([...parseBat(bytes, 3)]).toEqual([5, BAT_UNUSED, 7]);
  });
  it('BAT entries are big-endian on disk', () => {
    const mixed = new Uint32Array([0x01020304, 0xfffffffe, 0, BAT_UNUSED, 0x80000001]);
    const bytes = serializeBat(mixed);
    expect([...bytes.subarray(0, 20)]).toEqual([1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 1]);
    expect([...parseBat(bytes, 5)]).toEqual([...mixed]);
    // An unaligned view of the bytes parses the same.
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    expect([...parseBat(shifted.subarray(1), 5)]).toEqual([...mixed]);
  });
  it('batFromFileOrder turns the bytes of the file into the same entries as parseBat, in place', () => {
    const mixed = new Uint32Array([0x01020304, 0xfffffffe, 0, BAT_UNUSED, 0x80000001]);
    const bytes = serializeBat(mixed);
    const table = new Uint32Array(5);
    new Uint8Array(table.buffer).set(bytes.subarray(0, 20));
    expect(batFromFileOrder(table)).toBe(table);
    expect([...table]).toEqual([...parseBat(bytes, 5)]);
  });
  it('nextAllocated skips only unused entries (sector numbers of 2^31 and up are negative in the signed view, and allocated)', () => {
    const bat = new Uint32Array([BAT_UNUSED, 0x80000001, BAT_UNUSED, BAT_UNUSED, 0xfffffffe, 0, BAT_UNUSED]);
    const signed = signedEntries(bat);
    const found: number[] = [];
    for (let i = nextAllocated(signed, 0, bat.length); i < bat.length; i = nextAllocated(signed, i + 1, bat.length)) found.push(i);
    expect(found).toEqual([1, 4, 5]);
    expect(nextAllocated(signed, 2, 4)).toBe(4);
    expect(nextAllocated(signedEntries(bat.subarray(2)), 0, 5)).toBe(2);
  });
});

describe('uuids and parent locators', () => {
  it('formats any 16 bytes', () => {
    const bytes = new Uint8Array(16).map((_, i) => i * 17);
    const s = formatUuid(bytes);
    expect(s).toBe('00112233-4455-6677-8899-aabbccddeeff');
    expect(parseUuid(s)).toEqual(bytes);
    expect(() => parseUuid('nope')).toThrow(TypeError);
  });
  it('decodes W2ru/W2ku (UTF-16LE) and MacX (file URL) into resolver names', () => {
    const w = encodeLocatorData('W2ru', toWindowsRelative('dir/base é.vhd'));
    expect(decodeLocatorData('W2ru', w)).toBe('.\\dir\\base é.vhd');
    expect(locatorToName('W2ru', '.\\dir\\base.vhd')).toBe('./dir/base.vhd');
    expect(locatorToName('MacX', 'file://localhost/Users/a%20b/base.vhd')).toBe('/Users/a b/base.vhd');
    expect(locatorToName('MacX', 'file:///srv/base.vhd')).toBe('/srv/base.vhd');
    expect(locatorToName('W2ku', 'C:\\vms\\base.vhd')).toBe('C:/vms/base.vhd');
  });
  it('pure path helpers', () => {
    expect(joinPath('/a/b', '../c', './d.vhd')).toBe('/a/c/d.vhd');
    expect(relativePath('/a/b', '/a/c/d.vhd')).toBe('../c/d.vhd');
    expect(relativePath('/a', '/a/d.vhd')).toBe('d.vhd');
  });
});
