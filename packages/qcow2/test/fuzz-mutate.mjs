// Structure-aware damage for qcow2 images (the hostile input campaign,
// fuzz-campaign.mjs). `qcow2Layout` finds where the spec's structures sit
// in a valid image (docs/interop/qcow2.txt); `mutateQcow2` damages a copy:
// header fields, feature bits, header extensions, L1/L2/refcount entries,
// snapshot table, bitmap directory, compressed descriptors, random bytes,
// truncation; and (added after seed 1001: earlier seeds' cases replay
// with the commit before) the snapshots' own L1/L2 tables, the bytes of
// compressed clusters, and metadata pointers aimed at guest data clusters
// with crafted content in them. Every choice comes from the `random` it is
// given, so a (seed, case) pair always gives the same image.
import { deflateRawSync } from 'node:zlib';

const MASK_OFFSET = 0x00ff_ffff_ffff_fe00n;
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const EXT_BITMAPS = 0x23852875;

const u32 = (b, at) => (at + 4 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint32(at) : 0);
const u16 = (b, at) => (at + 2 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint16(at) : 0);
const u64 = (b, at) => (at + 8 <= b.length ? new DataView(b.buffer, b.byteOffset).getBigUint64(at) : 0n);
function put(b, at, width, value) {
  if (at < 0 || at + width > b.length) return;
  const v = BigInt.asUintN(width * 8, BigInt(value));
  for (let i = width - 1, x = v; i >= 0; i--, x >>= 8n) b[at + i] = Number(x & 0xffn);
}

