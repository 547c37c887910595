#!/usr/bin/env node
// A negative corpus for qcow2 readers: valid images built in-process (no
// build step, no dependency beyond node:zlib: the few structures are
// written here by hand) and mutated into every kind of damage a reader
// must refuse or survive.
//
//   import { cases } from './tools/make-corpus/qcow2.mjs';
//   node tools/make-corpus/qcow2.mjs [dir]     writes each case to dir/<name>.qcow2
//
// A case: { name, description, bytes: Uint8Array | () => Uint8Array,
//   expect, read?, check?, files? }
// - expect: what openQcow2 does with it: an error code ('ERR_IMG_CORRUPT',
//   'ERR_IMG_UNSUPPORTED', 'ERR_IMG_CHAIN', 'ERR_IMG_WRONG_FORMAT': not a
//   qcow2 image) or 'ok' (it opens);
// - read: for images that open, what reading every byte (and mapping the
//   extents) gives: an error code or 'ok' (default 'ok');
// - check: for images that open, what checkQcow2 says: 'corrupt'
//   (corruptions > 0) or 'clean' (default 'clean' for images that open;
//   images that do not open do not check either, unless `check` is given:
//   a chain error is the chain's, and the image itself checks clean);
// - files: other images by name (backing files), for a resolver; the image
//   itself is `${name}.qcow2`.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';

const KiB = 1024;
const MiB = 1024 * KiB;

// --- the structures (qemu docs/interop/qcow2.txt), just enough to write them ---

function view(b) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
function u16(b, at, v) {
  view(b).setUint16(at, v, false);
}
function u32(b, at, v) {
  view(b).setUint32(at, v >>> 0, false);
}
function u64(b, at, v) {
  view(b).setBigUint64(at, BigInt(v), false);
}
function getU32(b, at) {
  return view(b).getUint32(at, false);
}
function getU64(b, at) {
  return Number(view(b).getBigUint64(at, false));
}
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;

/** Data of a guest cluster: recognisable text, so that a wrong read shows. */
function clusterData(cs, n) {
  const text = new TextEncoder().encode(`cluster ${n} `.repeat(Math.ceil(cs / 8)));
  return text.subarray(0, cs);
}

/**
 * A valid image: header (v3, 112 bytes, or v2), refcount table (cluster 1),
 * one refcount block (2), L1 (3), one L2 table (4), then data clusters and
 * compressed clusters, each in its own host cluster.
 *
 * options: clusterBits (12), size (1 MiB), version (3), data (guest clusters
 * with plain data), compressed (guest cluster -> packed bytes, or true for
 * deflate of the cluster's data), zstd (compression_type 1), backing
 * (backing file name), extraClusters (appended, counted in the refcounts).
 */
