/**
 * What `qemu-img info` shows about an open image: the common fields and
 * qemu's "format-specific" data, keyed as qemu prints them (kebab-case).
 */
import type { ImageInfo, SnapshotInfo } from '@img/block';
import { INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_EXTENDED_L2, COMPAT_LAZY_REFCOUNTS, AUTOCLEAR_DATA_FILE_RAW, EXT_BACKING_FORMAT, EXT_BITMAPS } from './constants.js';
import { hasFeature } from './header.js';
import { findExtension, extensionString, parseBitmapsExtension } from './extensions.js';
import { readBitmapDirectory } from './bitmaps.js';
import { compressionTypeName } from './compression.js';
import type { Qcow2Image } from './core.js';
import { describeEncryption } from './encryption.js';

const FORMAT = 'qcow2';

/** qemu-img info's fields for an image of virtual size `size` with these snapshots. */
export async function qcow2Info(s: Qcow2Image, size: number, snapshots: SnapshotInfo[]): Promise<ImageInfo> {
  const h = s.header;
  const v3 = h.version >= 3;
  const specific: Record<string, unknown> = {
    compat: v3 ? '1.1' : '0.10',
    'compression-type': compressionTypeName(s.compressionType),
  };
  if (v3) specific['lazy-refcounts'] = hasFeature(h.compatibleFeatures, COMPAT_LAZY_REFCOUNTS);
  const bitmapsExt = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  if (bitmapsExt) specific.bitmaps = await readBitmapDirectory(s.storage, bitmapsExt, s.fileSize, s.geom.clusterSize, s.file);
  specific['refcount-bits'] = s.geom.refcountBits;
  if (s.encryption) specific.encrypt = describeEncryption(s.encryption);
  if (s.dataFileName !== undefined) {
    specific['data-file'] = s.dataFileName;
    specific['data-file-raw'] = hasFeature(h.autoclearFeatures, AUTOCLEAR_DATA_FILE_RAW);
  }
  if (v3) {
    specific.corrupt = hasFeature(h.incompatibleFeatures, INCOMPAT_CORRUPT);
    specific['extended-l2'] = hasFeature(h.incompatibleFeatures, INCOMPAT_EXTENDED_L2);
  }
  if (s.backingInfo?.probed) specific['backing-format-probed'] = true;
  const info: ImageInfo = {
    format: FORMAT,
    virtualSize: size,
    clusterSize: s.geom.clusterSize,
    dirty: hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY),
    formatSpecific: specific,
  };
  if (s.encryption) info.encrypted = true;
  if (s.backingName !== undefined) {
    info.backingFile = s.backingName;
    if (s.backingInfo) info.fullBackingFile = s.backingInfo.fullName;
    const fmt = extensionString(findExtension(s.extensions, EXT_BACKING_FORMAT)) ?? s.backingInfo?.format;
    if (fmt !== undefined) info.backingFormat = fmt;
  }
  if (s.snapshots.length) info.snapshots = snapshots;
  return info;
}
