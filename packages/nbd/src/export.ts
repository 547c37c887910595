/**
 * What a server offers: named exports over open disks, and the metadata
 * contexts each one answers BLOCK_STATUS with.
 */
import type { Disk } from '@img/block';
import { CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION } from './protocol.js';

/** One export: a disk under a name. */
export interface NbdExport {
  /** The export name clients ask for ("" is the default export, as qemu-nbd's). */
  name: string;
  disk: Disk;
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Accept writes (default false: read-only, as qemu-nbd -r). The disk must be open writable. */
  writable?: boolean;
}

/** The metadata contexts of an export, in the order their ids are given. */
export function contextsOf(_exp: NbdExport): string[] {
  return [CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH];
}

/**
 * The contexts a LIST or SET query names: an exact name, or a namespace
 * ("base:", "qemu:") for LIST, which lists what it holds.
 */
export function matchContexts(available: readonly string[], query: string, listing: boolean): string[] {
  if (available.includes(query)) return [query];
  if (listing && query.endsWith(':')) return available.filter((c) => c.startsWith(query));
  return [];
}