/** Where the structures of a valid qcow2 image sit (offsets of fields and entries, not their parsed meaning). */
export function qcow2Layout(b) {
  const version = u32(b, 4);
  const clusterBits = u32(b, 20);
  const cs = 2 ** clusterBits;
  const headerLength = version >= 3 ? u32(b, 100) : 72;
  const incompat = version >= 3 ? u64(b, 72) : 0n;
  const extendedL2 = (incompat & (1n << 4n)) !== 0n;
  const entryBytes = extendedL2 ? 16 : 8;
  const l1Offset = Number(u64(b, 40));
  const l1Size = u32(b, 36);
  const rtOffset = Number(u64(b, 48));
  const rtClusters = u32(b, 56);
  const refcountOrder = version >= 3 ? u32(b, 96) : 4;
  const L = { version, clusterBits, cs, headerLength, extendedL2, entryBytes, l1Offset, l1Size, rtOffset, rtClusters, refcountOrder, fileSize: b.length };
  L.extensions = [];
  for (let at = headerLength; at + 8 <= Math.min(cs, b.length);) {
    const type = u32(b, at);
    const len = u32(b, at + 4);
    if (type === 0) break;
    L.extensions.push({ at, type, len });
    at += 8 + Math.ceil(len / 8) * 8;
  }
  L.l1Entries = [];
  L.l2Tables = [];
  for (let i = 0; i < l1Size && l1Offset + i * 8 + 8 <= b.length; i++) {
    const at = l1Offset + i * 8;
    const off = Number(u64(b, at) & MASK_OFFSET);
    L.l1Entries.push(at);
    if (off && off + cs <= b.length && !L.l2Tables.includes(off)) L.l2Tables.push(off);
  }
  L.l2Entries = [];
  L.compressed = [];
  for (const t of L.l2Tables) {
    for (let j = 0; j < cs / entryBytes; j++) {
      const at = t + j * entryBytes;
      const e = u64(b, at);
      if (e === 0n && !extendedL2) continue;
      L.l2Entries.push(at);
      if (e & COMPRESSED) L.compressed.push(at);
    }
  }
  L.rcBlocks = [];
  for (let i = 0; i < (rtClusters * cs) / 8 && rtOffset + i * 8 + 8 <= b.length; i++) {
    const off = Number(u64(b, rtOffset + i * 8) & MASK_OFFSET);
    if (off) L.rcBlocks.push({ entryAt: rtOffset + i * 8, offset: off });
  }
  L.snapshots = [];
  const nbSnapshots = u32(b, 60);
  let sat = Number(u64(b, 64));
  for (let i = 0; i < nbSnapshots && sat + 40 <= b.length && i < 64; i++) {
    const idSize = u16(b, sat + 12);
    const nameSize = u16(b, sat + 14);
    const extra = u32(b, sat + 36);
    L.snapshots.push({ at: sat, l1Offset: Number(u64(b, sat)), l1Size: u32(b, sat + 8) });
    sat += Math.ceil((40 + extra + idSize + nameSize) / 8) * 8;
  }
  L.snapshotTable = Number(u64(b, 64));
  // The snapshots' L1 entries, and the L2 tables only snapshots use with their entries (the l1 and l2 mutators reach the active layer alone).
  L.snapshotL1Entries = [];
  L.snapshotL2Tables = [];
  L.snapshotL2Entries = [];
  for (const sn of L.snapshots) {
    for (let i = 0; i < Math.min(sn.l1Size, 4096) && sn.l1Offset + i * 8 + 8 <= b.length; i++) {
      const at = sn.l1Offset + i * 8;
      const e = u64(b, at);
      if (e === 0n) continue;
      L.snapshotL1Entries.push(at);
      const off = Number(e & MASK_OFFSET);
      if (off && off % cs === 0 && off + cs <= b.length && !L.l2Tables.includes(off) && !L.snapshotL2Tables.includes(off)) L.snapshotL2Tables.push(off);
    }
  }
  for (const t of L.snapshotL2Tables.slice(0, 16)) {
    for (let j = 0; j < cs / entryBytes; j++) if (u64(b, t + j * entryBytes) !== 0n) L.snapshotL2Entries.push(t + j * entryBytes);
  }
  // Guest data clusters of the active layer (standard entries inside the file): what a guest controls the content of.
  L.dataClusters = [];
  for (const at of L.l2Entries) {
    const e = u64(b, at);
    if (e & COMPRESSED) continue;
    const off = Number(e & MASK_OFFSET);
    if (off && off % cs === 0 && off + cs <= b.length && !L.dataClusters.includes(off)) L.dataClusters.push(off);
    if (L.dataClusters.length >= 64) break;
  }
  // Compressed payloads: host offset and stored length of each compressed descriptor (spec: "Compressed Clusters Descriptor").
  L.zstd = version >= 3 && headerLength > 104 && (incompat & (1n << 3n)) !== 0n && b[104] === 1;
  const x = 62n - BigInt(clusterBits - 8);
  L.payloads = L.compressed.map((at) => {
    const e = u64(b, at);
    const host = Number(e & ((1n << x) - 1n));
    const sectors = Number((e >> x) & ((1n << BigInt(clusterBits - 8)) - 1n));
    return { at, host, length: Math.max(0, Math.min((sectors + 1) * 512 - (host % 512), b.length - host)) };
  });
  L.bitmaps = [];
  const bm = L.extensions.find((e) => e.type === EXT_BITMAPS);
  if (bm) {
    L.bitmapExt = bm.at + 8;
    const n = u32(b, bm.at + 8);
    let dat = Number(u64(b, bm.at + 8 + 16));
    L.bitmapDirectory = dat;
    for (let i = 0; i < n && dat + 24 <= b.length && i < 64; i++) {
      const nameSize = u16(b, dat + 18);
      const extra = u32(b, dat + 20);
      L.bitmaps.push({ at: dat, table: Number(u64(b, dat)), tableSize: u32(b, dat + 8) });
      dat += Math.ceil((24 + extra + nameSize) / 8) * 8;
    }
  }
  return L;
}

// Header fields (offset, width, name): the spec's "Header" section.
const HEADER_FIELDS = [
  [0, 4, 'magic'],
  [4, 4, 'version'],
  [8, 8, 'backing_file_offset'],
  [16, 4, 'backing_file_size'],
  [20, 4, 'cluster_bits'],
  [24, 8, 'size'],
  [32, 4, 'crypt_method'],
  [36, 4, 'l1_size'],
  [40, 8, 'l1_table_offset'],
  [48, 8, 'refcount_table_offset'],
  [56, 4, 'refcount_table_clusters'],
  [60, 4, 'nb_snapshots'],
  [64, 8, 'snapshots_offset'],
  [72, 8, 'incompatible_features'],
  [80, 8, 'compatible_features'],
  [88, 8, 'autoclear_features'],
  [96, 4, 'refcount_order'],
  [100, 4, 'header_length'],
  [104, 1, 'compression_type'],
];

