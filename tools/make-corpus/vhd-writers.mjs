#!/usr/bin/env node
// VHDs laid out as real writers lay them out, built from each writer's
// documented shape (no writer needed, no dependency: the structures are
// written here by hand, independently of @img/vhd):
//
// - Hyper-V / Windows: data offset 0x200, header 1 KiB, BAT at 0x600,
//   blocks on 2 MiB boundaries (Windows 10: block data on 4 KiB), parent
//   locators (W2ku, W2ru) after the BAT with 512 bytes of space each;
// - Virtual PC: creator "vpc ", sized by CHS, BAT at 0x600 padded to a
//   sector, blocks right behind it;
// - vhd-util (blktap, creator "tap\0"): blktap's batmap ("tdbatmap" header
//   sector + bitmap) behind the BAT, locator space reserved in sectors;
// - any creator with any current size (for the sizing rule).
//
//   import { vhdImage, writers } from './tools/make-corpus/vhd-writers.mjs';
//   node tools/make-corpus/vhd-writers.mjs [dir]   writes each preset to dir/<name>.vhd
//
// vhdImage(spec) returns { bytes, content, size }: `content` is the guest
// disk as the footer's current size describes it (what libvhdi reads).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ascii, chs, u16, u32, u64, utf16le, dynamicHeaderFields } from './vhd-bytes.mjs';

const SECTOR = 512;
const MiB = 1024 * 1024;

function seal(b, at, length, field) {
  let sum = 0;
  for (let i = 0; i < length; i++) if (i < field || i >= field + 4) sum = (sum + b[at + i]) >>> 0;
  u32(b, at + field, ~sum >>> 0);
}
const roundUp = (v, a) => Math.ceil(v / a) * a;

export { chs };

/** Deterministic bytes for guest offset `pos` (so any range can be recomputed). */
function pattern(pos) {
  const x = Math.imul(pos ^ 0x5bd1e995, 0x27d4eb2d) >>> 0;
  return (x ^ (x >>> 15)) & 0xff;
}

function footerBytes({ type, creator, creatorVersion, hostOs, size, geometry, dataOffset, id }) {
  const b = new Uint8Array(SECTOR);
  ascii(b, 0, 'conectix');
  u32(b, 0x08, 2);
  u32(b, 0x0c, 0x00010000);
  u64(b, 0x10, dataOffset === undefined ? 0xffffffffffffffffn : dataOffset);
  u32(b, 0x18, 0x2b000000);
  ascii(b, 0x1c, creator);
  u32(b, 0x20, creatorVersion);
  ascii(b, 0x24, hostOs);
  u64(b, 0x28, size);
  u64(b, 0x30, size);
  u16(b, 0x38, geometry.c);
  b[0x3a] = geometry.h;
  b[0x3b] = geometry.s;
  u32(b, 0x3c, type);
  for (let i = 0; i < 16; i++) b[0x44 + i] = (id * 41 + i * 13 + 7) & 0xff;
  seal(b, 0, SECTOR, 64);
  return b;
}

/**
 * A VHD as described:
 * - type: 'fixed' | 'dynamic' | 'differencing'; creator, creatorVersion, hostOs;
 * - size: the footer's current (and original) size; geometry { c, h, s } (default: the spec's CHS of size);
 * - blockSize; dataOffset (the header); tableOffset (default: behind the header and any locators placed first);
 * - batPadTo: the BAT's length is rounded to this; blockAlign + alignAnchor ('block' | 'data'): where blocks go;
 * - locators: [{ code, space (the raw field value), data (bytes) or length, place: 'before-bat' | 'after-bat', spaceBytes }];
 * - batmap: blktap's batmap behind the BAT; blocks: the block indexes allocated (whole blocks of pattern data);
 * - footerAlign: the footer at the end goes on this boundary (padding before it); bootSignature: 0x55AA at 510 of both footers.
 */
