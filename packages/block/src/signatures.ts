/**
 * Container-format signatures: the magic bytes by which qemu's block
 * drivers recognise an image (their `*_probe` functions), for every format
 * qemu knows, whether or not this library opens it. A file that carries one
 * is an image of that format, never plain disk bytes: opening it as raw
 * would hand its metadata to a guest (and a guest that writes a header into
 * a raw disk could turn it into an image that names host files). Untrusted
 * mode refuses such a raw input, and a declared format the bytes contradict
 * is refused unless forced.
 */
import { readAscii, readU16Be, readU32Be, readU32Le } from './bytes.js';
import { hex } from './errors.js';

/** Bytes at the end of the file the signatures look at (VHD footers sit up to 1 KiB from the end). */
export const SIGNATURE_TAIL_BYTES = 1024;

/** One signature found in a file. */
export interface SignatureMatch {
  /** The format, named as this library's registry names it where it has one ("vhd"), else as qemu does ("qed"). */
  format: string;
  /** qemu's driver name (what `qemu-img info` reports): "vpc" for VHD. */
  qemuFormat: string;
  /** The format for people: "a QED image", "a qcow (v1) image". */
  description: string;
  /** The bytes found and where, for messages: `"QED\0" at 0x0`. */
  evidence: string;
  /** Byte offset of the signature in the file. */
  offset: number;
}

/** What a signature sees: the head of the file, its size and its last bytes. */
interface Window {
  size: number;
  head: Uint8Array;
  /** `length` bytes at `offset` when the head or the tail holds them, else undefined. */
  bytes(offset: number, length: number): Uint8Array | undefined;
}

interface Signature {
  format: string;
  qemuFormat: string;
  /** The offset and description when the window carries this format's signature. */
  find(w: Window): { offset: number; description: string; evidence: string } | undefined;
}

/** Printable form of signature bytes for messages ("QFI\xfb"). */
function shown(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return `"${s}"`;
}

function ascii(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i) & 0xff;
  return out;
}

