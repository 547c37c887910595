/**
 * @img/vhd/node: the Node conveniences: open and create VHD files by path,
 * with parents resolved relative to the child's directory.
 */
import { FileStorage, fileResolver } from '@img/block/node';
import { dirname, relative, resolve } from 'node:path';
import { openVhdChain as openChain, type VhdChainOptions } from './open.js';
import { coalesceVhd, type VhdCoalesceOptions, type VhdCoalesceResult } from './coalesce.js';
import { createVhd, type VhdCreateOptions } from './create.js';
import type { VhdDisk } from './disk.js';
import { openVhd, type VhdOpenOptions } from './open.js';

/** Opens a VHD file; parents are found with fileResolver unless options say otherwise. */
export async function openVhdFile(path: string, options: VhdOpenOptions = {}): Promise<VhdDisk> {
  const storage = await FileStorage.open(path, { readOnly: options.readOnly ?? true });
  try {
    return await openVhd(storage, { resolver: fileResolver, ...options });
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** openVhdChain with files: `source` may be a path; parents resolve relative to each child. */
export function openVhdChain(source: string | FileStorage, options: VhdChainOptions = {}): Promise<VhdDisk> {
  return openChain(source, {
    resolve: fileResolver,
    openFile: (path) => FileStorage.open(path, { readOnly: options.readOnly ?? true }),
    ...options,
  });
}

export interface VhdCreateFileOptions extends Omit<VhdCreateOptions, 'parent'> {
  /** Path of the parent of a differencing disk (relative to the working directory or absolute). */
  parentPath?: string;
}

/**
 * Creates a VHD file. With `parentPath`, a differencing disk whose
 * locators hold the parent's path relative to the child (W2ru) and its
 * absolute path (W2ku, MacX).
 */
export async function createVhdFile(path: string, options: VhdCreateFileOptions): Promise<VhdDisk> {
  const { parentPath, ...rest } = options;
  const typed: VhdCreateOptions = rest;
  if (parentPath !== undefined) {
    const absolutePath = resolve(parentPath);
    const disk = await openVhdFile(absolutePath);
    typed.parent = { disk, relativePath: relative(dirname(resolve(path)), absolutePath), absolutePath };
  }
  const storage = await FileStorage.create(path);
  try {
    return await createVhd(storage, typed);
  } catch (e) {
    await storage.close().catch(() => undefined);
    await typed.parent?.disk.close().catch(() => undefined);
    throw e;
  }
}

/** Merges the differencing disk at `path` into its parent (found relative to it); see coalesceVhd. */
export async function coalesceVhdFile(path: string, options: Partial<VhdCoalesceOptions> = {}): Promise<VhdCoalesceResult> {
  return coalesceVhd(await FileStorage.open(path), { resolver: fileResolver, ...options });
}