export function vhdImage(spec) {
  const {
    type = 'dynamic',
    creator = 'win ',
    creatorVersion = 0x000a0000,
    hostOs = 'Wi2k',
    size,
    geometry = chs(Math.floor(size / SECTOR)),
    blockSize = 2 * MiB,
    dataOffset = SECTOR,
    batPadTo = SECTOR,
    blockAlign = SECTOR,
    alignAnchor = 'block',
    locators = [],
    batmap = false,
    blocks = [],
    footerAlign = SECTOR,
    bootSignature = false,
    id = 1,
  } = spec;
  const content = new Uint8Array(size);
  const diskType = { fixed: 2, dynamic: 3, differencing: 4 }[type];
  if (type === 'fixed') {
    for (let i = 0; i < size; i++) content[i] = pattern(i);
    const f = footerBytes({ type: diskType, creator, creatorVersion, hostOs, size, geometry, id });
    if (bootSignature) {
      f[510] = 0x55;
      f[511] = 0xaa;
      seal(f, 0, SECTOR, 64);
    }
    const b = new Uint8Array(size + SECTOR);
    b.set(content);
    b.set(f, size);
    return { bytes: b, content, size };
  }
  const entries = Math.ceil(size / blockSize);
  const bitmapBytes = roundUp(Math.ceil(blockSize / SECTOR / 8), SECTOR);
  let next = dataOffset + 1024;
  const placed = [];
  const place = (l) => {
    const length = l.data ? l.data.length : (l.length ?? 0);
    const reserve = Math.max(l.spaceBytes ?? 0, roundUp(length, SECTOR));
    placed.push({ ...l, at: next, length });
    next += reserve;
  };
  for (const l of locators) if (l.place === 'before-bat') place(l);
  const tableOffset = spec.tableOffset ?? next;
  next = Math.max(next, tableOffset + roundUp(roundUp(entries * 4, SECTOR), batPadTo));
  let batmapAt;
  let batmapSectors = 0;
  if (batmap) {
    batmapAt = next;
    batmapSectors = Math.ceil(Math.ceil(entries / 8) / SECTOR);
    next += SECTOR + batmapSectors * SECTOR;
  }
  for (const l of locators) if (l.place !== 'before-bat') place(l);
  const anchor = alignAnchor === 'data' ? bitmapBytes : 0;
  const blockAt = new Map();
  for (const i of [...blocks].sort((a, b) => a - b)) {
    const at = roundUp(next + anchor, blockAlign) - anchor;
    blockAt.set(i, at);
    next = at + bitmapBytes + blockSize;
  }
  const tail = roundUp(next, footerAlign);
  const b = new Uint8Array(tail + SECTOR);
  const f = footerBytes({ type: diskType, creator, creatorVersion, hostOs, size, geometry, dataOffset, id });
  if (bootSignature) {
    f[510] = 0x55;
    f[511] = 0xaa;
    seal(f, 0, SECTOR, 64);
  }
  b.set(f, 0);
  b.set(f, tail);
  const h = dataOffset;
  dynamicHeaderFields(b, h, { tableOffset, entries, blockSize });
  if (type === 'differencing') {
    for (let i = 0; i < 16; i++) b[h + 0x28 + i] = (99 * 41 + i * 13 + 7) & 0xff;
    const name = 'parent.vhd';
    for (let i = 0; i < name.length; i++) u16(b, h + 0x40 + i * 2, name.charCodeAt(i));
  }
  placed.forEach((l, i) => {
    const e = h + 0x240 + i * 24;
    ascii(b, e, l.code ?? '\0\0\0\0');
    u32(b, e + 4, l.space ?? 0);
    u32(b, e + 8, l.length);
    u64(b, e + 16, l.at);
    if (l.data) b.set(l.data, l.at);
  });
  seal(b, h, 1024, 0x24);
  b.fill(0xff, tableOffset, tableOffset + roundUp(entries * 4, SECTOR));
  for (const [i, at] of blockAt) u32(b, tableOffset + i * 4, at / SECTOR);
  if (batmap) {
    ascii(b, batmapAt, 'tdbatmap');
    u64(b, batmapAt + 8, batmapAt + SECTOR);
    u32(b, batmapAt + 16, batmapSectors);
    u32(b, batmapAt + 20, 0x00010002);
    for (const i of blockAt.keys()) b[batmapAt + SECTOR + (i >> 3)] |= 0x80 >> (i & 7);
  }
  for (const [i, at] of blockAt) {
    b.fill(0xff, at, at + bitmapBytes);
    const base = i * blockSize;
    for (let k = 0; k < blockSize; k++) {
      const v = pattern(base + k);
      b[at + bitmapBytes + k] = v;
      if (base + k < size) content[base + k] = v;
    }
  }
  return { bytes: b, content, size, tableOffset, blockAt, bitmapBytes };
}

