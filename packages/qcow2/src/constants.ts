/**
 * Constants of the qcow2 format (qemu docs/interop/qcow2.txt), named as
 * the spec names them, plus the implementation bounds qemu applies.
 */

/** "QFI\xfb": bytes 0-3 of every qcow2 image. */
export const QCOW2_MAGIC = 0x514649fb;
/** Header length of a version 2 image (the header ends at byte 72). */
export const QCOW2_V2_HEADER_LENGTH = 72;
/** Smallest header_length of a version 3 image (fields through header_length). */
export const QCOW2_V3_HEADER_LENGTH = 104;
/** header_length qemu writes for v3 (104 + compression_type + padding). */
export const QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION = 112;

/** cluster_bits bounds: 512 B to 2 MiB clusters (qemu's implementation limit). */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster_bits the spec allows (2 MiB clusters). */
export const MAX_CLUSTER_BITS = 21;
/** Extended L2 entries need clusters of at least 16 KiB. */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;
/** Subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS_PER_CLUSTER = 32;

/** qemu's bound on the L1 table: 32 MiB. */
export const MAX_L1_TABLE_BYTES = 32 * 1024 * 1024;
/** qemu's bound on the refcount table: 8 MiB. */
export const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;
/** qemu's bound on the number of internal snapshots. */
export const MAX_SNAPSHOTS = 65536;
/** qemu's bound on the extra data of one snapshot table entry. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** qemu's bound on a backing file name. */
export const MAX_BACKING_FILE_NAME = 1023;
/** Bitmaps: at most 65535, directory at most 64 MiB (qemu's bounds). */
export const MAX_BITMAPS = 65535;
/** Largest bitmap directory accepted (bytes). */
export const MAX_BITMAP_DIRECTORY_SIZE = 64 * 1024 * 1024;
/** refcount_order bound: refcount_bits = 1 << refcount_order <= 64. */
export const MAX_REFCOUNT_ORDER = 6;

/** Incompatible feature bits (header bytes 72-79). */
export const INCOMPAT_DIRTY = 0;
/** Incompatible feature bit 1: the image is corrupt (open read-only only). */
export const INCOMPAT_CORRUPT = 1;
/** Incompatible feature bit 2: guest data lives in an external data file. */
export const INCOMPAT_DATA_FILE = 2;
/** Incompatible feature bit 3: the compression_type header field is valid. */
export const INCOMPAT_COMPRESSION = 3;
/** Incompatible feature bit 4: extended L2 entries (subclusters). */
export const INCOMPAT_EXTENDED_L2 = 4;
/** Compatible feature bits (header bytes 80-87). */
export const COMPAT_LAZY_REFCOUNTS = 0;
/** Autoclear feature bits (header bytes 88-95). */
export const AUTOCLEAR_BITMAPS = 0;
/** Autoclear feature bit 1: the external data file is a raw image of the guest. */
export const AUTOCLEAR_DATA_FILE_RAW = 1;

/** Incompatible bits this implementation understands. */
export const KNOWN_INCOMPAT_MASK = (1n << BigInt(INCOMPAT_DIRTY)) | (1n << BigInt(INCOMPAT_CORRUPT)) | (1n << BigInt(INCOMPAT_DATA_FILE)) | (1n << BigInt(INCOMPAT_COMPRESSION)) | (1n << BigInt(INCOMPAT_EXTENDED_L2));
/** Autoclear bits this implementation keeps consistent when writing. */
export const KNOWN_AUTOCLEAR_MASK = (1n << BigInt(AUTOCLEAR_BITMAPS)) | (1n << BigInt(AUTOCLEAR_DATA_FILE_RAW));

/** Header extension types. */
export const EXT_END = 0x00000000;
/** Header extension type: backing file format name. */
export const EXT_BACKING_FORMAT = 0xe2792aca;
/** Header extension type: feature name table. */
export const EXT_FEATURE_TABLE = 0x6803f857;
/** Header extension type: bitmaps extension. */
export const EXT_BITMAPS = 0x23852875;
/** Header extension type: full disk encryption header pointer. */
export const EXT_CRYPTO = 0x0537be77;
/** Header extension type: external data file name. */
export const EXT_DATA_FILE = 0x44415441;

/** crypt_method values. */
export const CRYPT_NONE = 0;
/** crypt_method 1: AES (refused). */
export const CRYPT_AES = 1;
/** crypt_method 2: LUKS (refused). */
export const CRYPT_LUKS = 2;

/** compression_type values. */
export const COMPRESSION_ZLIB = 0;
/** compression_type 1: zstd (0 is deflate). */
export const COMPRESSION_ZSTD = 1;

/** Feature name table: one entry is 48 bytes. */
export const FEATURE_TABLE_ENTRY_SIZE = 48;
/** Feature name table entry type: incompatible feature. */
export const FEATURE_TYPE_INCOMPATIBLE = 0;
/** Feature name table entry type: compatible feature. */
export const FEATURE_TYPE_COMPATIBLE = 1;
/** Feature name table entry type: autoclear feature. */
export const FEATURE_TYPE_AUTOCLEAR = 2;

/** Names of the features this implementation knows, for messages and the feature table we write. */
export const KNOWN_FEATURE_NAMES: ReadonlyArray<{ type: number; bit: number; name: string }> = [
  { type: FEATURE_TYPE_INCOMPATIBLE, bit: INCOMPAT_DIRTY, name: 'dirty bit' },
  { type: FEATURE_TYPE_INCOMPATIBLE, bit: INCOMPAT_CORRUPT, name: 'corrupt bit' },
  { type: FEATURE_TYPE_INCOMPATIBLE, bit: INCOMPAT_DATA_FILE, name: 'external data file' },
  { type: FEATURE_TYPE_INCOMPATIBLE, bit: INCOMPAT_COMPRESSION, name: 'compression type' },
  { type: FEATURE_TYPE_INCOMPATIBLE, bit: INCOMPAT_EXTENDED_L2, name: 'extended L2 entries' },
  { type: FEATURE_TYPE_COMPATIBLE, bit: COMPAT_LAZY_REFCOUNTS, name: 'lazy refcounts' },
  { type: FEATURE_TYPE_AUTOCLEAR, bit: AUTOCLEAR_BITMAPS, name: 'bitmaps' },
  { type: FEATURE_TYPE_AUTOCLEAR, bit: AUTOCLEAR_DATA_FILE_RAW, name: 'raw external data' },
];

/** L2/L1 entry bits (in the high 32-bit half of the 64-bit entry). */
export const ENTRY_COPIED_HI = 0x80000000;
/** Bit 62 of an L2 entry, in its high 32 bits: the cluster is compressed. */
export const ENTRY_COMPRESSED_HI = 0x40000000;
/** Reserved bits of a standard L2 entry in its high 32 bits (bits 56-61). */
export const L2_RESERVED_HI = 0x3f000000;
/** Reserved bits of a standard L2 entry in its low 32 bits (bits 1-8). */
export const L2_RESERVED_LO = 0x000001fe;
/** Bits 9-55 of an offset: mask of the high half (bits 32-55). */
export const OFFSET_MASK_HI = 0x00ffffff;
/** Bits 9-31 of an offset: mask of the low half. */
export const OFFSET_MASK_LO = 0xfffffe00;

/** Compressed data is counted in 512-byte sectors. */
export const COMPRESSED_SECTOR = 512;
