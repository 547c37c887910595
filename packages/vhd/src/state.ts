/**
 * The in-memory layout of an open VHD, shared by the modules that read,
 * write, resize, check and coalesce it. Internal: not exported from index.
 */
import type { Disk, Resolver, Storage } from '@img/block';
import type { VhdDynamicHeader } from './dynamic-header.js';
import type { VhdFooter, VhdType } from './footer.js';
import type { VhdSizeMode } from './geometry.js';
import type { VhdProblem } from './problems.js';

/** The format name in messages and ImageError data. */
export const FORMAT = 'vhd';

/** Largest block size accepted (1 GiB). 2^31 and above are corrupt. */
export const MAX_BLOCK_SIZE = 2 ** 30;

export interface VhdState {
  storage: Storage;
  type: VhdType;
  footer: VhdFooter;
  /** The size mode asked for at open (auto: the creator rule). */
  sizeMode: VhdSizeMode;
  size: number;
  /** Fixed disks: where the footer lives (end of the data area). */
  fixedFooterOffset: number;
  /** Fixed disks: the footer was 511 bytes long. */
  shortFooter: boolean;
  /** Dynamic and differencing disks. */
  header?: VhdDynamicHeader;
  headerOffset: number;
  bat: Uint32Array;
  blockSize: number;
  bitmapBytes: number;
  sectorsPerBlock: number;
  /** File offset where the next block goes (the tail footer sits there). */
  nextFree: number;
  /** Metadata ranges (footer copy, header, BAT, locator data), [start, end). */
  metadata: Array<{ start: number; end: number; what: string }>;
  /**
   * Space the image reserves without using it yet: parent locator space
   * beyond its data (also in dynamic disks, as Hyper-V and vhd-util
   * reserve it), blktap's batmap. Never allocated over, never cut.
   */
  reserved?: Array<{ start: number; end: number; what: string }>;
  /** Problems found while opening that did not stop it (footer copies, checksums, timestamps). */
  problems: VhdProblem[];
  /**
   * Harmless states a crash leaves behind (an unfinished block allocation
   * at the end of the file, a stale footer copy): readable as they are,
   * counted by check as leaks and fixed by its repair.
   */
  repairable?: VhdProblem[];
  /** Set while a coalesce into this image is in progress (COALESCE_COOKIE on disk). */
  coalescing: boolean;
  parent?: Disk;
  /** The resolver the image was opened with (setBacking looks the new parent up through it). */
  resolver?: Resolver;
  /** The name the parent was found under, and its storage name. */
  parentName?: string;
  parentFile?: string;
}
