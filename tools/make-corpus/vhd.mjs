#!/usr/bin/env node
// A negative corpus for VHD readers: valid images built in-process (no
// build step, no dependency: the few structures are written here by hand)
// and mutated into every kind of damage a reader must refuse or survive.
//
//   import { cases } from './tools/make-corpus/vhd.mjs';
//   node tools/make-corpus/vhd.mjs [dir]     writes each case to dir/<name>.vhd
//
// A case: { name, description, bytes: Uint8Array | () => Uint8Array,
//   expect, files?, check? }
// - expect: what openVhd does with it:
//     an error code ('ERR_IMG_CORRUPT', 'ERR_IMG_CHAIN', 'ERR_IMG_UNSAFE'),
//     'problem' (opens, and says what is wrong in disk.problems), or
//     'ok' (opens without complaint);
// - files: other images by name (parents), for a resolver; the image
//   itself is named `${name}.vhd`... unless `self` says otherwise;
// - check: what checkVhd reports: 'corrupt' (corruptions > 0), 'leak'
//   (leaks > 0, no corruption) or 'clean'. Defaults: 'corrupt' for errors
//   and problems, 'clean' for ok.
// - untrusted: the code an `untrusted: true` open gives, when it differs.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ascii, chs, u32, u64, utf16le, dynamicHeaderFields } from './vhd-bytes.mjs';

const SECTOR = 512;
const FOOTER = 512;
const HEADER = 1024;
const GiB = 1024 ** 3;

// --- the structures (Microsoft VHD spec), just enough to write them ---

function getU32(b, at) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, false);
}
/** One's complement of the byte sum, the checksum field read as zero. */
function checksum(b, field) {
  let sum = 0;
  for (let i = 0; i < b.length; i++) if (i < field || i >= field + 4) sum = (sum + b[i]) >>> 0;
  return ~sum >>> 0;
}
function sealFooter(b, at) {
  u32(b, at + 64, checksum(b.subarray(at, at + FOOTER), 64));
}
function sealHeader(b, at = SECTOR) {
  u32(b, at + 0x24, checksum(b.subarray(at, at + HEADER), 0x24));
}
function uuid(n) {
  const u = new Uint8Array(16);
  for (let i = 0; i < 16; i++) u[i] = (n * 37 + i * 11 + 1) & 0xff;
  return u;
}

function footer({ type, size, dataOffset, id = 1, creator = 'win ', cookie = 'conectix' }) {
  const b = new Uint8Array(FOOTER);
  ascii(b, 0, cookie);
  u32(b, 0x08, 2);
  u32(b, 0x0c, 0x00010000);
  if (dataOffset === undefined) u64(b, 0x10, 0xffffffffffffffffn);
  else u64(b, 0x10, dataOffset);
  u32(b, 0x18, 0x2a000000);
  ascii(b, 0x1c, creator);
  u32(b, 0x20, 0x000a0000);
  ascii(b, 0x24, 'Wi2k');
  u64(b, 0x28, size);
  u64(b, 0x30, size);
  const g = chs(size / SECTOR);
  b[0x38] = g.c >> 8;
  b[0x39] = g.c & 0xff;
  b[0x3a] = g.h;
  b[0x3b] = g.s;
  u32(b, 0x3c, type);
  b.set(uuid(id), 0x44);
  sealFooter(b, 0);
  return b;
}

/**
 * A dynamic (or, with `parent`, differencing) VHD: footer copy, header at
 * 512, parent locator data, BAT, the blocks of `data` (block index -> fill
 * byte, whole blocks with every bitmap bit set), footer.
 * Returns the bytes and where things are, for mutations.
 */
