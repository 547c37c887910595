import { ImageError } from '@img/block';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeDescriptorBytes, descriptorField, formatCid, parseCid, parseDescriptor, serializeDescriptor } from './descriptor.js';
import { parseEntries, serializeEntries } from './grain-table.js';
import { ALL_ONES, readU64LeOrAllOnes, writeU64Le } from './le64.js';
import { MARKER_GT, parseMarker, serializeGrainMarker, serializeMetadataMarker } from './marker.js';
import { GD_AT_END, NEWLINE_CHARS, SPARSE_HEADER_SIZE, parseSparseHeader, serializeSparseHeader, type SparseHeader } from './sparse-header.js';

describe('sparse extent header', () => {
  it('is one sector, and parse(serialize(h)) is h', () => {
    expect(SPARSE_HEADER_SIZE).toBe(512);
    const arb = fc.record({
      version: fc.integer({ min: 1, max: 3 }),
      flags: fc.nat(0x3ffff),
      capacity: fc.nat(2 ** 40),
      grainSize: fc.constantFrom(8, 16, 128),
      descriptorOffset: fc.nat(100),
      descriptorSize: fc.nat(100),
      numGTEsPerGT: fc.integer({ min: 1, max: 512 }),
      rgdOffset: fc.nat(2 ** 32),
      gdOffset: fc.oneof(fc.nat(2 ** 32), fc.constant(GD_AT_END)),
      overHead: fc.nat(2 ** 20),
      uncleanShutdown: fc.boolean(),
      newlineChars: fc.constant([...NEWLINE_CHARS] as SparseHeader['newlineChars']),
      compressAlgorithm: fc.constantFrom(0, 1),
    });
    fc.assert(
      fc.property(arb, (h) => {
        const b = serializeSparseHeader(h);
        expect(b.length).toBe(512);
        expect(parseSparseHeader(b)).toEqual(h);
      }),
    );
  });

  it('a 64-bit field above 2^53 is ERR_IMG_CORRUPT; all ones is GD_AT_END', () => {
    const b = new Uint8Array(8).fill(0xff);
    expect(readU64LeOrAllOnes(b, 0, 'gdOffset')).toBe(ALL_ONES);
    b[0] = 0xfe;
    expect(() => readU64LeOrAllOnes(b, 0, 'gdOffset')).toThrow(ImageError);
    writeU64Le(b, 0, 2 ** 53 - 1);
    expect(readU64LeOrAllOnes(b, 0, 'x')).toBe(2 ** 53 - 1);
  });
});

describe('markers and grain tables', () => {
  it('a metadata marker is one sector; a grain marker is 12 bytes', () => {
    const m = serializeMetadataMarker(MARKER_GT, 4);
    expect(m.length).toBe(512);
    expect(parseMarker(m, 0)).toEqual({ value: 4, size: 0, type: MARKER_GT });
    const g = serializeGrainMarker(256, 1000);
    expect(g.length).toBe(12);
    expect(parseMarker(g, 0)).toMatchObject({ value: 256, size: 1000 });
  });

  it('entries round-trip, padded to whole sectors', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(0xffffffff), { maxLength: 600 }), (entries) => {
        const b = serializeEntries(entries, 2048);
        expect(b.length).toBe(Math.max(2048, entries.length * 4));
        expect([...parseEntries(b, entries.length)]).toEqual(entries);
      }),
    );
  });
});

describe('descriptor', () => {
  it('a ZERO extent line with a file name and an offset serializes to a line that parses again (hostile seed 1002 case 801)', () => {
    const d = parseDescriptor('# Disk DescriptorFile\nversion=1\ncreateType="custom"\nRW 6144 ZERO "x.vmdk" 0\n');
    expect(d.extents[0]).toEqual({ access: 'RW', sectors: 6144, type: 'ZERO' });
    const again = parseDescriptor(serializeDescriptor(d));
    expect(again.extents).toEqual(d.extents);
  });

  const text =
    '# Disk DescriptorFile\nversion=1\nencoding="windows-1252"\nCID=0a0b0c0d\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n\n# Extent description\nRW 4192256 SPARSE "disk-s001.vmdk"\nRDONLY 100 FLAT "disk-f.vmdk" 8\nRW 2048 ZERO\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\n';

  it('parses fields, extents and the disk database, and serializes back', () => {
    const d = parseDescriptor(text);
    expect(descriptorField(d, 'createType')).toBe('twoGbMaxExtentSparse');
    expect(parseCid(descriptorField(d, 'CID'))).toBe(0x0a0b0c0d);
    expect(formatCid(0x0a0b0c0d)).toBe('0a0b0c0d');
    expect(d.extents).toEqual([
      { access: 'RW', sectors: 4192256, type: 'SPARSE', fileName: 'disk-s001.vmdk' },
      { access: 'RDONLY', sectors: 100, type: 'FLAT', fileName: 'disk-f.vmdk', offset: 8 },
      { access: 'RW', sectors: 2048, type: 'ZERO' },
    ]);
    expect(d.ddb).toEqual([['ddb.adapterType', 'lsilogic']]);
    expect(serializeDescriptor(d)).toBe(text);
  });

  it('decodes the character set the descriptor names (windows-1252 here), and stops at the first NUL', () => {
    const latin = text.replace('disk-f.vmdk', 'Bücher.vmdk');
    const bytes = new Uint8Array(Array.from({ length: latin.length }, (_, i) => latin.charCodeAt(i)).concat([0, 0x41, 0x42]));
    const decoded = decodeDescriptorBytes(bytes);
    expect(decoded.endsWith('"lsilogic"\n')).toBe(true);
    expect(parseDescriptor(decoded).extents[1]!.fileName).toBe('Bücher.vmdk');
    const utf8 = new TextEncoder().encode(latin.replace('windows-1252', 'UTF-8'));
    expect(parseDescriptor(decodeDescriptorBytes(utf8)).extents[1]!.fileName).toBe('Bücher.vmdk');
  });

  it('a malformed extent line is ERR_IMG_CORRUPT naming it; CRLF line ends are accepted', () => {
    for (const bad of ['RW x SPARSE "a"', 'RW 10 BOGUS "a"', 'RW 10 FLAT "a"', 'RW 0 SPARSE "a"', 'RW 10 SPARSE']) {
      expect(() => parseDescriptor(`createType="custom"\n${bad}\n`), bad).toThrow(/invalid extent line/);
    }
    expect(parseDescriptor(text.replace(/\n/g, '\r\n')).extents).toHaveLength(3);
  });
});