export function image(options = {}) {
  const bits = options.clusterBits ?? 12;
  const cs = 2 ** bits;
  const size = options.size ?? MiB;
  const version = options.version ?? 3;
  const data = options.data ?? [0, 3];
  const compressed = options.compressed ?? {};
  const l2Entries = cs / 8;
  const l1Size = Math.max(1, Math.ceil(size / (l2Entries * cs)));
  const hosts = {};
  let next = 5;
  for (const g of data) hosts[g] = next++;
  const packed = {};
  for (const [g, p] of Object.entries(compressed)) {
    packed[g] = p === true ? new Uint8Array(deflateRawSync(clusterData(cs, Number(g)), { windowBits: 12 })) : p;
    hosts[g] = next;
    next += Math.ceil(packed[g].length / cs);
  }
  const extra = options.extraClusters ?? 0;
  const total = next + extra;
  const b = new Uint8Array(total * cs);
  // Header (spec: "Header").
  b.set([0x51, 0x46, 0x49, 0xfb], 0);
  u32(b, 4, version);
  u32(b, 20, bits);
  u64(b, 24, size);
  u32(b, 36, l1Size);
  u64(b, 40, 3 * cs);
  u64(b, 48, cs);
  u32(b, 56, 1);
  const headerLength = version === 3 ? 112 : 72;
  if (version === 3) {
    if (options.zstd) {
      u64(b, 72, 1n << 3n);
      b[104] = 1;
    }
    u32(b, 96, 4);
    u32(b, 100, headerLength);
  }
  let at = headerLength;
  if (options.backing) {
    // Backing format extension, then the end marker, then the name.
    const fmt = new TextEncoder().encode(options.backingFormat ?? 'qcow2');
    u32(b, at, 0xe2792aca);
    u32(b, at + 4, fmt.length);
    b.set(fmt, at + 8);
    at += 8 + Math.ceil(fmt.length / 8) * 8;
  }
  if (version === 3 || options.backing) at += 8; // end of extensions
  if (options.backing) {
    const name = new TextEncoder().encode(options.backing);
    b.set(name, at);
    u64(b, 8, at);
    u32(b, 16, name.length);
  }
  // Refcount table and block: every cluster of the file has refcount 1.
  u64(b, cs, 2 * cs);
  for (let c = 0; c < total; c++) u16(b, 2 * cs + c * 2, 1);
  // L1 -> L2 at cluster 4.
  u64(b, 3 * cs, COPIED | BigInt(4 * cs));
  for (const g of data) {
    u64(b, 4 * cs + g * 8, COPIED | BigInt(hosts[g] * cs));
    b.set(clusterData(cs, g), hosts[g] * cs);
  }
  const x = 62 - (bits - 8);
  for (const [g, p] of Object.entries(packed)) {
    const host = hosts[g] * cs;
    // The descriptor's sector count has cluster_bits - 8 bits: a longer stream is described by the largest count
    // (shifted unmasked, it ran into bits 62 and 63 and set COPIED, which qemu-img check counts as a corruption).
    const sectors = Math.min(Math.ceil(p.length / 512) - 1, 2 ** (bits - 8) - 1);
    u64(b, 4 * cs + Number(g) * 8, COMPRESSED | (BigInt(sectors) << BigInt(x)) | BigInt(host));
    b.set(p, host);
  }
  return { bytes: b, cs, hosts, l1At: 3 * cs, l2At: 4 * cs, rtAt: cs, rbAt: 2 * cs, total };
}

/** A case's bytes from a builder and a mutation. */
function mutate(build, change) {
  return () => {
    const img = build();
    const out = change(img.bytes, img);
    return out ?? img.bytes;
  };
}

/** A zstd frame without a content size whose RLE blocks expand to `blocks` x 128 KiB. */
function zstdBomb(blocks) {
  const head = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]; // magic; FHD: no FCS, not single segment; window 128 MiB? (0x58: exponent 11 -> 2 MiB)
  const out = new Uint8Array(head.length + blocks * 4);
  out.set(head);
  let at = head.length;
  for (let i = 0; i < blocks; i++) {
    const last = i === blocks - 1 ? 1 : 0;
    const header = last | (1 << 1) | ((128 * KiB) << 3); // RLE block of 128 KiB
    out[at] = header & 0xff;
    out[at + 1] = (header >> 8) & 0xff;
    out[at + 2] = (header >> 16) & 0xff;
    out[at + 3] = 0x41;
    at += 4;
  }
  return out;
}

/** One snapshot table entry (spec: "Snapshot table entry"). */
function snapshotEntry(l1At, l1Size, id, name, extraSize) {
  const idB = new TextEncoder().encode(id);
  const nameB = new TextEncoder().encode(name);
  const len = Math.ceil((40 + extraSize + idB.length + nameB.length) / 8) * 8;
  const e = new Uint8Array(len);
  u64(e, 0, l1At);
  u32(e, 8, l1Size);
  u16(e, 12, idB.length);
  u16(e, 14, nameB.length);
  u32(e, 36, extraSize);
  e.set(idB, 40 + extraSize);
  e.set(nameB, 40 + extraSize + idB.length);
  return e;
}

/** A chain of images named `${prefix}0.qcow2` ... each backed by the next; the last by `last`. */
function chain(prefix, count, last) {
  const files = {};
  for (let i = 0; i < count; i++) {
    const backing = i === count - 1 ? last : `${prefix}${i + 1}.qcow2`;
    files[`${prefix}${i}.qcow2`] = image({ backing, data: [i % 8] }).bytes;
  }
  return files;
}

const plain = () => image();
const withCompressed = () => image({ data: [0], compressed: { 2: true, 5: true } });