function dynamic({ size = 64 * 1024, blockSize = 4096, data = { 0: 0x11, 3: 0x33 }, id = 1, parent, bitmapFill = 0xff } = {}) {
  const entries = Math.ceil(size / blockSize);
  const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
  const bitmapBytes = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
  let next = SECTOR + HEADER;
  const locators = [];
  if (parent) {
    const bytes = utf16le(`.\\${parent.name}`);
    locators.push({ code: 'W2ru', at: next, bytes });
    next += Math.ceil(bytes.length / SECTOR) * SECTOR;
  }
  const tableOffset = next;
  next += batBytes;
  const blocks = Object.keys(data)
    .map(Number)
    .sort((a, b) => a - b);
  const bat = new Uint32Array(entries).fill(0xffffffff);
  const blockAt = {};
  for (const i of blocks) {
    bat[i] = next / SECTOR;
    blockAt[i] = next;
    next += bitmapBytes + blockSize;
  }
  const b = new Uint8Array(next + FOOTER);
  const f = footer({ type: parent ? 4 : 3, size, dataOffset: SECTOR, id });
  b.set(f, 0);
  b.set(f, next);
  const h = SECTOR;
  dynamicHeaderFields(b, h, { tableOffset, entries, blockSize });
  if (parent) {
    b.set(uuid(parent.id), h + 0x28);
    u32(b, h + 0x38, 0x2a000000);
    const name = parent.name;
    for (let i = 0; i < name.length; i++) {
      b[h + 0x40 + i * 2] = name.charCodeAt(i) >> 8;
      b[h + 0x41 + i * 2] = name.charCodeAt(i) & 0xff;
    }
    locators.forEach((l, i) => {
      const at = h + 0x240 + i * 24;
      ascii(b, at, l.code);
      u32(b, at + 4, Math.ceil(l.bytes.length / SECTOR) * SECTOR);
      u32(b, at + 8, l.bytes.length);
      u64(b, at + 16, l.at);
      b.set(l.bytes, l.at);
    });
  }
  sealHeader(b, h);
  for (let i = 0; i < entries; i++) u32(b, tableOffset + i * 4, bat[i]);
  b.fill(0xff, tableOffset + entries * 4, tableOffset + batBytes);
  for (const i of blocks) {
    b.fill(bitmapFill, blockAt[i], blockAt[i] + bitmapBytes);
    b.fill(data[i], blockAt[i] + bitmapBytes, blockAt[i] + bitmapBytes + blockSize);
  }
  return { bytes: b, tableOffset, entries, blockAt, bitmapBytes, blockSize, size, end: next, locatorsAt: h + 0x240 };
}

function fixed({ size = 64 * 1024, fill = 0x66, creator = 'win ' } = {}) {
  const b = new Uint8Array(size + FOOTER).fill(fill, 0, size);
  b.set(footer({ type: 2, size, creator }), size);
  return b;
}

/** Applies `fn` to a copy of a fresh image; `seal` lists what to re-checksum. */
function mutate(make, fn, seal = []) {
  return () => {
    const img = make();
    const b = img.bytes ?? img;
    fn(b, img);
    if (seal.includes('header')) sealHeader(b);
    if (seal.includes('footers')) {
      sealFooter(b, 0);
      sealFooter(b, b.length - FOOTER);
    }
    if (seal.includes('tail')) sealFooter(b, b.length - FOOTER);
    return b;
  };
}

const H = SECTOR; // the dynamic header's offset in our images

