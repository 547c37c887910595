/**
 * The qcow2 header (spec: "Header"): fixed fields of bytes 0-103, the
 * optional additional fields (compression_type at 104) and whatever a
 * newer writer put up to header_length, which is kept byte for byte.
 */
import { readU32Be, readU64Be, writeU32Be, writeU64Be, corrupt, unsupported, wrongFormat, findSignatures, writeU64BeParts } from '@img/block';
import type { Storage } from '@img/block';
import { QCOW2_MAGIC, QCOW2_V2_HEADER_LENGTH, QCOW2_V3_HEADER_LENGTH, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, MAX_REFCOUNT_ORDER } from './constants.js';

/** The decoded header. 64-bit feature masks are bigints (never on a hot path). */
export interface Qcow2Header {
  /** 2 or 3. */
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** refcount_bits = 1 << refcountOrder (4 for v2). */
  refcountOrder: number;
  /** 72 for v2. */
  headerLength: number;
  /** compression_type (byte 104); 0 when the field is absent. */
  compressionType: number;
  /** Bytes 105..headerLength (padding and fields newer than this code), kept as found. */
  extraFields: Uint8Array;
}

const FORMAT = 'qcow2';

function u64(buf: Uint8Array, at: number, field: string, file?: string): number {
  return readU64Be(buf, at, { field, format: FORMAT, file });
}

function bits64(buf: Uint8Array, at: number): bigint {
  return (BigInt(readU32Be(buf, at)) << 32n) | BigInt(readU32Be(buf, at + 4));
}

/** True if `head` starts with the qcow2 magic. */
export function hasQcow2Magic(head: Uint8Array): boolean {
  return head.length >= 4 && readU32Be(head, 0) === QCOW2_MAGIC;
}

/** qcow2's probe score: 100 for the magic with version 2 or later (version 1 is qcow, another format), else 0. */
export function probeQcow2(head: Uint8Array): number {
  return hasQcow2Magic(head) && head.length >= 8 && readU32Be(head, 4) >= 2 ? 100 : 0;
}

/**
 * Is this a qcow2 image at all? The magic and the version say, before any
 * other field means anything: bytes without the magic are not a qcow2
 * image (ERR_IMG_WRONG_FORMAT, naming the format they carry when they
 * carry one), version 1 is the older qcow format (same magic, another
 * layout), version 4 and up are qcow2 images this code does not know
 * (ERR_IMG_UNSUPPORTED). `tail`, the file's last bytes, lets the error
 * name formats whose signature sits at the end (VHD, DMG).
 */
export function checkQcow2Identity(head: Uint8Array, file?: string, size = head.length, tail?: Uint8Array): void {
  if (!hasQcow2Magic(head)) {
    const found = findSignatures(head, size, tail)[0];
    throw wrongFormat(FORMAT, file, found?.description, { field: 'magic', offset: 0, ...(found ? { evidence: found.evidence } : {}) });
  }
  if (head.length < 8) throw corrupt(FORMAT, file, `file is too short for a qcow2 header (${head.length} bytes)`, { field: 'header', offset: 0 });
  const version = readU32Be(head, 4); // 4: version
  if (version === 1) throw wrongFormat(FORMAT, file, 'a qcow (v1) image', { field: 'version', offset: 4, expected: [2, 3], actual: version });
  if (version > 3) {
    throw unsupported(FORMAT, file, `version ${version} at 0x4 is newer than this code knows (2 and 3)`, { field: 'version', offset: 4, expected: [2, 3], actual: version });
  }
  if (version !== 2 && version !== 3) throw corrupt(FORMAT, file, `version ${version} at 0x4 does not exist (2 and 3 do)`, { field: 'version', offset: 4, expected: [2, 3], actual: version });
}

/**
 * Decodes the header at the start of `buf` (which must hold at least
 * header_length bytes; 4 KiB always suffices for qemu's images). Checks only
 * what is needed to decode it; {@link validateHeader} checks the rest.
 */
export function parseHeader(buf: Uint8Array, file?: string): Qcow2Header {
  checkQcow2Identity(buf, file); // 0: magic, 4: version
  if (buf.length < QCOW2_V2_HEADER_LENGTH) throw corrupt(FORMAT, file, `file is too short for a qcow2 header (${buf.length} bytes)`, { field: 'header', offset: 0 });
  const version = readU32Be(buf, 4); // 4: version
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(buf, 8, 'backing_file_offset', file), // 8
    backingFileSize: readU32Be(buf, 16), // 16
    clusterBits: readU32Be(buf, 20), // 20
    size: u64(buf, 24, 'size', file), // 24
    cryptMethod: readU32Be(buf, 32), // 32
    l1Size: readU32Be(buf, 36), // 36
    l1TableOffset: u64(buf, 40, 'l1_table_offset', file), // 40
    refcountTableOffset: u64(buf, 48, 'refcount_table_offset', file), // 48
    refcountTableClusters: readU32Be(buf, 56), // 56
    nbSnapshots: readU32Be(buf, 60), // 60
    snapshotsOffset: u64(buf, 64, 'snapshots_offset', file), // 64
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: QCOW2_V2_HEADER_LENGTH,
    compressionType: 0,
    extraFields: new Uint8Array(0),
  };
  if (version === 3) {
    if (buf.length < QCOW2_V3_HEADER_LENGTH) throw corrupt(FORMAT, file, `file is too short for a version 3 header (${buf.length} bytes)`, { field: 'header', offset: 0 });
    h.incompatibleFeatures = bits64(buf, 72); // 72: incompatible_features
    h.compatibleFeatures = bits64(buf, 80); // 80: compatible_features
    h.autoclearFeatures = bits64(buf, 88); // 88: autoclear_features
    h.refcountOrder = readU32Be(buf, 96); // 96: refcount_order
    h.headerLength = readU32Be(buf, 100); // 100: header_length
    if (h.headerLength < QCOW2_V3_HEADER_LENGTH || h.headerLength % 8 !== 0) {
      throw corrupt(FORMAT, file, `header_length ${h.headerLength} at 0x64 is not a multiple of 8 of at least 104`, { field: 'header_length', offset: 100, actual: h.headerLength });
    }
    if (h.headerLength > buf.length) {
      throw corrupt(FORMAT, file, `header_length ${h.headerLength} at 0x64 runs past the first cluster or the file`, { field: 'header_length', offset: 100, actual: h.headerLength });
    }
    if (h.headerLength > QCOW2_V3_HEADER_LENGTH) {
      h.compressionType = buf[104]!; // 104: compression_type ("Additional fields")
      h.extraFields = buf.slice(105, h.headerLength);
    }
  }
  return h;
}