const pick = (random, list) => list[Math.floor(random() * list.length)];

/** A zstd frame (spec: RFC 8878) that claims `contentSize` bytes in one segment and holds RLE blocks of `blockBytes` each. */
function zstdFrame(contentSize, blocks, blockBytes) {
  const out = [0x28, 0xb5, 0x2f, 0xfd, 0xe0]; // magic (little-endian), descriptor: 8-byte content size, single segment
  for (let i = 0, v = BigInt(contentSize); i < 8; i++, v >>= 8n) out.push(Number(v & 0xffn));
  for (let k = 0; k < blocks; k++) {
    const h = (blockBytes << 3) | (1 << 1) | (k === blocks - 1 ? 1 : 0); // RLE block, last flag on the last one
    out.push(h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0x5a);
  }
  return Uint8Array.from(out);
}

/** Offsets a hostile pointer may hold: past the end, the header, other structures, huge, misaligned. */
function hostileOffsets(L) {
  const cs = L.cs;
  const others = [0, L.l1Offset, L.rtOffset, L.snapshotTable, L.bitmapDirectory ?? 0, ...L.l2Tables.slice(0, 4), ...L.rcBlocks.slice(0, 2).map((r) => r.offset), ...L.snapshots.map((s) => s.l1Offset), ...L.bitmaps.map((m) => m.table)];
  const end = Math.ceil(L.fileSize / cs) * cs;
  return [...others, end, end + cs, end + 1024 * cs, 2 ** 40, 2 ** 53 - cs, 2 ** 55, 2 ** 56 - cs, L.l1Offset + 512, L.rtOffset + 8, cs + 1, 512, 2 ** 63, -1];
}

function counts(v) {
  return [0, 1, 2, v - 1, v + 1, v * 2, v * 1024, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x10000, 0x1000000];
}

