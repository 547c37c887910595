import { describe, expect, it } from 'vitest';
import { readU32Be } from '@img/block';
import { parseHeader, serializeHeader, validateHeaderBasics } from './header.js';
import { parseExtensions, serializeExtensions, extensionsLength, parseFeatureTable } from './extensions.js';
import { QCOW2_V2_HEADER_LENGTH, QCOW2_V3_HEADER_LENGTH, QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION, FEATURE_TABLE_ENTRY_SIZE, EXT_FEATURE_TABLE } from './constants.js';
import { SNAPSHOT_ENTRY_FIXED_SIZE } from './snapshot.js';
import { fixtureNames, loadFixture } from '../test/fixtures.js';

describe('header codec', () => {
  it('pins the spec sizes', () => {
    expect(QCOW2_V2_HEADER_LENGTH).toBe(72);
    expect(QCOW2_V3_HEADER_LENGTH).toBe(104);
    expect(QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION).toBe(112);
    expect(FEATURE_TABLE_ENTRY_SIZE).toBe(48);
    expect(SNAPSHOT_ENTRY_FIXED_SIZE).toBe(40);
  });

  for (const name of fixtureNames()) {
    it(`${name}: serialize(parse(header)) and the extension area are byte-identical`, () => {
      const bytes = loadFixture(name);
      const h = parseHeader(bytes, name);
      validateHeaderBasics(h, name);
      const length = h.version === 2 ? 72 : h.headerLength;
      expect(serializeHeader(h)).toEqual(bytes.subarray(0, length));
      const exts = parseExtensions(bytes, length, 2 ** h.clusterBits, name);
      const area = bytes.subarray(length, length + extensionsLength(exts));
      expect(serializeExtensions(exts)).toEqual(area);
      // The end marker really is one.
      expect(readU32Be(bytes, length + extensionsLength(exts) - 8)).toBe(0);
    });
  }

  it('decodes v2 and v3 fields', () => {
    const v2 = parseHeader(loadFixture('v2-4k.qcow2'));
    expect(v2).toMatchObject({ version: 2, clusterBits: 12, size: 256 * 1024, refcountOrder: 4, headerLength: 72, incompatibleFeatures: 0n });
    const v3 = parseHeader(loadFixture('v3-64k.qcow2'));
    expect(v3).toMatchObject({ version: 3, clusterBits: 16, size: 1024 * 1024, refcountOrder: 4, headerLength: 112, compressionType: 0 });
    const zstd = parseHeader(loadFixture('compressed-zstd-4k.qcow2'));
    expect(zstd.compressionType).toBe(1);
    expect(zstd.incompatibleFeatures & 8n).toBe(8n);
    for (const bits of [1, 2, 4, 8, 16, 32, 64]) expect(2 ** parseHeader(loadFixture(`refcount-${bits}.qcow2`)).refcountOrder).toBe(bits);
  });

  it('keeps unknown header bytes past compression_type', () => {
    const bytes = loadFixture('v3-64k.qcow2').slice(0, 4096);
    // header_length 120: 8 more bytes of a future field.
    bytes[100 + 3] = 120;
    bytes.set([1, 2, 3, 4, 5, 6, 7, 8], 112);
    const h = parseHeader(bytes);
    expect(h.headerLength).toBe(120);
    expect([...h.extraFields.subarray(7)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(serializeHeader(h)).toEqual(bytes.subarray(0, 120));
  });

  it('reads the feature name table qemu writes', () => {
    const bytes = loadFixture('v3-64k.qcow2');
    const exts = parseExtensions(bytes, 112, 65536);
    const table = parseFeatureTable(exts.find((e) => e.type === EXT_FEATURE_TABLE));
    expect(table).toContainEqual({ type: 0, bit: 0, name: 'dirty bit' });
    expect(table).toContainEqual({ type: 1, bit: 0, name: 'lazy refcounts' });
  });

  it('keeps unknown header extensions in order', () => {
    const bytes = loadFixture('unknown-features.qcow2');
    const exts = parseExtensions(bytes, 112, 4096);
    expect(exts[0]!.type).toBe(0x0badcafe);
    expect(new TextDecoder().decode(exts[0]!.data)).toBe('hello, qcow2!');
  });
});
