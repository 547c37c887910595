/** What `img info` shows for a VMDK, with qemu-img's format-specific fields (cid, parent-cid, create-type, extents). */
import type { ImageInfo } from '@img/block';
import { CID_NO_PARENT, descriptorField, parseCid } from './descriptor.js';
import { extentFileName, FORMAT, type VmdkImage } from './image.js';

/** The image's CID (0 when the descriptor has none or a malformed one). */
export function imageCid(core: VmdkImage): number {
  return parseCid(descriptorField(core.descriptor, 'CID')) ?? 0;
}

/** The image's parentCID (CID_NO_PARENT when absent). */
export function imageParentCid(core: VmdkImage): number {
  return parseCid(descriptorField(core.descriptor, 'parentCID')) ?? CID_NO_PARENT;
}

/** ImageInfo for `img info`. */
export function vmdkInfo(core: VmdkImage): ImageInfo {
  const sparse = core.extents.find((e) => e.kind === 'sparse');
  const info: ImageInfo = {
    format: FORMAT,
    virtualSize: core.size,
    dirty: core.extents.some((e) => e.kind === 'sparse' && e.map.header.uncleanShutdown),
    formatSpecific: {
      cid: imageCid(core),
      'parent-cid': imageParentCid(core),
      'create-type': core.createType,
      extents: core.extents
        .filter((e) => e.kind !== 'zero')
        .map((e) =>
          e.kind === 'sparse'
            ? { ...(e.map.compressed ? { compressed: true } : {}), 'virtual-size': e.length, filename: extentFileName(core, e), 'cluster-size': e.map.grainBytes, format: e.fileName === undefined ? '' : e.type }
            : { 'virtual-size': e.length, filename: e.kind === 'flat' ? extentFileName(core, e) : '', format: e.type },
        ),
    },
  };
  if (sparse) info.clusterSize = sparse.map.grainBytes;
  if (core.parentName !== undefined) {
    info.backingFile = core.parentName;
    info.backingFormat = FORMAT;
  }
  if (core.parent) info.fullBackingFile = core.parent.storage.name;
  return info;
}
