/**
 * openVhd and openVhdChain: read the layout (read-layout.ts), open the
 * parent chain through the resolver (chain.ts), and hand the core
 * (VhdImage) to its public facade (VhdDisk).
 */
import { readOnlyStorageError, unsafe, type Resolver, type Storage } from '@img/block';
import { openParent, type LayerOptions } from './chain.js';
import { VhdDisk } from './disk.js';
import { VhdImage } from './image.js';
import type { VhdOpenOptions } from './open-options.js';
import { readVhdLayout } from './read-layout.js';
import { FORMAT } from './state.js';

export { vhdOpenOptionsFrom, type VhdOpenOptions } from './open-options.js';

/**
 * Loads the core of the VHD in `storage`: its layout and, for a
 * differencing disk (unless `noBacking`), its parent chain, each parent
 * opened read-only as a VhdDisk (the direct parent writable with
 * `writableParent`/`backingWritable`). What openVhd wraps; check and
 * coalesce use it directly.
 */
export async function loadVhdImage(storage: Storage, options: LayerOptions = {}): Promise<VhdImage> {
  const readOnly = options.readOnly ?? true;
  if (!readOnly && storage.readOnly) throw readOnlyStorageError(FORMAT, storage.name);
  const state = await readVhdLayout(storage, options);
  if (options.resolver && !options.untrusted) state.resolver = options.resolver;
  if (state.type === 'differencing' && !options.noBacking) {
    if (options.untrusted) {
      throw unsafe(FORMAT, storage.name, 'differencing disk refers to a parent; untrusted opens do not follow it (use noBacking)', { field: 'parent locator' });
    }
    state.parent = await openParent(state, options, openLayer);
  }
  return new VhdImage(state, readOnly);
}

/** A parent in a chain: its core behind a VhdDisk. */
async function openLayer(storage: Storage, options: LayerOptions): Promise<VhdDisk> {
  return new VhdDisk(await loadVhdImage(storage, options));
}

/**
 * Opens a VHD (fixed, dynamic or differencing) over a storage.
 *
 * A differencing disk's parent is opened through `options.resolver`
 * (kind "parent"), like a qcow2 backing file; `untrusted` refuses to
 * (ERR_IMG_UNSAFE) and `noBacking` reads the parent's sectors as zeros.
 *
 * @example
 * ```ts
 * const disk = await openVhd(await FileStorage.open('child.vhd'), { resolver: fileResolver });
 * ```
 */
export async function openVhd(storage: Storage, options: VhdOpenOptions = {}): Promise<VhdDisk> {
  return openLayer(storage, options);
}

/** Options of openVhdChain. */
export interface VhdChainOptions extends VhdOpenOptions {
  /** Opens parents (alias of `resolver`). */
  resolve?: Resolver;
  /** Opens the top image when `source` is a path. */
  openFile?: (path: string) => Promise<Storage>;
}

/**
 * Opens a VHD and every parent below it. Parents must carry the unique id
 * their child records (unless `allowUuidMismatch`); a parent timestamp
 * mismatch is recorded in `problems`.
 *
 * @example
 * ```ts
 * const top = await openVhdChain(storage, { resolve: fileResolver, searchPath: ['/images'] });
 * for (const layer of vhdChainLayers(top)) console.log(layer.storage.name);
 * ```
 */
export async function openVhdChain(source: Storage | string, options: VhdChainOptions = {}): Promise<VhdDisk> {
  let storage: Storage;
  if (typeof source === 'string') {
    if (!options.openFile) throw new TypeError('vhd: openVhdChain(path) needs options.openFile (or use @img/vhd/node)');
    storage = await options.openFile(source);
  } else {
    storage = source;
  }
  const resolver = options.resolve ?? options.resolver;
  try {
    return await openVhd(storage, { ...options, ...(resolver ? { resolver } : {}) });
  } catch (e) {
    if (typeof source === 'string') await storage.close().catch(() => undefined);
    throw e;
  }
}
