/**
 * VmdkImage: the core of one open VMDK (one object per open image): its
 * descriptor, its extents in guest order, the open parent, the caches and
 * the locks. Operations (read.ts, write.ts, extents.ts, ...) are functions
 * over it; VmdkDisk is the public facade that holds it privately.
 */
import { KeyedLock, diskClosedError, Mutex, type Disk, type Resolver, type Storage } from '@img/block';
import type { ExtentType, VmdkDescriptor } from './descriptor.js';
import type { GrainMap } from './grain-map.js';
import type { AppendWriter } from './append-writer.js';

/** The format name in messages and ImageError data. */
export const FORMAT = 'vmdk';

interface ExtentBase {
  /** First guest byte this extent covers. */
  start: number;
  /** Guest bytes it covers. */
  length: number;
  /** The type as the descriptor names it (SPARSE, FLAT, VMFS, ZERO, ...). */
  type: ExtentType;
  /** The file name as the descriptor line writes it (extents of a descriptor file). */
  fileName?: string;
}

/** A flat extent: guest bytes stored in order in `storage` from `fileOffset`. */
export interface FlatExtent extends ExtentBase {
  kind: 'flat';
  storage: Storage;
  fileOffset: number;
}

/** A hosted sparse extent: grains found through its grain map. */
export interface SparseExtent extends ExtentBase {
  kind: 'sparse';
  storage: Storage;
  map: GrainMap;
}

/** An extent with no file (ZERO, NOACCESS): reads as zeros. */
export interface ZeroExtent extends ExtentBase {
  kind: 'zero';
}

/** One extent of the image, in guest order. */
export type VmdkExtent = FlatExtent | SparseExtent | ZeroExtent;

/** Where the descriptor lives, so that a CID update can rewrite it. */
export interface DescriptorHome {
  storage: Storage;
  /** Byte offset of the descriptor text (0 for a descriptor file). */
  offset: number;
  /** Bytes available for it (the embedded area), or undefined for a file of its own. */
  capacity?: number;
}

/** Everything the core is built from (open.ts and create.ts fill it). */
export interface VmdkImageInit {
  storage: Storage;
  descriptor: VmdkDescriptor;
  home: DescriptorHome;
  createType: string;
  extents: VmdkExtent[];
  readOnly: boolean;
  parent?: Disk;
  parentName?: string;
  /** Set when the open parent's CID is not this image's parentCID. */
  staleParent?: StaleParent;
  resolver?: Resolver;
  /** Storages this image opened (extent files, not `storage`) and must close. */
  owned: Storage[];
}

/**
 * A parent whose CID is not the child's parentCID: the parent was written
 * after the child was made (a commit does that), or it is another disk.
 * Reads go on (as in qemu-img); a new grain in the child is refused unless
 * `allowed` (write.ts).
 */
export interface StaleParent {
  /** The child's parentCID. */
  parentCid: number;
  /** The parent's own CID. */
  cid: number;
  /** The open asked for allowCidMismatch. */
  allowed: boolean;
}

/** One number per (extent, grain): the key of grain locks and caches. */
export function grainKey(extentIndex: number, grain: number): number {
  return extentIndex * 0x100000000 + grain;
}

/**
 * An extent file's name as qemu-img prints it (info, map): the name the
 * descriptor gives, read from the descriptor's directory as the image was
 * named; for the image's own sparse extent, the image's name.
 */
export function extentFileName(core: { storage: Storage }, e: { fileName?: string; storage: Storage }): string {
  const name = e.fileName;
  if (name === undefined) return e.storage.name;
  if (name.startsWith('/')) return name;
  const base = core.storage.name;
  const slash = base.lastIndexOf('/');
  return slash >= 0 ? base.slice(0, slash + 1) + name : name;
}

/** Decompressed grains kept for re-reads (small reads inside one grain): at most this many, */
const GRAIN_CACHE_ENTRIES = 32;
/** and at most this many bytes of them (large grains: at least the last one is kept). */
const GRAIN_CACHE_BYTES = 16 << 20;

/** The open image. Internal: not exported from index. */
export class VmdkImage {
  readonly storage: Storage;
  readonly descriptor: VmdkDescriptor;
  readonly home: DescriptorHome;
  readonly createType: string;
  readonly extents: VmdkExtent[];
  readonly size: number;
  readonly readOnly: boolean;
  readonly parent: Disk | undefined;
  readonly parentName: string | undefined;
  readonly staleParent: StaleParent | undefined;
  readonly resolver: Resolver | undefined;
  readonly owned: Storage[];
  /** Per-grain write locks, keyed by grainKey(extent index, grain). */
  readonly grainLocks = new KeyedLock();
  /** Serializes allocation (grains, grain tables) and descriptor updates. */
  readonly allocation = new Mutex();
  /** The streamOptimized writer of an image being created as one. */
  appendWriter: AppendWriter | undefined;
  /** Set once the first write changed the CID (VMware and qemu change it once per open). */
  cidUpdated = false;
  closed = false;
  #grains = new Map<number, Uint8Array>();
  #grainCacheBytes = 0;

  constructor(init: VmdkImageInit) {
    this.storage = init.storage;
    this.descriptor = init.descriptor;
    this.home = init.home;
    this.createType = init.createType;
    this.extents = init.extents;
    this.readOnly = init.readOnly;
    this.parent = init.parent;
    this.parentName = init.parentName;
    this.staleParent = init.staleParent;
    this.resolver = init.resolver;
    this.owned = init.owned;
    const last = init.extents[init.extents.length - 1];
    this.size = last ? last.start + last.length : 0;
  }

  /**
   * Closes the image, its extent files and its parent: a streamOptimized
   * image being created is finished first, a writable one's files are
   * flushed. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.appendWriter && !this.appendWriter.finished) await this.appendWriter.finish();
      if (!this.readOnly) for (const s of new Set([this.storage, ...this.owned])) await s.flush();
    } finally {
      this.closed = true;
      for (const s of this.owned) await s.close().catch(() => undefined);
      await this.parent?.close().catch(() => undefined);
      await this.storage.close();
    }
  }

  /** The grain maps of the sparse extents, in extent order (check walks them). */
  grainMaps(): GrainMap[] {
    return this.extents.flatMap((e) => (e.kind === 'sparse' ? [e.map] : []));
  }

  /** Throws ERR_IMG_CLOSED after close. */
  checkOpen(): void {
    if (this.closed) throw diskClosedError('vmdk', this.storage.name);
  }

  /** The index of the extent holding guest byte `offset` (binary search). */
  extentIndexAt(offset: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.extents[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** A cached decompressed grain. */
  cachedGrain(key: number): Uint8Array | undefined {
    return this.#grains.get(key);
  }

  /** Remembers a decompressed grain (a few, most recent first out). */
  cacheGrain(key: number, grain: Uint8Array): void {
    this.dropGrain(key);
    while (this.#grains.size > 0 && (this.#grains.size >= GRAIN_CACHE_ENTRIES || this.#grainCacheBytes + grain.length > GRAIN_CACHE_BYTES)) {
      const oldest = this.#grains.keys().next().value;
      if (oldest === undefined) break;
      this.dropGrain(oldest);
    }
    this.#grains.set(key, grain);
    this.#grainCacheBytes += grain.length;
  }

  /** Forgets a cached grain (after it was rewritten). */
  dropGrain(key: number): void {
    const old = this.#grains.get(key);
    if (!old) return;
    this.#grains.delete(key);
    this.#grainCacheBytes -= old.length;
  }
}
