import { describe, expect, it } from 'vitest';
import { findSignatures, SIGNATURE_FORMATS, SIGNATURE_TAIL_BYTES } from './signatures.js';
import { rawDriver } from './raw.js';

const SIZE = 64 * 1024;

/** A file of `size` zero bytes with `text` (latin-1) written at `offset` (negative: from the end). */
function fileWith(text: string, offset: number, size = SIZE): Uint8Array {
  const b = new Uint8Array(size);
  const at = offset < 0 ? size + offset : offset;
  for (let i = 0; i < text.length; i++) b[at + i] = text.charCodeAt(i);
  return b;
}

function scan(b: Uint8Array) {
  const tail = b.subarray(Math.max(0, b.length - SIGNATURE_TAIL_BYTES));
  return findSignatures(b.subarray(0, 4096), b.length, tail);
}

const cases: Array<[string, string, Uint8Array]> = [
  ['qcow', 'qcow (v1)', fileWith('QFI\xfb\0\0\0\x01', 0)],
  ['qcow2', 'qcow2', fileWith('QFI\xfb\0\0\0\x03', 0)],
  ['qed', 'QED', fileWith('QED\0', 0)],
  ['vmdk', 'VMDK sparse', fileWith('KDMV', 0)],
  ['vmdk', 'COWD', fileWith('COWD', 0)],
  ['vmdk', 'descriptor', fileWith('# Disk DescriptorFile\nversion=1\n', 0)],
  ['vmdk', 'descriptor', fileWith('# a comment\n   \r\nversion=2\r\nCID=fffffffe\n', 0)],
  ['vdi', 'VDI', fileWith('\x7f\x10\xda\xbe', 0x40)],
  ['vhdx', 'VHDX', fileWith('vhdxfile', 0)],
  ['vhd', 'VHD', fileWith('conectix', 0)],
  ['vhd', 'VHD', fileWith('conectix', -512)],
  ['vhd', 'VHD', fileWith('conectix', -511)],
  ['vhd', 'VHD', fileWith('conectix', -1024)],
  ['luks', 'LUKS', fileWith('LUKS\xba\xbe\0\x01', 0)],
  ['parallels', 'Parallels', fileWith('WithoutFreeSpace\x02', 0)],
  ['parallels', 'Parallels', fileWith('WithouFreSpacExt\x02', 0)],
  ['bochs', 'Bochs', fileWith('Bochs Virtual HD Image\0', 0)],
  ['cloop', 'cloop', fileWith('#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n', 0)],
  ['dmg', 'DMG', fileWith('koly', -512)],
];

describe('findSignatures', () => {
  for (const [format, words, bytes] of cases) {
    it(`finds ${format} (${words}) and raw's probe steps aside`, () => {
      const found = scan(bytes);
      expect(found.map((m) => m.format)).toEqual([format]);
      expect(found[0]!.description).toContain(words.split(' ')[0]!);
      expect(found[0]!.evidence).toMatch(/at 0x[0-9a-f]+$/);
      expect(rawDriver.probe(bytes.subarray(0, 4096), bytes.length, bytes.subarray(bytes.length - 512))).toBe(format === 'vhd' && bytes[bytes.length - 1024] === 0x63 ? 1 : 0);
    });
  }

  it('covers every format it lists', () => {
    expect(new Set(cases.map(([f]) => f))).toEqual(new Set(SIGNATURE_FORMATS));
  });

  it('finds nothing in zeros, text, or a magic one byte off', () => {
    for (const b of [
      new Uint8Array(SIZE),
      fileWith('hello world\nversion=1\n', 0),
      fileWith('\n\nversion=1\n', 0),
      fileWith('QED\0', 1),
      fileWith('conectix', -513),
      fileWith('koly', -511),
      fileWith('\x7f\x10\xda\xbe', 0x44),
      fileWith('# Disk Descriptor', 1),
      new Uint8Array(0),
      new Uint8Array(3),
    ]) {
      expect(scan(b)).toEqual([]);
      expect(rawDriver.probe(b.subarray(0, 4096), b.length, b.subarray(Math.max(0, b.length - 512)))).toBe(1);
    }
  });

  it('reports one match per format and several formats at once (a qcow2 with a VHD footer)', () => {
    const b = fileWith('QFI\xfb\0\0\0\x02', 0);
    b.set(fileWith('conectix', 0, 8).subarray(0, 8), SIZE - 512);
    b.set(fileWith('conectix', 0, 8).subarray(0, 8), SIZE - 1024);
    expect(scan(b).map((m) => [m.format, m.qemuFormat, m.offset])).toEqual([
      ['qcow2', 'qcow2', 0],
      ['vhd', 'vpc', SIZE - 512],
    ]);
  });

  it('names odd qcow versions', () => {
    expect(scan(fileWith('QFI\xfb\0\0\0\x04', 0))[0]).toMatchObject({ format: 'qcow2', description: 'a qcow2 image of version 4' });
    expect(scan(fileWith('QFI\xfb\0\0\0\x00', 0))[0]).toMatchObject({ format: 'qcow', description: 'a qcow image of version 0' });
  });

  it('sees only what it is given: a tail signature is missed without the tail', () => {
    const b = fileWith('conectix', -512);
    expect(findSignatures(b.subarray(0, 4096), b.length)).toEqual([]);
    // A short file: the head is the whole file and holds the footer.
    const small = fileWith('conectix', -512, 1024);
    expect(findSignatures(small, small.length).map((m) => m.offset)).toEqual([512]);
  });
});