/** Each mutator damages `b` in place (or returns a new array) and says what it did. */
const MUTATORS = {
  header(b, L, r) {
    const [at, width, name] = pick(
      r,
      HEADER_FIELDS.filter(([at]) => at < (L.version >= 3 ? 112 : 72)),
    );
    const old = Number(width === 8 ? u64(b, at) : u32(b, at));
    let v;
    switch (name) {
      case 'version':
        v = pick(r, [0, 1, 2, 3, 4, 0xffff_ffff]);
        break;
      case 'cluster_bits':
        v = pick(r, [0, 8, 9, 12, 16, 20, 21, 22, 30, 31, 32, 63, 255, 0xffff_ffff]);
        break;
      case 'refcount_order':
        v = pick(r, [0, 1, 3, 5, 6, 7, 8, 31, 0xffff_ffff]);
        break;
      case 'header_length':
        v = pick(r, [0, 8, 72, 100, 101, 104, 112, 120, 4096, L.cs - 8, L.cs, L.cs + 8, 0xffff_fff8]);
        break;
      case 'compression_type':
        v = pick(r, [0, 1, 2, 255]);
        break;
      case 'crypt_method':
        v = pick(r, [1, 2, 3, 0xffff_ffff]);
        break;
      case 'incompatible_features':
      case 'compatible_features':
      case 'autoclear_features':
        v = BigInt(old) ^ (1n << BigInt(pick(r, [0, 1, 2, 3, 4, 5, 31, 63])));
        break;
      case 'size':
        v = pick(r, [0, 1, 511, 512, old - 1, old + 1, old * 2, 2 ** 40, 2 ** 53, 2 ** 53 + 2, 2n ** 63n, 2n ** 64n - 1n]);
        break;
      default:
        v = width === 8 ? pick(r, hostileOffsets(L)) : pick(r, counts(old));
    }
    if (typeof v === 'number' && v < 0) v = 2n ** BigInt(width * 8) - 1n;
    put(b, at, width, v);
    return `header ${name} @${at}: ${old} -> ${v}`;
  },
  extension(b, L, r) {
    if (!L.extensions.length) return MUTATORS.header(b, L, r);
    const e = pick(r, L.extensions);
    const what = r();
    if (what < 0.4) {
      const v = pick(r, [0, 1, e.len - 1, e.len + 1, e.len + 8, L.cs, L.cs - e.at, 0xffff_ffff]);
      put(b, e.at + 4, 4, v);
      return `extension 0x${e.type.toString(16)} @${e.at} length ${e.len} -> ${v}`;
    }
    if (what < 0.6) {
      const v = pick(r, [0, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0xdeadbeef]);
      put(b, e.at, 4, v);
      return `extension @${e.at} type 0x${e.type.toString(16)} -> 0x${v.toString(16)}`;
    }
    if (e.type === EXT_BITMAPS && what < 0.85) {
      const field = pick(r, [
        [0, 4, 'nb_bitmaps'],
        [8, 8, 'bitmap_directory_size'],
        [16, 8, 'bitmap_directory_offset'],
      ]);
      const v = field[1] === 8 ? pick(r, [...hostileOffsets(L), 0, 1, 7, 1 << 30]) : pick(r, counts(u32(b, e.at + 8)));
      put(b, e.at + 8 + field[0], field[1], v < 0 ? 2n ** 64n - 1n : v);
      return `bitmaps extension ${field[2]} -> ${v}`;
    }
    // Replace the data (a backing format, a data file name) with hostile text.
    const text = pick(r, ['/etc/passwd', '../../../../etc/shadow', 'qcow2', 'vmdk', 'raw\0x', 'nbd://127.0.0.1:1/x', '', 'x'.repeat(Math.max(0, e.len))]);
    const bytes = new TextEncoder().encode(text).subarray(0, e.len);
    b.fill(0, e.at + 8, e.at + 8 + e.len);
    b.set(bytes, e.at + 8);
    return `extension 0x${e.type.toString(16)} @${e.at} data -> ${JSON.stringify(text.slice(0, 40))}`;
  },
  backingName(b, L, r) {
    const names = ['/etc/passwd', '../../etc/passwd', 'img.qcow2', 'chain-top.qcow2', 'missing.qcow2', 'raw-base.img', '/dev/zero', '/proc/self/mem', 'x'.repeat(1023), 'chain-base.qcow2'];
    const text = new TextEncoder().encode(pick(r, names));
    const at = Math.min(L.cs, b.length) - text.length - 8;
    if (at < 112) return MUTATORS.header(b, L, r);
    b.set(text, at);
    put(b, 8, 8, at);
    put(b, 16, 4, r() < 0.8 ? text.length : pick(r, [0, 1023, 1024, 0xffff_ffff]));
    return `backing file name @${at} -> ${new TextDecoder().decode(text).slice(0, 40)}`;
  },
  l1(b, L, r) {
    if (!L.l1Entries.length) return MUTATORS.header(b, L, r);
    const at = pick(r, L.l1Entries);
    const old = u64(b, at);
    const what = r();
    let v;
    if (what < 0.55) v = (old & COPIED) | (BigInt.asUintN(64, BigInt(pick(r, hostileOffsets(L)))) & (r() < 0.8 ? MASK_OFFSET : ~0n));
    else if (what < 0.7) v = old ^ COPIED;
    else if (what < 0.8) v = old | (1n << BigInt(pick(r, [0, 1, 8, 56, 60, 62])));
    else v = u64(b, pick(r, L.l1Entries)); // two L1 entries share an L2 table
    put(b, at, 8, v);
    return `L1 entry @${at}: 0x${old.toString(16)} -> 0x${v.toString(16)}`;
  },
  l2(b, L, r) {
    if (!L.l2Entries.length) return MUTATORS.l1(b, L, r);
    const at = pick(r, L.l2Entries);
    const old = u64(b, at);
    const what = r();
    let v;
    if (what < 0.4) v = (old & (COPIED | COMPRESSED)) | (BigInt.asUintN(64, BigInt(pick(r, hostileOffsets(L)))) & (r() < 0.8 ? MASK_OFFSET : ~0n));
    else if (what < 0.5) v = old ^ COPIED;
    else if (what < 0.6) v = old ^ COMPRESSED;
    else if (what < 0.7)
      v = old | 1n; // zero flag (reserved in v2)
    else if (what < 0.8) v = old | (1n << BigInt(pick(r, [1, 5, 8, 56, 61])));
    else if (what < 0.9)
      v = u64(b, pick(r, L.l2Entries)); // two guest clusters share a host cluster
    else if (L.extendedL2) {
      const bits = BigInt.asUintN(64, BigInt(Math.floor(r() * 2 ** 32)) * 0x1_0000_0001n);
      put(b, at + 8, 8, bits);
      return `extended L2 bitmap @${at + 8} -> 0x${bits.toString(16)}`;
    } else v = 0n;
    put(b, at, 8, v);
    return `L2 entry @${at}: 0x${old.toString(16)} -> 0x${v.toString(16)}`;
  },
  compressed(b, L, r) {
    if (!L.compressed.length) return MUTATORS.l2(b, L, r);
    const at = pick(r, L.compressed);
    const old = u64(b, at);
    const x = 62n - BigInt(L.clusterBits - 8);
    const offMask = (1n << x) - 1n;
    const sectors = (old >> x) & ((1n << BigInt(L.clusterBits - 8)) - 1n);
    let v;
    const what = r();
    if (what < 0.4) v = (old & ~(((1n << BigInt(L.clusterBits - 8)) - 1n) << x)) | (BigInt(pick(r, [0, 1, Number(sectors) + 1, 2 ** (L.clusterBits - 8) - 1])) << x);
    else if (what < 0.8) v = (old & ~offMask) | (BigInt.asUintN(64, BigInt(pick(r, hostileOffsets(L)))) & offMask);
    else v = (old & ~offMask) | ((old & offMask) + BigInt(pick(r, [1, 511, 512, L.cs - 1])));
    put(b, at, 8, v);
    return `compressed descriptor @${at}: 0x${old.toString(16)} -> 0x${v.toString(16)}`;
  },
  refcount(b, L, r) {
    if (!L.rcBlocks.length) return MUTATORS.header(b, L, r);
    const blk = pick(r, L.rcBlocks);
    if (r() < 0.45) {
      const old = u64(b, blk.entryAt);
      const v = r() < 0.2 ? 0 : pick(r, hostileOffsets(L));
      put(b, blk.entryAt, 8, v < 0 ? 2n ** 64n - 1n : v);
      return `refcount table entry @${blk.entryAt}: 0x${old.toString(16)} -> ${v}`;
    }
    // A refcount of one used cluster: 0, 1, max, or a random byte.
    const bits = 2 ** L.refcountOrder;
    const used = Math.max(1, Math.ceil(L.fileSize / L.cs));
    const index = Math.floor(r() * used);
    const bitAt = index * bits;
    const at = blk.offset + Math.floor(bitAt / 8);
    const v = pick(r, [0, 1, 2, 0xff]);
    if (bits >= 8) {
      b.fill(0, at, at + bits / 8);
      if (v) b[at + bits / 8 - 1] = v;
      if (v === 0xff) b.fill(0xff, at, at + bits / 8);
    } else if (at < b.length) b[at] = v;
    return `refcount of cluster ${index} in block @${blk.offset} -> ${v}`;
  },
  snapshot(b, L, r) {
    if (!L.snapshots.length) {
      put(b, 60, 4, pick(r, [1, 2, 65536, 0xffff_ffff]));
      put(b, 64, 8, pick(r, hostileOffsets(L)));
      return 'snapshot table invented in the header';
    }
    const s = pick(r, L.snapshots);
    const field = pick(r, [
      [0, 8, 'l1_table_offset'],
      [8, 4, 'l1_size'],
      [12, 2, 'id_str_size'],
      [14, 2, 'name_size'],
      [32, 4, 'vm_state_size'],
      [36, 4, 'extra_data_size'],
      [40, 8, 'vm_state_size_large'],
      [48, 8, 'disk_size'],
    ]);
    let v;
    if (field[2] === 'l1_table_offset') v = pick(r, hostileOffsets(L));
    else if (field[1] === 2) v = pick(r, [0, 1, 255, 1024, 0xffff]);
    else if (field[2] === 'extra_data_size') v = pick(r, [0, 4, 8, 15, 16, 24, 1024, 1025, 0xffff_ffff]);
    else if (field[1] === 8) v = pick(r, [0, 1, 2 ** 40, 2 ** 53, 2n ** 64n - 1n]);
    else v = pick(r, counts(s.l1Size));
    if (typeof v === 'number' && v < 0) v = 2n ** 64n - 1n;
    put(b, s.at + field[0], field[1], v);
    return `snapshot @${s.at} ${field[2]} -> ${v}`;
  },
  bitmap(b, L, r) {
    if (!L.bitmaps.length) return MUTATORS.extension(b, L, r);
    const m = pick(r, L.bitmaps);
    if (r() < 0.25 && m.table + 8 <= b.length) {
      const v = r() < 0.3 ? 1 : pick(r, hostileOffsets(L));
      put(b, m.table, 8, v < 0 ? 2n ** 64n - 1n : v);
      return `bitmap table entry @${m.table} -> ${v}`;
    }
    const field = pick(r, [
      [0, 8, 'bitmap_table_offset'],
      [8, 4, 'bitmap_table_size'],
      [12, 4, 'flags'],
      [16, 1, 'type'],
      [17, 1, 'granularity_bits'],
      [18, 2, 'name_size'],
      [20, 4, 'extra_data_size'],
    ]);
    let v;
    if (field[0] === 0) v = pick(r, hostileOffsets(L));
    else if (field[2] === 'flags') v = pick(r, [0, 1, 2, 3, 4, 0x8000_0000]);
    else if (field[2] === 'type') v = pick(r, [0, 2, 255]);
    else if (field[2] === 'granularity_bits') v = pick(r, [0, 8, 9, 31, 32, 63, 64, 255]);
    else if (field[2] === 'name_size') v = pick(r, [0, 1, 1023, 1024, 0xffff]);
    else v = pick(r, counts(m.tableSize));
    if (typeof v === 'number' && v < 0) v = 2n ** 64n - 1n;
    put(b, m.at + field[0], field[1], v);
    return `bitmap directory entry @${m.at} ${field[2]} -> ${v}`;
  },
  bytes(b, L, r) {
    // Random byte edits inside metadata clusters.
    const regions = [0, L.l1Offset, L.rtOffset, ...L.l2Tables, ...L.rcBlocks.map((x) => x.offset), L.snapshotTable, L.bitmapDirectory ?? 0].filter((x) => x >= 0 && x < b.length);
    const n = 1 + Math.floor(r() * 8);
    const out = [];
    for (let i = 0; i < n; i++) {
      const base = pick(r, regions);
      const at = base + Math.floor(r() * Math.min(L.cs, 4096, b.length - base));
      const kind = r();
      if (kind < 0.4) b[at] ^= 1 << Math.floor(r() * 8);
      else if (kind < 0.7) b[at] = pick(r, [0, 0xff, 0x80, 0x7f, 1]);
      else put(b, at & ~7, 8, BigInt(Math.floor(r() * 2 ** 32)) * 0x1_0000_0000n + BigInt(Math.floor(r() * 2 ** 32)));
      out.push(at);
    }
    return `random bytes at ${out.join(',')}`;
  },
  // The snapshots' own L1 entries and the L2 tables only they use: snapshot apply, delete, check and repair follow them.
  snapshotTables(b, L, r) {
    if (!L.snapshotL1Entries.length) return MUTATORS.snapshot(b, L, r);
    const what = r();
    if (what < 0.4 || !L.snapshotL2Entries.length) {
      const at = pick(r, L.snapshotL1Entries);
      const old = u64(b, at);
      const k = r();
      let v;
      if (k < 0.45) v = (old & COPIED) | (BigInt.asUintN(64, BigInt(pick(r, hostileOffsets(L)))) & MASK_OFFSET);
      else if (k < 0.6) v = old ^ COPIED;
      else if (k < 0.7)
        v = COPIED; // flags without an offset
      else if (k < 0.85 && L.l1Entries.length)
        v = u64(b, pick(r, L.l1Entries)); // shares an active L2 table
      else v = old | (1n << BigInt(pick(r, [1, 9, 56, 62])));
      put(b, at, 8, v);
      return `snapshot L1 entry @${at}: 0x${old.toString(16)} -> 0x${v.toString(16)}`;
    }
    const at = pick(r, L.snapshotL2Entries);
    const old = u64(b, at);
    const k = r();
    let v;
    if (k < 0.35) v = (old & (COPIED | COMPRESSED)) | (BigInt.asUintN(64, BigInt(pick(r, hostileOffsets(L)))) & MASK_OFFSET);
    else if (k < 0.55 && L.dataClusters.length)
      v = (old & COPIED) | BigInt(pick(r, L.dataClusters)); // a cluster the active layer writes in place
    else if (k < 0.7) v = old ^ COPIED;
    else if (k < 0.8) v = old ^ COMPRESSED;
    else if (k < 0.9) v = old | 1n;
    else v = 0n;
    put(b, at, 8, v);
    return `snapshot-only L2 entry @${at}: 0x${old.toString(16)} -> 0x${v.toString(16)}`;
  },
  // The bytes of compressed clusters: damaged streams, streams that inflate past a cluster, zstd frames that claim huge sizes.
  compressedPayload(b, L, r) {
    const payloads = L.payloads.filter((p) => p.length > 0);
    if (!payloads.length) return MUTATORS.compressed(b, L, r);
    const p = pick(r, payloads);
    const k = r();
    if (k < 0.35) {
      const n = 1 + Math.floor(r() * 8);
      for (let i = 0; i < n; i++) {
        const at = p.host + Math.floor(r() * Math.min(p.length, 64 + r() * p.length));
        if (at < b.length) b[at] ^= 1 << Math.floor(r() * 8);
      }
      return `compressed payload @${p.host} (${p.length} bytes): ${n} bit flips`;
    }
    if (k < 0.55) {
      const cut = Math.floor(r() * p.length);
      b.fill(r() < 0.5 ? 0 : 0xff, p.host + cut, p.host + p.length);
      return `compressed payload @${p.host} (${p.length} bytes) overwritten from byte ${cut}`;
    }
    let bomb;
    let note;
    if (L.zstd) {
      const claim = pick(r, [L.cs + 1, 2 ** 31, 2 ** 40, 2 ** 53, 2n ** 64n - 1n]);
      const blocks = pick(r, [1, 2, 64]);
      bomb = zstdFrame(claim, blocks, pick(r, [L.cs, 128 * 1024 - 1, 1]));
      note = `zstd frame claiming ${claim} bytes in ${blocks} RLE blocks`;
    } else {
      const inflated = pick(r, [L.cs + 1, 1 << 20, 8 << 20]);
      bomb = deflateRawSync(new Uint8Array(inflated), { level: 9 });
      note = `deflate stream of ${inflated} zero bytes`;
    }
    if (p.host + bomb.length > b.length) return MUTATORS.compressed(b, L, r);
    b.set(bomb, p.host);
    // The descriptor's sector count grows to cover the new stream where its field allows.
    const x = 62n - BigInt(L.clusterBits - 8);
    const maxSectors = (1n << BigInt(L.clusterBits - 8)) - 1n;
    const sectors = BigInt(Math.ceil((bomb.length + (p.host % 512)) / 512) - 1);
    const e = u64(b, p.at);
    put(b, p.at, 8, (e & ~(maxSectors << x)) | ((sectors < maxSectors ? sectors : maxSectors) << x));
    return `compressed payload @${p.host}: ${note} (${bomb.length} bytes)`;
  },
  // Metadata pointed at a guest data cluster, whose content the guest writes: a pointer into data, and often crafted
  // "metadata" in it (entries aimed at the header, other tables, past the end, with flags).
  dataAlias(b, L, r) {
    if (!L.dataClusters.length) return MUTATORS.l1(b, L, r);
    const d = pick(r, L.dataClusters);
    const targets = [
      ['header l1_table_offset', 40, 8],
      ['header refcount_table_offset', 48, 8],
    ];
    for (const at of L.l1Entries.slice(0, 8)) targets.push([`L1 entry @${at}`, at, 8, COPIED]);
    for (const blk of L.rcBlocks.slice(0, 4)) targets.push([`refcount table entry @${blk.entryAt}`, blk.entryAt, 8]);
    for (const sn of L.snapshots.slice(0, 4)) targets.push([`snapshot @${sn.at} l1_table_offset`, sn.at, 8]);
    for (const at of L.snapshotL1Entries.slice(0, 4)) targets.push([`snapshot L1 entry @${at}`, at, 8]);
    for (const m of L.bitmaps.slice(0, 4)) if (m.table + 8 <= b.length) targets.push([`bitmap table entry @${m.table}`, m.table, 8]);
    if (L.bitmapDirectory) targets.push(['bitmaps extension directory offset', L.bitmapExt + 16, 8]);
    const [name, at, width, flags] = pick(r, targets);
    const old = u64(b, at);
    put(b, at, width, BigInt(d) | (flags && r() < 0.7 ? flags : 0n));
    let crafted = 'as it was';
    const k = r();
    if (k < 0.3) {
      const offsets = hostileOffsets(L);
      for (let j = 0; j < L.cs / 8; j++) put(b, d + j * 8, 8, (BigInt.asUintN(64, BigInt(pick(r, offsets))) & MASK_OFFSET) | (r() < 0.5 ? COPIED : 0n));
      crafted = 'entries aimed at hostile offsets';
    } else if (k < 0.5 && L.l2Tables.length) {
      b.copyWithin(d, L.l2Tables[0], L.l2Tables[0] + L.cs);
      crafted = 'a copy of an L2 table';
    } else if (k < 0.65) {
      b.fill(pick(r, [0, 0xff]), d, d + L.cs);
      crafted = 'all ones or zeros';
    }
    return `${name}: 0x${old.toString(16)} -> data cluster ${d} (content ${crafted})`;
  },
  truncate(b, L, r) {
    const cut = r() < 0.5 ? Math.floor(r() * b.length) : Math.max(0, b.length - L.cs * (1 + Math.floor(r() * 4)));
    return { bytes: b.subarray(0, cut), what: `truncated to ${cut} of ${b.length}` };
  },
};

