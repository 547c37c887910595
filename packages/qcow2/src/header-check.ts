/**
 * The one validation of a header cluster (spec: "Header", "Header
 * extensions"), shared by openQcow2 (a file) and readQcow2Stream (a
 * stream): the fields that decide how everything else is read are checked
 * against the spec and qemu's bounds before anything is allocated. What
 * depends on the file (table offsets against its size, the backing file
 * name) or on how the image is opened stays with the caller.
 */
import { corrupt, readU32Be, unsupported } from '@img/block';
import {
  QCOW2_V2_HEADER_LENGTH,
  MIN_CLUSTER_BITS,
  MAX_CLUSTER_BITS,
  MAX_L1_TABLE_BYTES,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  KNOWN_INCOMPAT_MASK,
  INCOMPAT_DATA_FILE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTENDED_L2,
  CRYPT_NONE,
  CRYPT_AES,
  CRYPT_LUKS,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  EXT_FEATURE_TABLE,
  FEATURE_TYPE_INCOMPATIBLE,
} from './constants.js';
import { checkQcow2Identity, parseHeader, validateHeaderBasics, geometry, hasFeature, featureBits, type Qcow2Header, type Qcow2Geometry } from './header.js';
import { parseExtensions, checkDuplicateExtensions, findExtension, parseFeatureTable, featureName, type HeaderExtension, type FeatureName } from './extensions.js';
import type { EntryGeometry } from './mapping.js';

const FORMAT = 'qcow2';

/** A header cluster that passed {@link validateHeaderCluster}. */
export interface ValidatedHeader {
  header: Qcow2Header;
  extensions: HeaderExtension[];
  featureTable: FeatureName[];
  geom: Qcow2Geometry;
  entryGeom: EntryGeometry;
}

/**
 * The cluster size from the first bytes of an image (at least the 72
 * bytes of a version 2 header, when there are that many): a qcow2 magic
 * and version this code reads, and cluster_bits within 9..21.
 */
export function headerClusterSize(head: Uint8Array, file: string): number {
  // The version decides what the other fields mean (qcow v1 has no cluster_bits at 20).
  checkQcow2Identity(head, file);
  if (head.length < QCOW2_V2_HEADER_LENGTH) parseHeader(head, file);
  const clusterBits = readU32Be(head, 20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(FORMAT, file, `cluster_bits ${clusterBits} at 0x14 is outside 9..21 (512 B to 2 MiB clusters)`, { field: 'cluster_bits', offset: 20, actual: clusterBits });
  }
  return 2 ** clusterBits;
}

/**
 * Validates the header cluster at the start of `head` (the first bytes of
 * the file, the whole first cluster where the file has it) for the
 * one-shot functions that read an image without opening it (bitmaps,
 * compaction): the same checks as an open, so a damaged header fails there
 * as it fails at open, before any of its values sizes anything.
 */
export function readHeaderCluster(head: Uint8Array, file: string): ValidatedHeader {
  return validateHeaderCluster(head.subarray(0, headerClusterSize(head, file)), file);
}

/**
 * Parses and validates the header cluster: header fields, extensions (no
 * duplicates), incompatible features this code does not know (refused,
 * named from the feature name table), the encryption method (unknown ones
 * refused; encryption.ts reads the rest), compression
 * type and its bit, extended L2 entries (16 KiB clusters at least), and the
 * L1 table's size (qemu's 32 MiB bound, large enough for the disk).
 */
export function validateHeaderCluster(cluster0: Uint8Array, file: string): ValidatedHeader {
  const header = parseHeader(cluster0, file);
  validateHeaderBasics(header, file);
  const cs = 2 ** header.clusterBits;
  const extensions = parseExtensions(cluster0, header.headerLength, cs, file);
  checkDuplicateExtensions(extensions, header.headerLength, file);
  const featureTable = parseFeatureTable(findExtension(extensions, EXT_FEATURE_TABLE));

  const unknown = featureBits(header.incompatibleFeatures & ~KNOWN_INCOMPAT_MASK);
  if (unknown.length) {
    const names = unknown.map((b) => {
      const n = featureName(featureTable, FEATURE_TYPE_INCOMPATIBLE, b);
      return n ? `bit ${b} (${n})` : `bit ${b}`;
    });
    throw unsupported(FORMAT, file, `unsupported incompatible feature ${names.join(', ')}`, { field: 'incompatible_features', offset: 72, actual: unknown });
  }
  if (header.cryptMethod !== CRYPT_NONE && header.cryptMethod !== CRYPT_AES && header.cryptMethod !== CRYPT_LUKS) {
    throw unsupported(FORMAT, file, `unknown crypt_method ${header.cryptMethod} at 0x20`, { field: 'crypt_method', offset: 32, actual: header.cryptMethod });
  }
  const compressionBit = hasFeature(header.incompatibleFeatures, INCOMPAT_COMPRESSION);
  if (compressionBit && header.compressionType === COMPRESSION_ZLIB) {
    throw corrupt(FORMAT, file, 'compression type bit is set but compression_type is zlib (0) or absent', { field: 'compression_type', offset: 104 });
  }
  if (!compressionBit && header.compressionType !== COMPRESSION_ZLIB) {
    throw corrupt(FORMAT, file, `compression_type ${header.compressionType} at 0x68 without the compression type bit`, { field: 'compression_type', offset: 104, actual: header.compressionType });
  }
  if (header.compressionType !== COMPRESSION_ZLIB && header.compressionType !== COMPRESSION_ZSTD) {
    throw unsupported(FORMAT, file, `unknown compression_type ${header.compressionType} at 0x68`, { field: 'compression_type', offset: 104, actual: header.compressionType });
  }
  const extendedL2 = hasFeature(header.incompatibleFeatures, INCOMPAT_EXTENDED_L2);
  if (extendedL2 && header.clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw corrupt(FORMAT, file, `extended L2 entries need clusters of at least 16 KiB (cluster_bits ${header.clusterBits})`, { field: 'cluster_bits', offset: 20, actual: header.clusterBits });
  }
  const geom = geometry(header, extendedL2);
  if (header.l1Size * 8 > MAX_L1_TABLE_BYTES) {
    throw corrupt(FORMAT, file, `l1_size ${header.l1Size} at 0x24 exceeds qemu's 32 MiB L1 bound`, { field: 'l1_size', offset: 36, actual: header.l1Size });
  }
  const neededL1 = Math.ceil(header.size / geom.l2Coverage);
  if (neededL1 > header.l1Size) {
    throw corrupt(FORMAT, file, `l1_size ${header.l1Size} at 0x24 is too small for a ${header.size}-byte disk (needs ${neededL1})`, { field: 'l1_size', offset: 36, actual: header.l1Size });
  }
  const entryGeom: EntryGeometry = {
    clusterBits: header.clusterBits,
    clusterSize: cs,
    extendedL2,
    zeroFlag: header.version >= 3 && !extendedL2,
    dataFile: hasFeature(header.incompatibleFeatures, INCOMPAT_DATA_FILE),
  };
  return { header, extensions, featureTable, geom, entryGeom };
}