const SIZE = 5 * MiB + 123 * SECTOR; // not CHS-exact: the spec's CHS product of it is 16 KiB smaller

/** Pristine images as each writer leaves them (check must find them clean). */
export const writers = {
  /** Hyper-V (Windows Server): BAT at 0x600, blocks on 2 MiB boundaries. */
  'hyperv-dynamic': () => vhdImage({ size: SIZE, creator: 'win ', creatorVersion: 0x000a0000, blocks: [0, 2], blockAlign: 2 * MiB }),
  /** Windows 10 (Disk Management): block data on 4 KiB boundaries. */
  'win10-dynamic': () => vhdImage({ size: SIZE, creator: 'win ', creatorVersion: 0x000a0000, blocks: [0, 1, 2], blockAlign: 4096, alignAnchor: 'data' }),
  /** Hyper-V with its BAT padded to 2 MiB and no block yet: the footer behind the padding. */
  'hyperv-empty-padded-bat': () => vhdImage({ size: SIZE, creator: 'win ', batPadTo: 2 * MiB }),
  /** Hyper-V differencing: W2ku and W2ru locators after the BAT, 512 bytes of space each (Windows counts bytes), blocks on 2 MiB. */
  'hyperv-differencing': () =>
    vhdImage({
      type: 'differencing',
      size: SIZE,
      blocks: [1],
      blockAlign: 2 * MiB,
      locators: [
        { code: 'W2ku', space: 512, spaceBytes: 512, data: utf16le('C:\\vms\\parent.vhd') },
        { code: 'W2ru', space: 512, spaceBytes: 512, data: utf16le('.\\parent.vhd') },
      ],
    }),
  /** A dynamic disk with locator space reserved but no locator in it yet (entries with offset and space, no code, no data). */
  'reserved-locators-dynamic': () =>
    vhdImage({
      size: SIZE,
      creator: 'win ',
      blocks: [0, 1],
      locators: [
        { space: 512, spaceBytes: 512, place: 'after-bat' },
        { space: 512, spaceBytes: 512, place: 'after-bat' },
        { space: 2, spaceBytes: 1024, place: 'after-bat' },
      ],
    }),
  /** Reserved locator space at the very end (no blocks yet): a leak repair must not cut it. */
  'reserved-locators-empty': () => vhdImage({ size: SIZE, creator: 'tap\0', hostOs: 'Lnux', locators: [{ code: 'MacX', space: 8, spaceBytes: 4096, length: 0 }] }),
  /** Virtual PC: CHS-sized, BAT at 0x600 padded to a sector, blocks right behind it. */
  'virtualpc-dynamic': () => {
    const g = chs(Math.floor(SIZE / SECTOR));
    return vhdImage({ size: SIZE, geometry: g, creator: 'vpc ', creatorVersion: 0x00050003, blocks: [0, 2] });
  },
  /** vhd-util (blktap): batmap behind the BAT, locator space counted in sectors (3 sectors for a short path). */
  'vhdutil-differencing': () =>
    vhdImage({
      type: 'differencing',
      size: SIZE,
      creator: 'tap\0',
      creatorVersion: 0x00010003,
      hostOs: 'Lnux',
      batmap: true,
      blocks: [0, 2],
      locators: [{ code: 'MacX', space: 3, spaceBytes: 1536, data: new TextEncoder().encode('file://./parent.vhd') }],
    }),
  'vhdutil-dynamic': () => vhdImage({ size: SIZE, creator: 'tap\0', creatorVersion: 0x00010003, hostOs: 'Lnux', batmap: true, blocks: [1] }),
};

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2] ?? 'vhd-writers';
  mkdirSync(dir, { recursive: true });
  for (const [name, make] of Object.entries(writers)) writeFileSync(join(dir, `${name}.vhd`), make().bytes);
  console.log(`wrote ${Object.keys(writers).length} images to ${dir}`);
}