/** Every case. */
export const cases = [
  // --- truncation ---
  { name: 'truncated-footer', expect: 'ERR_IMG_CORRUPT', description: 'a file of 300 bytes: less than a footer', bytes: () => footer({ type: 3, size: 65536, dataOffset: 512 }).slice(0, 300) },
  { name: 'truncated-fixed-footer', expect: 'ERR_IMG_CORRUPT', description: 'a fixed disk whose footer lost its last 200 bytes: no footer anywhere', bytes: () => fixed().slice(0, 65536 + 312) },
  { name: 'truncated-header', expect: 'ERR_IMG_CORRUPT', description: 'footer copy and 600 bytes of the dynamic header, nothing else', bytes: () => dynamic().bytes.slice(0, 512 + 600) },
  {
    name: 'truncated-header-with-tail',
    expect: 'ERR_IMG_CORRUPT',
    description: 'the dynamic header cut short, a footer appended',
    bytes: () => {
      const d = dynamic();
      const b = new Uint8Array(512 + 600 + 512);
      b.set(d.bytes.subarray(0, 1112));
      b.set(d.bytes.subarray(0, 512), 1112);
      return b;
    },
  },
  {
    name: 'truncated-bat',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a 2 MiB-entry BAT cut after 100 bytes (footer appended)',
    bytes: () => {
      const d = dynamic({ size: 1 << 30, blockSize: 512, data: {} });
      const cut = d.tableOffset + 100;
      const b = new Uint8Array(cut + 512);
      b.set(d.bytes.subarray(0, cut));
      b.set(d.bytes.subarray(0, 512), cut);
      return b;
    },
  },
  {
    name: 'truncated-block',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'the last block is cut in the middle of its data (no footer after it): read-only opens salvage it (the missing bytes read as zeros, as qemu reads them)',
    bytes: () => {
      const d = dynamic();
      return d.bytes.slice(0, d.blockAt[3] + d.bitmapBytes + 1000);
    },
  },
  {
    name: 'partial-block-bitmap-at-eof',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'the file ends inside the sector bitmap of its last block: salvaged (the block reads as zeros)',
    bytes: () => {
      const d = dynamic({ blockSize: 2 * 1024 * 1024, size: 8 * 1024 * 1024, data: { 0: 1, 2: 2 } });
      return d.bytes.slice(0, d.blockAt[2] + 256);
    },
  },
  // --- checksums ---
  {
    name: 'bad-footer-checksum',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'both footer copies carry a wrong checksum (qemu warns and reads on; so do we)',
    bytes: mutate(dynamic, (b) => {
      u32(b, 64, 1);
      u32(b, b.length - 512 + 64, 1);
    }),
  },
  {
    name: 'bad-footer-copy-checksum',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'the copy at offset 0 has a wrong checksum: the one at the end is used',
    bytes: mutate(dynamic, (b) => {
      b[0x20] ^= 0x40;
    }),
  },
  {
    name: 'bad-header-checksum',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'the dynamic header checksum is wrong',
    bytes: mutate(dynamic, (b) => {
      u32(b, H + 0x24, 0x12345678);
    }),
  },
  { name: 'bad-header-cookie', expect: 'ERR_IMG_CORRUPT', description: 'no "cxsparse" at the data offset', bytes: mutate(dynamic, (b) => ascii(b, H, 'cxspars!'), ['header']) },
  {
    name: 'bad-disk-type',
    expect: 'ERR_IMG_CORRUPT',
    description: 'disk type 7',
    bytes: mutate(
      dynamic,
      (b) => {
        u32(b, 0x3c, 7);
        u32(b, b.length - 512 + 0x3c, 7);
      },
      ['footers'],
    ),
  },
  // --- absurd sizes ---
  {
    name: 'size-over-2040g-fixed',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a fixed disk (creator qem2: sized by current size) of 2 TiB + 512',
    bytes: mutate(
      () => fixed({ creator: 'qem2' }),
      (b) => {
        u64(b, b.length - 512 + 0x30, 2048 * GiB + 512);
      },
      ['tail'],
    ),
  },
  {
    name: 'size-over-2040g-dynamic',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a dynamic disk whose current size is 2^52 bytes',
    bytes: mutate(
      dynamic,
      (b) => {
        for (const at of [0, b.length - 512]) {
          u64(b, at + 0x30, 2 ** 52);
          b.set([0xff, 0xff, 16, 255], at + 0x38);
        }
      },
      ['footers'],
    ),
  },
  {
    name: 'size-over-2^53',
    expect: 'ERR_IMG_CORRUPT',
    description: 'current size 0xffffffffffffffff (beyond a JS number)',
    bytes: mutate(
      dynamic,
      (b) => {
        for (const at of [0, b.length - 512]) u64(b, at + 0x30, 0xffffffffffffffffn);
      },
      ['footers'],
    ),
  },
  {
    name: 'fixed-larger-than-file',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a fixed disk of 1 GiB in a 64 KiB file',
    bytes: mutate(
      () => fixed({ creator: 'qem2' }),
      (b) => u64(b, b.length - 512 + 0x30, GiB),
      ['tail'],
    ),
  },
  { name: 'max-table-entries-huge', expect: 'ERR_IMG_CORRUPT', description: 'max table entries 0xffffffff', bytes: mutate(dynamic, (b) => u32(b, H + 0x1c, 0xffffffff), ['header']) },
  { name: 'max-table-entries-past-eof', expect: 'ERR_IMG_CORRUPT', description: 'max table entries 2^24: a 64 MiB BAT in a small file', bytes: mutate(dynamic, (b) => u32(b, H + 0x1c, 2 ** 24), ['header']) },
  { name: 'bat-too-small', expect: 'ERR_IMG_CORRUPT', description: 'one BAT entry for a 64 KiB disk of 4 KiB blocks', bytes: mutate(dynamic, (b) => u32(b, H + 0x1c, 1), ['header']) },
  { name: 'bat-past-eof', expect: 'ERR_IMG_CORRUPT', description: 'table offset beyond the end of the file', bytes: mutate(dynamic, (b) => u64(b, H + 0x10, 0x7fff0000), ['header']) },
  { name: 'bat-offset-huge', expect: 'ERR_IMG_CORRUPT', description: 'table offset 2^63', bytes: mutate(dynamic, (b) => u64(b, H + 0x10, 2n ** 63n), ['header']) },
  { name: 'bat-over-header', expect: 'ERR_IMG_CORRUPT', description: 'the BAT overlaps the dynamic header', bytes: mutate(dynamic, (b) => u64(b, H + 0x10, 1024), ['header']) },
  {
    name: 'data-offset-past-eof',
    expect: 'ERR_IMG_CORRUPT',
    description: 'the footer data offset points past the end of the file',
    bytes: mutate(
      dynamic,
      (b) => {
        u64(b, 0x10, 0x7fff0000);
        u64(b, b.length - 512 + 0x10, 0x7fff0000);
      },
      ['footers'],
    ),
  },
  {
    name: 'data-offset-zero',
    expect: 'ERR_IMG_CORRUPT',
    description: 'the footer data offset points at the footer copy itself',
    bytes: mutate(
      dynamic,
      (b) => {
        u64(b, 0x10, 0);
        u64(b, b.length - 512 + 0x10, 0);
      },
      ['footers'],
    ),
  },
  // --- block sizes ---
  { name: 'block-size-0', expect: 'ERR_IMG_CORRUPT', description: 'block size 0', bytes: mutate(dynamic, (b) => u32(b, H + 0x20, 0), ['header']) },
  { name: 'block-size-not-power-of-two', expect: 'ERR_IMG_CORRUPT', description: 'block size 3 MiB', bytes: mutate(dynamic, (b) => u32(b, H + 0x20, 3 * 1024 * 1024), ['header']) },
  { name: 'block-size-2^31', expect: 'ERR_IMG_CORRUPT', description: 'block size 2 GiB', bytes: mutate(dynamic, (b) => u32(b, H + 0x20, 2 ** 31), ['header']) },
  { name: 'block-size-256', expect: 'ERR_IMG_CORRUPT', description: 'block size below a sector', bytes: mutate(dynamic, (b) => u32(b, H + 0x20, 256), ['header']) },
  { name: 'block-size-4m', expect: 'ok', untrusted: 'ERR_IMG_UNSAFE', description: 'a 4 MiB block size (valid; no real writer uses more than 2 MiB: untrusted opens refuse it)', bytes: () => dynamic({ blockSize: 4 * 1024 * 1024, size: 8 * 1024 * 1024, data: { 1: 7 } }).bytes },
  // --- BAT entries ---
  { name: 'bat-entry-into-header', expect: 'ERR_IMG_CORRUPT', description: 'BAT entry 1 points at sector 1 (the dynamic header)', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 4, 1)) },
  { name: 'bat-entry-into-bat', expect: 'ERR_IMG_CORRUPT', description: 'BAT entry 5 points at the BAT', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 20, d.tableOffset / 512)) },
  { name: 'bat-entry-past-eof', expect: 'ERR_IMG_CORRUPT', description: 'BAT entry 2 points 8 GiB into a small file', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 8, 0x01000000)) },
  { name: 'bat-entry-last-sector', expect: 'ERR_IMG_CORRUPT', description: 'BAT entry 2 points at the footer: the block would run past the end', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 8, d.end / 512)) },
  { name: 'bat-entries-overlap', expect: 'ERR_IMG_CORRUPT', description: 'BAT entries 0 and 3 point at the same block', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 12, getU32(b, d.tableOffset))) },
  { name: 'bat-entries-overlap-partly', expect: 'ERR_IMG_CORRUPT', description: 'BAT entry 3 starts inside block 0', bytes: mutate(dynamic, (b, d) => u32(b, d.tableOffset + 12, getU32(b, d.tableOffset) + 2)) },
  {
    name: 'bat-entry-past-disk-end',
    expect: 'ok',
    check: 'leak',
    description: 'a BAT entry beyond the disk size (BAT padding) is allocated: harmless, reported as a leak',
    bytes: mutate(
      () => dynamic({ data: { 0: 1, 15: 9 } }),
      (b) => {
        for (const at of [0, b.length - 512]) {
          u64(b, at + 0x28, 60 * 1024);
          u64(b, at + 0x30, 60 * 1024);
        }
      },
      ['footers'],
    ),
  },
  { name: 'bitmap-bits-past-disk-end', expect: 'ok', description: 'the partial last block has bitmap bits set for sectors past the end of the disk', bytes: () => dynamic({ size: 62 * 1024, data: { 15: 5 } }).bytes },
  { name: 'bitmap-clear', expect: 'ok', description: 'an allocated block whose bitmap is all clear reads as zeros', bytes: () => dynamic({ data: { 2: 9 }, bitmapFill: 0 }).bytes },
  // --- parent locators (differencing, opened with noBacking) ---
  {
    name: 'locator-length-huge',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'parent locator data length 0xffffffff',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u32(d.bytes, d.locatorsAt + 8, 0xffffffff);
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'locator-offset-huge',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'parent locator data at offset 2^62',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u64(d.bytes, d.locatorsAt + 16, 2n ** 62n);
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'locator-offset-zero',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'parent locator data at offset 0 (the footer copy)',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u64(d.bytes, d.locatorsAt + 16, 0);
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'locator-over-bat',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'parent locator data at the BAT: readable, never writable (a rebase would zero the BAT)',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u64(d.bytes, d.locatorsAt + 16, BigInt(d.tableOffset));
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'locator-over-header',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'parent locator data inside the dynamic header',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u64(d.bytes, d.locatorsAt + 16, 1024n);
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'locators-overlap',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'two parent locators share their data sector',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      const e = d.locatorsAt;
      d.bytes.copyWithin(e + 24, e, e + 24);
      ascii(d.bytes, e + 24, 'W2ku');
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  {
    name: 'block-over-footer',
    expect: 'problem',
    untrusted: 'ERR_IMG_CORRUPT',
    description: 'the last block covers the footer at the end of the file (a write to its last sector would destroy it)',
    bytes: () => {
      const d = dynamic();
      u32(d.bytes, d.tableOffset + 12, d.blockAt[3] / 512 + 1);
      return d.bytes;
    },
  },
  {
    name: 'locator-odd-length',
    expect: 'ok',
    description: 'a W2ru locator of odd length (half a UTF-16 unit): decoded without the stray byte',
    bytes: () => {
      const d = dynamic({ parent: { name: 'p.vhd', id: 9 } });
      u32(d.bytes, d.locatorsAt + 8, 11);
      sealHeader(d.bytes);
      return d.bytes;
    },
  },
  // --- chains (opened with a resolver over `files`) ---
  {
    name: 'chain-cycle',
    expect: 'ERR_IMG_CHAIN',
    description: "a.vhd's parent is b.vhd, b.vhd's parent is a.vhd",
    self: 'a.vhd',
    bytes: () => dynamic({ id: 1, parent: { name: 'b.vhd', id: 2 } }).bytes,
    files: () => ({ 'b.vhd': dynamic({ id: 2, parent: { name: 'a.vhd', id: 1 } }).bytes }),
  },
  {
    name: 'chain-cycle-by-uuid',
    expect: 'ERR_IMG_CHAIN',
    description: "a.vhd's parent is b.vhd, whose parent c.vhd carries a.vhd's unique id",
    self: 'a.vhd',
    bytes: () => dynamic({ id: 1, parent: { name: 'b.vhd', id: 2 } }).bytes,
    files: () => ({ 'b.vhd': dynamic({ id: 2, parent: { name: 'c.vhd', id: 1 } }).bytes, 'c.vhd': dynamic({ id: 1, parent: { name: 'b.vhd', id: 2 } }).bytes }),
  },
  { name: 'chain-self-parent', expect: 'ERR_IMG_CHAIN', description: 'a differencing disk whose parent unique id is its own', self: 'a.vhd', bytes: () => dynamic({ id: 4, parent: { name: 'a.vhd', id: 4 } }).bytes, files: () => ({}) },
  {
    name: 'chain-too-deep',
    expect: 'ERR_IMG_CHAIN',
    description: 'a chain of 70 differencing disks (the default limit is 64 layers)',
    self: 'l0.vhd',
    bytes: () => dynamic({ id: 100, parent: { name: 'l1.vhd', id: 101 }, data: {} }).bytes,
    files: () => {
      const out = {};
      for (let i = 1; i < 70; i++) out[`l${i}.vhd`] = dynamic({ id: 100 + i, parent: { name: `l${i + 1}.vhd`, id: 101 + i }, data: {} }).bytes;
      out['l70.vhd'] = dynamic({ id: 170, data: {} }).bytes;
      return out;
    },
  },
  // --- other ---
  {
    name: 'coalesce-interrupted',
    expect: 'ERR_IMG_UNSAFE',
    description: 'footer cookie "coalesce": a merge into this image was interrupted',
    bytes: mutate(
      dynamic,
      (b) => {
        ascii(b, 0, 'coalesce');
        ascii(b, b.length - 512, 'coalesce');
      },
      ['footers'],
    ),
  },
  {
    name: 'boot-signature-footer',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'a fixed disk whose footer ends with the MBR boot signature 0x55AA (a raw disk whose last sector looks like a footer?): qemu reads it as VHD; untrusted opens refuse',
    bytes: mutate(
      fixed,
      (b) => {
        b[b.length - 2] = 0x55;
        b[b.length - 1] = 0xaa;
      },
      ['tail'],
    ),
  },
  {
    name: 'boot-signature-copy',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    description: 'the footer copy at offset 0 of a dynamic disk ends with 0x55AA (both copies valid and equal)',
    bytes: mutate(
      dynamic,
      (b) => {
        for (const at of [0, b.length - 512]) {
          b[at + 510] = 0x55;
          b[at + 511] = 0xaa;
        }
      },
      ['footers'],
    ),
  },
  {
    name: 'junk-after-footer',
    expect: 'problem',
    untrusted: 'ERR_IMG_UNSAFE',
    check: 'leak',
    description: '4 KiB of junk after the footer (an unfinished block allocation): readable, repairable',
    bytes: () => {
      const d = dynamic();
      const b = new Uint8Array(d.bytes.length + 4096).fill(0xee);
      b.set(d.bytes);
      return b;
    },
  },
  { name: 'valid-dynamic', expect: 'ok', description: 'the unmodified dynamic image every mutation starts from', bytes: () => dynamic().bytes },
  { name: 'valid-fixed', expect: 'ok', description: 'the unmodified fixed image', bytes: () => fixed() },
];

/** The bytes of a case. */
export function caseBytes(c) {
  return typeof c.bytes === 'function' ? c.bytes() : c.bytes;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2] ?? 'vhd-corpus';
  mkdirSync(dir, { recursive: true });
  for (const c of cases) {
    writeFileSync(join(dir, `${c.name}.vhd`), caseBytes(c));
    for (const [name, bytes] of Object.entries(c.files?.() ?? {})) writeFileSync(join(dir, `${c.name}--${name}`), bytes);
  }
  process.stderr.write(`wrote ${cases.length} cases to ${dir}\n`);
}