export const cases = [
  // --- truncation ---
  { name: 'truncated-header', expect: 'ERR_IMG_CORRUPT', description: 'a file of 50 bytes: less than a version 2 header', bytes: () => plain().bytes.slice(0, 50) },
  { name: 'truncated-header-v3', expect: 'ERR_IMG_CORRUPT', description: 'a version 3 header cut at 90 bytes (it needs 104)', bytes: () => plain().bytes.slice(0, 90) },
  { name: 'truncated-refcount-table', expect: 'ERR_IMG_CORRUPT', description: 'the file ends inside the refcount table', bytes: () => plain().bytes.slice(0, 4096 + 100) },
  {
    name: 'truncated-l1',
    expect: 'ERR_IMG_CORRUPT',
    check: 'corrupt',
    description: 'an L1 table of 300 entries cut after 100 bytes',
    bytes: mutate(plain, (b) => {
      u32(b, 36, 300);
      return b.slice(0, 3 * 4096 + 100);
    }),
  },
  { name: 'truncated-l2', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'the file ends inside the L2 table', bytes: () => plain().bytes.slice(0, 4 * 4096 + 1000) },
  { name: 'truncated-data', expect: 'ok', description: 'the file ends inside the last data cluster: the rest reads as zeros and check accepts it, as qemu does (a last cluster written only in part is normal)', bytes: () => plain().bytes.slice(0, 6 * 4096 + 100) },
  // --- absurd sizes and counts ---
  { name: 'l1-size-over-32m', expect: 'ERR_IMG_CORRUPT', description: 'l1_size 4194305: an L1 table over 32 MiB', bytes: mutate(plain, (b) => u32(b, 36, 4 * MiB + 1)) },
  { name: 'l1-size-max', expect: 'ERR_IMG_CORRUPT', description: 'l1_size 0xffffffff', bytes: mutate(plain, (b) => u32(b, 36, 0xffffffff)) },
  { name: 'l1-too-small', expect: 'ERR_IMG_CORRUPT', description: 'an L1 table of 1 entry for a 1 TiB disk', bytes: mutate(plain, (b) => u64(b, 24, 1024 * 1024 * MiB)) },
  { name: 'refcount-table-over-8m', expect: 'ERR_IMG_CORRUPT', description: 'refcount_table_clusters 2049 of 4 KiB: over 8 MiB', bytes: mutate(plain, (b) => u32(b, 56, 2049)) },
  { name: 'refcount-table-past-eof', expect: 'ERR_IMG_CORRUPT', description: 'a refcount table of 1000 clusters in a small file', bytes: mutate(plain, (b) => u32(b, 56, 1000)) },
  { name: 'refcount-order-7', expect: 'ERR_IMG_CORRUPT', description: 'refcount_order 7 (128-bit refcounts)', bytes: mutate(plain, (b) => u32(b, 96, 7)) },
  {
    name: 'snapshots-over-65536',
    expect: 'ERR_IMG_CORRUPT',
    description: 'nb_snapshots 65537',
    bytes: mutate(
      () => image({ extraClusters: 1 }),
      (b, img) => {
        u32(b, 60, 65537);
        u64(b, 64, (img.total - 1) * img.cs);
      },
    ),
  },
  {
    name: 'snapshot-extra-data-over-1k',
    expect: 'ERR_IMG_CORRUPT',
    description: 'one snapshot whose extra data is 2048 bytes',
    bytes: mutate(
      () => image({ extraClusters: 2 }),
      (b, img) => {
        b.set(snapshotEntry(img.l1At, 1, '1', 'snap', 2048), (img.total - 2) * img.cs);
        u32(b, 60, 1);
        u64(b, 64, (img.total - 2) * img.cs);
      },
    ),
  },
  {
    name: 'snapshot-table-past-eof',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a snapshot table offset far past the end of the file',
    bytes: mutate(plain, (b) => {
      u32(b, 60, 3);
      u64(b, 64, 1024 * MiB);
    }),
  },
  { name: 'size-over-2^53', expect: 'ERR_IMG_CORRUPT', description: 'disk size 0xffffffffffffffff', bytes: mutate(plain, (b) => u64(b, 24, 0xffffffffffffffffn)) },
  { name: 'cluster-bits-8', expect: 'ERR_IMG_CORRUPT', description: 'cluster_bits 8 (256-byte clusters)', bytes: mutate(plain, (b) => u32(b, 20, 8)) },
  { name: 'cluster-bits-22', expect: 'ERR_IMG_CORRUPT', description: 'cluster_bits 22 (4 MiB clusters)', bytes: mutate(plain, (b) => u32(b, 20, 22)) },
  { name: 'cluster-bits-huge', expect: 'ERR_IMG_CORRUPT', description: 'cluster_bits 63', bytes: mutate(plain, (b) => u32(b, 20, 63)) },
  { name: 'header-length-not-multiple-of-8', expect: 'ERR_IMG_CORRUPT', description: 'header_length 108', bytes: mutate(plain, (b) => u32(b, 100, 108)) },
  { name: 'header-length-past-cluster', expect: 'ERR_IMG_CORRUPT', description: 'header_length 8192 in a 4 KiB cluster', bytes: mutate(plain, (b) => u32(b, 100, 8192)) },
  {
    name: 'extension-past-cluster-0',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a header extension of 5000 bytes starting in a 4 KiB cluster 0',
    bytes: mutate(plain, (b) => {
      u32(b, 112, 0x12345678);
      u32(b, 116, 5000);
    }),
  },
  {
    name: 'extension-length-huge',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a header extension of 0xffffffff bytes',
    bytes: mutate(plain, (b) => {
      u32(b, 112, 0x12345678);
      u32(b, 116, 0xffffffff);
    }),
  },
  {
    name: 'backing-name-past-cluster',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a backing file name at 4000, 200 bytes long, in a 4 KiB cluster 0',
    bytes: mutate(plain, (b) => {
      u64(b, 8, 4000);
      u32(b, 16, 200);
    }),
  },
  {
    name: 'backing-name-too-long',
    expect: 'ERR_IMG_CORRUPT',
    description: 'a backing file name of 2000 bytes',
    bytes: mutate(
      () => image({ clusterBits: 16 }),
      (b) => {
        u64(b, 8, 1024);
        u32(b, 16, 2000);
      },
    ),
  },
  // --- offsets past the end, misaligned, overlapping ---
  { name: 'l1-past-eof', expect: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'l1_table_offset 1 GiB in a small file (check counts it, as qemu-img check does)', bytes: mutate(plain, (b) => u64(b, 40, 1024 * MiB)) },
  { name: 'l1-offset-over-2^56', expect: 'ERR_IMG_CORRUPT', description: 'l1_table_offset 2^60', bytes: mutate(plain, (b) => u64(b, 40, 2n ** 60n)) },
  { name: 'l1-misaligned', expect: 'ERR_IMG_CORRUPT', description: 'l1_table_offset 0x3008 (not a cluster boundary)', bytes: mutate(plain, (b) => u64(b, 40, 3 * 4096 + 8)) },
  { name: 'l1-over-header', expect: 'ERR_IMG_CORRUPT', description: 'the L1 table at offset 0, over the header', bytes: mutate(plain, (b) => u64(b, 40, 0)) },
  { name: 'refcount-table-misaligned', expect: 'ERR_IMG_CORRUPT', description: 'refcount_table_offset 0x1200', bytes: mutate(plain, (b) => u64(b, 48, 4096 + 512)) },
  { name: 'refcount-table-over-header', expect: 'ERR_IMG_CORRUPT', description: 'the refcount table at offset 0', bytes: mutate(plain, (b) => u64(b, 48, 0)) },
  { name: 'l2-past-eof', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'an L1 entry pointing 1 GiB past the end of the file', bytes: mutate(plain, (b, img) => u64(b, img.l1At, COPIED | BigInt(1024 * MiB))) },
  { name: 'l2-misaligned', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'an L1 entry pointing at 0x4200', bytes: mutate(plain, (b, img) => u64(b, img.l1At, COPIED | BigInt(img.l2At + 512))) },
  { name: 'l2-over-header', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'an L1 entry pointing at the header (offset 0 with other bits set: not the "no table" entry)', bytes: mutate(plain, (b, img) => u64(b, img.l1At, COPIED | 0x200n)) },
  { name: 'l2-over-l1', expect: 'ok', check: 'corrupt', description: 'an L1 entry pointing at the L1 table itself (its entries read as L2 entries: check finds the overlap)', bytes: mutate(plain, (b, img) => u64(b, img.l1At, COPIED | BigInt(img.l1At))) },
  { name: 'l2-over-refcount-table', expect: 'ok', check: 'corrupt', description: 'an L1 entry pointing at the refcount table (its entries read as L2 entries: check finds the overlap)', bytes: mutate(plain, (b, img) => u64(b, img.l1At, COPIED | BigInt(img.rtAt))) },
  { name: 'data-past-eof', expect: 'ok', check: 'corrupt', description: 'an L2 entry pointing 1 GiB past the end (reads as zeros, as qemu; check finds it)', bytes: mutate(plain, (b, img) => u64(b, img.l2At + 8, COPIED | BigInt(1024 * MiB))) },
  { name: 'data-misaligned', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'an L2 entry pointing at 0x5200', bytes: mutate(plain, (b, img) => u64(b, img.l2At, COPIED | BigInt(img.hosts[0] * img.cs + 512))) },
  { name: 'data-over-l1', expect: 'ok', check: 'corrupt', description: 'an L2 entry pointing at the L1 table', bytes: mutate(plain, (b, img) => u64(b, img.l2At + 16, COPIED | BigInt(img.l1At))) },
  { name: 'data-offset-over-2^56', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'an L2 entry with every offset bit set', bytes: mutate(plain, (b, img) => u64(b, img.l2At, COPIED | 0x00fffffffffffe00n)) },
  { name: 'refcount-block-past-eof', expect: 'ok', check: 'corrupt', description: 'a refcount table entry pointing past the end of the file', bytes: mutate(plain, (b, img) => u64(b, img.rtAt, 1024 * MiB)) },
  // --- features ---
  { name: 'unknown-incompatible-bit', expect: 'ERR_IMG_UNSUPPORTED', description: 'incompatible feature bit 20', bytes: mutate(plain, (b) => u32(b, 76, 1 << 20)) },
  { name: 'unknown-incompatible-bit-63', expect: 'ERR_IMG_UNSUPPORTED', description: 'incompatible feature bit 63', bytes: mutate(plain, (b) => u32(b, 72, 0x80000000)) },
  { name: 'encrypted-aes', expect: 'ok', read: 'ERR_IMG_INVALID_ARG', description: 'crypt_method 1 (AES): opens and checks; its data needs the passphrase', bytes: mutate(plain, (b) => u32(b, 32, 1)) },
  { name: 'encrypted-luks', expect: 'ERR_IMG_CORRUPT', description: 'crypt_method 2 (LUKS) without the encryption header pointer', bytes: mutate(plain, (b) => u32(b, 32, 2)) },
  { name: 'encrypted-unknown-method', expect: 'ERR_IMG_UNSUPPORTED', description: 'crypt_method 77', bytes: mutate(plain, (b) => u32(b, 32, 77)) },
  {
    name: 'unknown-compression-type',
    expect: 'ERR_IMG_UNSUPPORTED',
    description: 'compression_type 9 with the compression bit',
    bytes: mutate(plain, (b) => {
      u64(b, 72, 1n << 3n);
      b[104] = 9;
    }),
  },
  {
    name: 'compression-type-without-bit',
    expect: 'ERR_IMG_CORRUPT',
    description: 'compression_type 1 without the compression type bit',
    bytes: mutate(plain, (b) => {
      b[104] = 1;
    }),
  },
  { name: 'bad-version', expect: 'ERR_IMG_UNSUPPORTED', description: 'version 4: a qcow2 newer than the reader (refused as unsupported, naming the version)', bytes: mutate(plain, (b) => u32(b, 4, 4)) },
  { name: 'version-0', expect: 'ERR_IMG_CORRUPT', description: 'the qcow2 magic with version 0, which never existed', bytes: mutate(plain, (b) => u32(b, 4, 0)) },
  { name: 'qcow-v1', expect: 'ERR_IMG_WRONG_FORMAT', description: 'version 1: the magic of qcow2, but an image of the older qcow format (its field at 20 is no cluster_bits)', bytes: mutate(plain, (b) => u32(b, 4, 1)) },
  { name: 'bad-magic', expect: 'ERR_IMG_WRONG_FORMAT', description: 'no qcow2 magic: not a qcow2 image at all', bytes: mutate(plain, (b) => u32(b, 0, 0x12345678)) },
  {
    name: 'vhd-footer-not-qcow2',
    expect: 'ERR_IMG_WRONG_FORMAT',
    description: 'no qcow2 magic, a VHD footer in the last 512 bytes: named in the error',
    bytes: mutate(plain, (b) => {
      b.set(new TextEncoder().encode('conectix'), b.length - 512);
      u32(b, 0, 0);
    }),
  },
  // --- compressed clusters ---
  { name: 'compressed-ok', expect: 'ok', description: 'two deflate clusters (the baseline the next cases damage)', bytes: () => withCompressed().bytes },
  { name: 'compressed-inflates-short', expect: 'ok', read: 'ERR_IMG_CORRUPT', description: 'a deflate stream of 100 bytes of data', bytes: () => image({ data: [0], compressed: { 2: new Uint8Array(deflateRawSync(new Uint8Array(100).fill(7))) } }).bytes },
  { name: 'compressed-inflates-long', expect: 'ok', read: 'ERR_IMG_CORRUPT', description: 'a deflate stream of 64 MiB in a 4 KiB-cluster image', bytes: () => image({ data: [0], compressed: { 2: new Uint8Array(deflateRawSync(new Uint8Array(64 * MiB))) } }).bytes },
  { name: 'compressed-garbage', expect: 'ok', read: 'ERR_IMG_CORRUPT', description: 'compressed bytes that are no deflate stream', bytes: () => image({ data: [0], compressed: { 2: new Uint8Array(300).fill(0xff) } }).bytes },
  { name: 'compressed-past-eof', expect: 'ok', read: 'ERR_IMG_CORRUPT', check: 'corrupt', description: 'a compressed descriptor pointing 1 GiB past the end', bytes: mutate(withCompressed, (b, img) => u64(b, img.l2At + 16, COMPRESSED | BigInt(1024 * MiB))) },
  {
    name: 'compressed-sectors-past-eof',
    expect: 'ok',
    read: 'ERR_IMG_CORRUPT',
    check: 'corrupt',
    description: 'the last compressed cluster claims 8 sectors, running past the end of the file',
    bytes: mutate(withCompressed, (b, img) => {
      const x = 62 - (12 - 8);
      u64(b, img.l2At + 5 * 8, COMPRESSED | (7n << BigInt(x)) | BigInt(b.length - 600));
    }),
  },
  { name: 'zstd-bomb', expect: 'ok', read: 'ERR_IMG_CORRUPT', description: 'a zstd frame of 1000 RLE blocks (125 MiB) in a 4 KiB cluster', bytes: () => image({ zstd: true, data: [0], compressed: { 2: zstdBomb(1000) } }).bytes },
  { name: 'zstd-bomb-64k', expect: 'ok', read: 'ERR_IMG_CORRUPT', description: 'a zstd frame of RLE blocks (1 GiB) in a 64 KiB cluster', bytes: () => image({ clusterBits: 16, zstd: true, data: [0], compressed: { 2: zstdBomb(8192) } }).bytes },
  // --- backing chains ---
  {
    name: 'chain-cycle',
    expect: 'ERR_IMG_CHAIN',
    check: 'clean',
    description: 'A -> B -> A',
    self: 'chain-cycle.qcow2',
    bytes: () => image({ backing: 'chain-cycle-b.qcow2' }).bytes,
    files: () => ({ 'chain-cycle-b.qcow2': image({ backing: 'chain-cycle.qcow2' }).bytes, 'chain-cycle.qcow2': image({ backing: 'chain-cycle-b.qcow2' }).bytes }),
  },
  { name: 'chain-self', expect: 'ERR_IMG_CHAIN', check: 'clean', description: 'an image that is its own backing file', bytes: () => image({ backing: 'chain-self.qcow2' }).bytes, files: () => ({ 'chain-self.qcow2': image({ backing: 'chain-self.qcow2' }).bytes }) },
  { name: 'chain-too-deep', expect: 'ERR_IMG_CHAIN', check: 'clean', description: 'a chain of 70 images (the bound is 64)', bytes: () => image({ backing: 'deep0.qcow2' }).bytes, files: () => chain('deep', 70, 'deep-end.qcow2') },
];

/** The bytes of a case (built on demand). */
export async function caseBytes(c) {
  return typeof c.bytes === 'function' ? await c.bytes() : c.bytes;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2] ?? 'qcow2-corpus';
  mkdirSync(dir, { recursive: true });
  for (const c of cases) writeFileSync(join(dir, `${c.name}.qcow2`), await caseBytes(c));
  process.stdout.write(`${cases.length} cases written to ${dir}\n`);
}

export { getU32, getU64 };