const WEIGHTS = [
  ['header', 18],
  ['extension', 6],
  ['backingName', 3],
  ['l1', 12],
  ['l2', 16],
  ['compressed', 6],
  ['refcount', 12],
  ['snapshot', 7],
  ['bitmap', 6],
  ['bytes', 12],
  ['truncate', 2],
  ['snapshotTables', 6],
  ['compressedPayload', 5],
  ['dataAlias', 6],
];
const TOTAL = WEIGHTS.reduce((a, [, w]) => a + w, 0);

/** Damages a copy of `original`: one to three mutations. Returns the bytes and what was done. */
export function mutateQcow2(original, random, only) {
  let b = original.slice();
  const L = qcow2Layout(original);
  const n = 1 + (random() < 0.3 ? 1 : 0) + (random() < 0.1 ? 1 : 0);
  const what = [];
  for (let i = 0; i < n; i++) {
    let name = only;
    if (!name) {
      let x = random() * TOTAL;
      for (const [k, w] of WEIGHTS) {
        if ((x -= w) < 0) {
          name = k;
          break;
        }
      }
      name ??= 'bytes';
    }
    const r = MUTATORS[name](b, L, random);
    if (typeof r === 'string') what.push(r);
    else {
      b = r.bytes;
      what.push(r.what);
    }
  }
  return { bytes: b, what };
}

export const MUTATOR_NAMES = Object.keys(MUTATORS);
