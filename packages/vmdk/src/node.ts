/**
 * @img/vmdk/node: open and create VMDK files by path, with extent files
 * and parents resolved relative to the descriptor's directory.
 */
import { FileStorage, fileResolver } from '@img/block/node';
import { createVmdk, type VmdkCreateOptions } from './create.js';
import type { VmdkDisk } from './disk.js';
import { openVmdk, type VmdkOpenOptions } from './open.js';

/** Opens a VMDK file; extents and parents are found with fileResolver unless options say otherwise. */
export async function openVmdkFile(path: string, options: VmdkOpenOptions = {}): Promise<VmdkDisk> {
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
  const storage = await FileStorage.create(path);
  try {
    return await createVmdk(storage, { resolver: fileResolver, ...options });
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}
