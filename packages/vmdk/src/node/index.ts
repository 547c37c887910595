/**
 * @img/vmdk/node: open and create VMDK files by path, with extent files
 * and parents resolved relative to the descriptor's directory, and Node's
 * codecs for compressed grains (installed by `@img/vmdk` as Node
 * resolves it, and by openVmdkFile and createVmdkFile).
 */
import { FileStorage, fileResolver } from '@img/block/node';
import { createVmdk, type VmdkCreateOptions } from '../create.js';
import type { VmdkDisk } from '../disk.js';
import { openVmdk, type VmdkOpenOptions } from '../open.js';
import { installNodeCodecs } from './codecs.js';

export { nodeCodecs, installNodeCodecs, deflateGrainsInPool } from './codecs.js';
export { nodeHashers, installNodeHashers } from './hashers.js';

/** Opens a VMDK file; extents and parents are found with fileResolver unless options say otherwise. */
export async function openVmdkFile(path: string, options: VmdkOpenOptions = {}): Promise<VmdkDisk> {
  installNodeCodecs();
  const storage = await FileStorage.open(path, { readOnly: options.readOnly ?? true });
  try {
    return await openVmdk(storage, { resolver: fileResolver, ...options });
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** Creates a VMDK file (a monolithicFlat image's -flat.vmdk beside it). */
export async function createVmdkFile(path: string, options: VmdkCreateOptions): Promise<VmdkDisk> {
  installNodeCodecs();
  const storage = await FileStorage.create(path);
  try {
    return await createVmdk(storage, { resolver: fileResolver, ...options });
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}
