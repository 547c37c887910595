/**
 * What a server offers: named exports over open disks, and the metadata
 * contexts each one answers BLOCK_STATUS with.
 */
import type { Disk, Extent } from '@img/block';
import { CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION, CONTEXT_DIRTY_BITMAP } from './protocol.js';

/**
 * A dirty bitmap an export offers as the `qemu:dirty-bitmap:NAME` metadata
 * context (a qcow2 persistent bitmap: `readQcow2DirtyBitmap` in @img/qcow2).
 */
export interface NbdDirtyBitmap {
  /** The bitmap's name; clients select it as `qemu:dirty-bitmap:NAME`. */
  name: string;
  /** Dirty and clean runs covering [offset, offset + length), in order. */
  runs(offset: number, length: number): Iterable<{ offset: number; length: number; dirty: boolean }>;
}

/**
 * An extent as an export's `allocation` gives it: `inHole` marks data the
 * disk stores over a hole of its file, which reads as zeros.
 */
export type NbdExtent = Extent & { inHole?: boolean };

/** One export: a disk under a name. */
export interface NbdExport {
  /** The export name clients ask for ("" is the default export, as qemu-nbd's). */
  name: string;
  /** The disk served; it stays the caller's to close after the server is closed. */
  disk: Disk;
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Accept writes (default false: read-only, as qemu-nbd -r). The disk must be open writable. */
  writable?: boolean;
  /** Dirty bitmaps offered as `qemu:dirty-bitmap:NAME` contexts (as qemu-nbd -B NAME). */
  bitmaps?: readonly NbdDirtyBitmap[];
  /**
   * The allocation BLOCK_STATUS reports, in place of the disk's extents:
   * data marked `inHole` is answered `NBD_STATE_ZERO` (data that reads as
   * zeros), as qemu-nbd answers the clusters of a qcow2 preallocated with
   * metadata, or a fixed VHD or flat VMDK extent, over holes of their file
   * (`img serve` gives the ranges qemu asks the file below about).
   */
  allocation?: (offset: number, length: number) => AsyncIterable<NbdExtent>;
}

/** The metadata contexts of an export, in the order their ids are given. */
export function contextsOf(exp: NbdExport): string[] {
  return [CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH, ...(exp.bitmaps ?? []).map((b) => CONTEXT_DIRTY_BITMAP + b.name)];
}

/** The bitmap a context name stands for, if it is a dirty-bitmap context of this export. */
export function bitmapOf(exp: NbdExport, context: string): NbdDirtyBitmap | undefined {
  if (!context.startsWith(CONTEXT_DIRTY_BITMAP)) return undefined;
  return exp.bitmaps?.find((b) => CONTEXT_DIRTY_BITMAP + b.name === context);
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