/** Writes the header fields (bytes 0..header_length); extensions and the backing file name are left as they are. */
export function writeHeaderFields(storage: Storage, h: Qcow2Header): Promise<void> {
  return storage.write(0, serializeHeader(h));
}

/** Encodes a header: exactly header_length bytes (72 for v2). */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const out = new Uint8Array(h.version === 2 ? QCOW2_V2_HEADER_LENGTH : h.headerLength);
  writeU32Be(out, 0, QCOW2_MAGIC);
  writeU32Be(out, 4, h.version);
  writeU64Be(out, 8, h.backingFileOffset);
  writeU32Be(out, 16, h.backingFileSize);
  writeU32Be(out, 20, h.clusterBits);
  writeU64Be(out, 24, h.size);
  writeU32Be(out, 32, h.cryptMethod);
  writeU32Be(out, 36, h.l1Size);
  writeU64Be(out, 40, h.l1TableOffset);
  writeU64Be(out, 48, h.refcountTableOffset);
  writeU32Be(out, 56, h.refcountTableClusters);
  writeU32Be(out, 60, h.nbSnapshots);
  writeU64Be(out, 64, h.snapshotsOffset);
  if (h.version !== 2) {
    const put64 = (at: number, v: bigint) => writeU64BeParts(out, at, Number((v >> 32n) & 0xffffffffn), Number(v & 0xffffffffn));
    put64(72, h.incompatibleFeatures);
    put64(80, h.compatibleFeatures);
    put64(88, h.autoclearFeatures);
    writeU32Be(out, 96, h.refcountOrder);
    writeU32Be(out, 100, h.headerLength);
    if (h.headerLength > QCOW2_V3_HEADER_LENGTH) {
      out[104] = h.compressionType;
      out.set(h.extraFields.subarray(0, h.headerLength - 105), 105);
    }
  }
  return out;
}

/** True if bit `bit` is set in a 64-bit feature mask. */
export function hasFeature(mask: bigint, bit: number): boolean {
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

/** The set bits of a feature mask, lowest first. */
export function featureBits(mask: bigint): number[] {
  const out: number[] = [];
  for (let bit = 0; bit < 64; bit++) if (hasFeature(mask, bit)) out.push(bit);
  return out;
}

/** Derived geometry of an image. */
export interface Qcow2Geometry {
  clusterSize: number;
  /** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
  l2EntrySize: number;
  /** L2 entries per table. */
  l2Entries: number;
  /** Guest bytes one L2 table maps. */
  l2Coverage: number;
  /** Subcluster size (the cluster size without extended L2 entries). */
  subclusterSize: number;
  refcountBits: number;
}

/** The sizes a header implies: cluster size, L2 entries per table and what one table covers, subclusters, refcount width. */
export function geometry(h: Qcow2Header, extendedL2: boolean): Qcow2Geometry {
  const clusterSize = 2 ** h.clusterBits;
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Entries = clusterSize / l2EntrySize;
  return {
    clusterSize,
    l2EntrySize,
    l2Entries,
    l2Coverage: l2Entries * clusterSize,
    subclusterSize: extendedL2 ? clusterSize / 32 : clusterSize,
    refcountBits: 2 ** h.refcountOrder,
  };
}

/** Checks the header fields that do not depend on extensions or tables (cluster_bits, refcount_order). */
export function validateHeaderBasics(h: Qcow2Header, file?: string): void {
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(FORMAT, file, `cluster_bits ${h.clusterBits} at 0x14 is outside 9..21 (512 B to 2 MiB clusters)`, { field: 'cluster_bits', offset: 20, actual: h.clusterBits });
  }
  if (h.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw corrupt(FORMAT, file, `refcount_order ${h.refcountOrder} at 0x60 exceeds ${MAX_REFCOUNT_ORDER}`, { field: 'refcount_order', offset: 96, actual: h.refcountOrder });
  }
  if (h.headerLength > 2 ** h.clusterBits) {
    throw corrupt(FORMAT, file, `header_length ${h.headerLength} at 0x64 is larger than a cluster`, { field: 'header_length', offset: 100 });
  }
}