function startsWith(bytes: Uint8Array | undefined, magic: Uint8Array): boolean {
  if (!bytes || bytes.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}

/** A fixed magic at fixed offsets (negative: from the end of the file). */
function magicAt(format: string, qemuFormat: string, description: string, magic: string, offsets: readonly number[]): Signature {
  const m = ascii(magic);
  return {
    format,
    qemuFormat,
    find(w) {
      for (const o of offsets) {
        const offset = o < 0 ? w.size + o : o;
        if (offset < 0) continue;
        if (startsWith(w.bytes(offset, m.length), m)) return { offset, description, evidence: `${shown(m)} at ${hex(offset)}` };
      }
      return undefined;
    },
  };
}

const QCOW_MAGIC = ascii('QFI\xfb');

/** qcow and qcow2 share the magic; the version tells them apart (qemu: qcow_probe wants 1, qcow2_probe 2 and up). */
const qcowFamily: Signature[] = [
  {
    format: 'qcow',
    qemuFormat: 'qcow',
    find(w) {
      const h = w.bytes(0, 8);
      if (!startsWith(h, QCOW_MAGIC) || readU32Be(h!, 4) >= 2) return undefined;
      const version = readU32Be(h!, 4);
      return { offset: 0, description: version === 1 ? 'a qcow (v1) image' : `a qcow image of version ${version}`, evidence: `"QFI\\xfb" version ${version} at 0x0` };
    },
  },
  {
    format: 'qcow2',
    qemuFormat: 'qcow2',
    find(w) {
      const h = w.bytes(0, 8);
      if (!startsWith(h, QCOW_MAGIC) || readU32Be(h!, 4) < 2) return undefined;
      const version = readU32Be(h!, 4);
      return { offset: 0, description: version <= 3 ? 'a qcow2 image' : `a qcow2 image of version ${version}`, evidence: `"QFI\\xfb" version ${version} at 0x0` };
    },
  },
];

/**
 * A VMDK text descriptor: qemu accepts comment lines and lines of spaces
 * followed by a `version=` line; "# Disk DescriptorFile" is the first line VMware writes.
 */
const vmdkDescriptor: Signature = {
  format: 'vmdk',
  qemuFormat: 'vmdk',
  find(w) {
    // A descriptor starts with a comment, a line of spaces or the version line: skip decoding anything else.
    const first = w.head[0];
    if (first !== 0x23 && first !== 0x20 && first !== 0x76) return undefined;
    const text = readAscii(w.head, 0, w.head.length);
    const found = { offset: 0, description: 'a VMDK descriptor file', evidence: '' };
    if (text.startsWith('# Disk DescriptorFile')) return { ...found, evidence: '"# Disk DescriptorFile" at 0x0' };
    let at = 0;
    while (at < text.length) {
      const end = text.indexOf('\n', at);
      const line = text.slice(at, end < 0 ? text.length : end).replace(/\r$/, '');
      // As qemu: comments, and lines of spaces only; an empty line ends the search.
      if (line.startsWith('#') || /^ +$/.test(line)) {
        if (end < 0) return undefined;
        at = end + 1;
        continue;
      }
      return end >= 0 && /^version=[1-3]$/.test(line) ? { ...found, evidence: `"${line}" at ${hex(at)}` } : undefined;
    }
    return undefined;
  },
};

/** VDI: qemu's vdi_probe checks only the little-endian signature at 0x40 (the "<<< ... >>>" banner before it is free text). */
const vdi: Signature = {
  format: 'vdi',
  qemuFormat: 'vdi',
  find(w) {
    const b = w.bytes(0x40, 4);
    if (!b || readU32Le(b, 0) !== 0xbeda107f) return undefined;
    return { offset: 0x40, description: 'a VDI image', evidence: 'signature 0xbeda107f at 0x40' };
  },
};

/** LUKS: magic, then a big-endian version (1; 2 is LUKS2, which qemu 7.2 does not open but is still LUKS). */
const luks: Signature = {
  format: 'luks',
  qemuFormat: 'luks',
  find(w) {
    const b = w.bytes(0, 8);
    if (!startsWith(b, ascii('LUKS\xba\xbe'))) return undefined;
    return { offset: 0, description: `a LUKS (version ${readU16Be(b!, 6)}) encrypted volume`, evidence: '"LUKS\\xba\\xbe" at 0x0' };
  },
};

const SIGNATURES: readonly Signature[] = [
  ...qcowFamily,
  magicAt('qed', 'qed', 'a QED image', 'QED\0', [0]),
  magicAt('vmdk', 'vmdk', 'a VMDK sparse extent', 'KDMV', [0]),
  magicAt('vmdk', 'vmdk', 'a VMDK (ESX COWD) sparse extent', 'COWD', [0]),
  vmdkDescriptor,
  vdi,
  magicAt('vhdx', 'vhdx', 'a VHDX image', 'vhdxfile', [0]),
  // The footer copy at 0 (dynamic disks), the footer in the last 512 bytes (511 for old Virtual PC), or 1 KiB from the end.
  magicAt('vhd', 'vpc', 'a VHD image', 'conectix', [0, -512, -511, -1024]),
  luks,
  magicAt('parallels', 'parallels', 'a Parallels image', 'WithoutFreeSpace', [0]),
  magicAt('parallels', 'parallels', 'a Parallels image', 'WithouFreSpacExt', [0]),
  magicAt('bochs', 'bochs', 'a Bochs image', 'Bochs Virtual HD Image\0', [0]),
  magicAt('cloop', 'cloop', 'a cloop compressed image', '#!/bin/sh\n#V2.0 Format\n', [0]),
  // UDIF: the "koly" trailer is the last 512 bytes (qemu probes DMG by the ".dmg" name only; the bytes are surer).
  magicAt('dmg', 'dmg', 'a DMG (UDIF) image', 'koly', [-512]),
];

/**
 * Every container format whose signature the bytes carry, one match per
 * format, in a fixed order (qcow family first).
 *
 * `head` is the start of the file (4 KiB covers every signature), `tail`
 * its last bytes (up to {@link SIGNATURE_TAIL_BYTES}; fewer only hide
 * signatures that sit further from the end).
 *
 * @example
 * ```ts
 * const found = findSignatures(await storage.read(0, 4096), size, await storage.read(size - 1024, 1024));
 * if (found.length) throw new Error(`this is ${found[0].description}, not a raw disk`);
 * ```
 */
export function findSignatures(head: Uint8Array, size: number, tail: Uint8Array = new Uint8Array(0)): SignatureMatch[] {
  const tailStart = size - tail.length;
  const w: Window = {
    size,
    head,
    bytes(offset, length) {
      if (offset + length <= head.length) return head.subarray(offset, offset + length);
      if (offset >= tailStart && offset + length <= size) return tail.subarray(offset - tailStart, offset - tailStart + length);
      return undefined;
    },
  };
  const out: SignatureMatch[] = [];
  for (const s of SIGNATURES) {
    if (out.some((m) => m.format === s.format)) continue;
    const hit = s.find(w);
    if (hit) out.push({ format: s.format, qemuFormat: s.qemuFormat, ...hit });
  }
  return out;
}

/** The formats {@link findSignatures} knows, by this library's names. */
export const SIGNATURE_FORMATS: readonly string[] = [...new Set(SIGNATURES.map((s) => s.format))];
