/**
 * An open qcow2 image: `openQcow2()` validates the header, its extensions
 * and every table bound before anything is allocated, opens the backing
 * image and the external data file through the resolver, and returns a
 * `Qcow2Disk`.
 */
import {
  ERROR_CODES,
  ImageError,
  FormatRegistry,
  rawDriver,
  checkDiskRange,
  extentRange,
  mergeExtents,
  corrupt,
  unsupported,
  hex,
  readOnlyError,
  invalidArg,
  readU32Be,
  utf8Decode,
} from '@img/block';
import type { Disk, Extent, ExtentOptions, FormatRegistryLike, ImageInfo, OpenOptions, SnapshotInfo, Storage, WriteZeroesOptions } from '@img/block';
import {
  QCOW2_MAGIC,
  MIN_CLUSTER_BITS,
  MAX_CLUSTER_BITS,
  MAX_L1_TABLE_BYTES,
  MAX_REFCOUNT_TABLE_BYTES,
  MAX_BACKING_FILE_NAME,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  KNOWN_INCOMPAT_MASK,
  INCOMPAT_DIRTY,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTENDED_L2,
  COMPAT_LAZY_REFCOUNTS,
  AUTOCLEAR_DATA_FILE_RAW,
  CRYPT_NONE,
  CRYPT_AES,
  CRYPT_LUKS,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
  FEATURE_TYPE_INCOMPATIBLE,
} from './constants.js';
import { parseHeader, validateHeaderBasics, geometry, hasFeature, featureBits, type Qcow2Header, type Qcow2Geometry } from './header.js';
import {
  parseExtensions,
  checkDuplicateExtensions,
  findExtension,
  extensionString,
  parseFeatureTable,
  featureName,
  parseBitmapsExtension,
  serializeExtensions,
  extensionsLength,
  type HeaderExtension,
  type FeatureName,
} from './extensions.js';
import { readSnapshotTable, snapshotInfo, type Qcow2Snapshot } from './snapshot.js';
import { readBitmapDirectory, bitmapRanges } from './bitmaps.js';
import { openBacking, openDataFile, type OpenedBacking } from './backing.js';
import { L2Cache, DEFAULT_L2_CACHE_BYTES } from './l2-cache.js';
import { compressionTypeName } from './compression.js';
import type { EntryGeometry } from './mapping.js';
import { segments, segmentExtent, readHost, readRange, BufferPool, DecompressedCache, type MappingView, type ReaderState } from './reader.js';
import { serializeHeader } from './header.js';
import { compressCluster } from './compression.js';
import { Refcounts } from './refcount.js';
import { Qcow2Writer } from './writer.js';
import { createSnapshot, applySnapshot, deleteSnapshot, type SnapshotCreateOptions } from './snapshot-ops.js';

const FORMAT = 'qcow2';

/** Options of {@link openQcow2}. */
export interface Qcow2OpenOptions extends OpenOptions {
  /** Bytes of L2 tables kept in memory (default 16 MiB: all tables of a 100 GiB image with 64 KiB clusters). */
  l2CacheSize?: number;
  /** Open this internal snapshot (id or name) read-only instead of the active layer. */
  snapshot?: string;
  /** Do not open the external data file (metadata-only uses such as check; data reads then fail). */
  noDataFile?: boolean;
  /** @internal Opened by checkQcow2: the corrupt and dirty bits do not stop a writable open. */
  checkOnly?: boolean;
}

/** Everything an open image shares between its active view and snapshot views. */
export interface Qcow2State extends ReaderState {
  header: Qcow2Header;
  extensions: HeaderExtension[];
  featureTable: FeatureName[];
  geom: Qcow2Geometry;
  snapshots: Qcow2Snapshot[];
  backingName: string | undefined;
  backingInfo: OpenedBacking | undefined;
  dataFileName: string | undefined;
  dataFile: Storage | undefined;
  pool: BufferPool;
  decompressed: DecompressedCache;
  /** Present when the image is open for writing. */
  writer: Qcow2Writer | undefined;
  /** A write met corrupt metadata: the corrupt bit is set and writes are refused. */
  corruptFound: boolean;
  /** The dirty bit was set by us (lazy refcounts) and must be cleared on flush. */
  dirtySet: boolean;
  /** The once-per-session header update before the first write. */
  firstWrite: Promise<void> | undefined;
}

/** Rewrites the header fields (bytes 0..header_length); extensions are left as they are. */
export async function writeHeader(s: Qcow2State): Promise<void> {
  await s.storage.write(0, serializeHeader(s.header));
}

/** Sets the corrupt bit (v3) after a write met corrupt metadata, and refuses further writes. */
async function markCorrupt(s: Qcow2State): Promise<void> {
  if (s.corruptFound) return;
  s.corruptFound = true;
  if (s.header.version < 3) return;
  s.header.incompatibleFeatures |= 1n << BigInt(INCOMPAT_CORRUPT);
  try {
    await writeHeader(s);
    await s.storage.flush();
  } catch {
    // The original error matters more than a failure to mark the image.
  }
}

/**
 * Before the first change: clear autoclear bits this code does not keep
 * consistent (every one but "raw external data", which writes honour), and
 * set the dirty bit when lazy refcounts are on.
 */
function beforeFirstWrite(s: Qcow2State): Promise<void> {
  s.firstWrite ??= (async () => {
    const h = s.header;
    const before = { a: h.autoclearFeatures, i: h.incompatibleFeatures };
    if (h.version >= 3) {
      h.autoclearFeatures &= 1n << BigInt(AUTOCLEAR_DATA_FILE_RAW);
      if (hasFeature(h.compatibleFeatures, COMPAT_LAZY_REFCOUNTS) && !hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY)) {
        h.incompatibleFeatures |= 1n << BigInt(INCOMPAT_DIRTY);
        s.dirtySet = true;
      }
    }
    // Bitmaps are not kept up to date by this writer: drop them (extension and clusters) rather than leave stale ones.
    const bitmaps = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
    const stale = bitmaps ? await bitmapRanges(s.storage, bitmaps, s.fileSize, s.geom.clusterSize) : [];
    if (bitmaps) {
      const oldLength = extensionsLength(s.extensions);
      s.extensions = s.extensions.filter((e) => e.type !== EXT_BITMAPS);
      const area = new Uint8Array(oldLength);
      area.set(serializeExtensions(s.extensions));
      await s.storage.write(h.headerLength, area);
    }
    if (bitmaps || before.a !== h.autoclearFeatures || before.i !== h.incompatibleFeatures) {
      await writeHeader(s);
      await s.storage.flush();
    }
    for (const r of stale) await s.writer?.refcounts?.release(r.offset, r.bytes);
  })();
  return s.firstWrite;
}

/**
 * A qcow2 image (or one of its internal snapshots) as a Disk.
 *
 * @example
 * ```ts
 * await using disk = await openQcow2(await FileStorage.open('a.qcow2'), { resolver: fileResolver });
 * const bytes = await disk.read(0, 4096);
 * ```
 */
export class Qcow2Disk implements Disk {
  readonly format = 'qcow2';
  readonly readOnly: boolean;
  /** The snapshot this view shows, if it is not the active layer. */
  readonly snapshot: SnapshotInfo | undefined;
  #state: Qcow2State;
  #view: MappingView;
  #owner: boolean;
  #closed = false;

  /** @internal Use {@link openQcow2}. */
  constructor(state: Qcow2State, view: MappingView, options: { readOnly: boolean; owner: boolean; snapshot?: SnapshotInfo }) {
    this.#state = state;
    this.#view = view;
    this.readOnly = options.readOnly;
    this.#owner = options.owner;
    this.snapshot = options.snapshot;
    states.set(this, { state, view });
  }

  get storage(): Storage {
    return this.#state.storage;
  }

  get size(): number {
    return this.#view.size;
  }

  /** The decoded header (a copy). */
  get header(): Qcow2Header {
    return { ...this.#state.header };
  }

  /** Header extensions in file order, unknown ones included. */
  get extensions(): readonly HeaderExtension[] {
    return this.#state.extensions;
  }

  get clusterSize(): number {
    return this.#state.geom.clusterSize;
  }

  /** The backing image, if one is open. */
  get backing(): Disk | undefined {
    return this.#state.backing;
  }

  /** L2 cache counters (for tests and tuning). */
  get l2CacheStats(): { hits: number; misses: number; tables: number; capacity: number } {
    const c = this.#state.cache;
    return { ...c.stats, tables: c.size, capacity: c.capacity };
  }

  #check(): void {
    if (this.#closed) throw new ImageError(ERROR_CODES.CLOSED, `${FORMAT}: ${this.#state.file}: disk is closed`, { data: { format: FORMAT, file: this.#state.file } });
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.#check();
    checkDiskRange(FORMAT, this.#view.size, offset, target.length);
    if (target.length === 0) return;
    await readRange(this.#state, this.#state, this.#view, offset, target);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const w = this.#writable(offset, data.length);
    if (data.length) await this.#guard(() => w.write(offset, data));
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    const w = this.#writable(offset, length);
    if (length) await this.#guard(() => w.zeroOrDiscard(offset, length, 'zero', options.mayUnmap ?? true));
  }

  async discard(offset: number, length: number): Promise<void> {
    const w = this.#writable(offset, length);
    if (length) await this.#guard(() => w.zeroOrDiscard(offset, length, 'discard', true));
  }

  /**
   * Writes whole clusters compressed (`offset` cluster-aligned, `data` a
   * multiple of the cluster size, or ending at the end of the disk). A
   * cluster that does not get smaller is stored uncompressed.
   */
  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const w = this.#writable(offset, data.length);
    const s = this.#state;
    const cs = s.geom.clusterSize;
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== this.size)) {
      throw invalidArg(FORMAT, `writeCompressed needs whole clusters (${cs} bytes) at a cluster boundary, got ${offset}+${data.length}`, { field: 'offset' });
    }
    if (s.dataFile) throw unsupported(FORMAT, s.file, 'compressed clusters cannot be written to an image with an external data file');
    await this.#guard(async () => {
      const jobs: Promise<void>[] = [];
      for (let at = 0; at < data.length; at += cs) {
        let cluster = data.subarray(at, at + cs);
        if (cluster.length < cs) {
          const padded = new Uint8Array(cs);
          padded.set(cluster);
          cluster = padded;
        }
        const plain = data.subarray(at, at + cs);
        jobs.push(compressCluster(s.compressionType, cluster).then((packed) => (packed ? w.writeCompressedCluster(offset + at, packed) : w.write(offset + at, plain))));
      }
      const results = await Promise.allSettled(jobs);
      for (const r of results) if (r.status === 'rejected') throw r.reason;
    });
  }

  /** Changes the virtual size: growing always works; shrinking needs `{ shrink: true }` and drops the data past the new end. */
  async resize(newSize: number, options: { shrink?: boolean } = {}): Promise<void> {
    const w = this.#writable(0, 0);
    const s = this.#state;
    if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % 512 !== 0) {
      throw invalidArg(FORMAT, `invalid size ${newSize} (a non-negative multiple of 512)`, { field: 'size' });
    }
    const old = this.#view.size;
    if (newSize < old && !options.shrink) {
      throw invalidArg(FORMAT, `shrinking from ${old} to ${newSize} bytes loses data; pass { shrink: true } to allow it`, { field: 'size' });
    }
    await this.#guard(async () => {
      if (newSize < old) {
        const cs = s.geom.clusterSize;
        const tailEnd = Math.min(old, Math.ceil(newSize / cs) * cs);
        // Zero the tail of the last cluster so that growing again shows zeros there, then drop the rest.
        if (tailEnd > newSize) await w.zeroOrDiscard(newSize, tailEnd - newSize, 'zero', true);
        if (old > tailEnd) await w.zeroOrDiscard(tailEnd, old - tailEnd, 'discard', true);
        await w.dropTablesFrom(Math.ceil(newSize / s.geom.l2Coverage));
      } else {
        await w.growL1(Math.ceil(newSize / s.geom.l2Coverage));
      }
      s.header.size = newSize;
      this.#view.size = newSize;
      await writeHeader(s);
      await s.storage.flush();
      // The new area reads as zeros even where a longer backing file has data (as qemu does).
      const backingEnd = Math.min(newSize, s.backing?.size ?? 0);
      if (backingEnd > old) await w.zeroOrDiscard(old, backingEnd - old, 'zero', true);
    });
  }

  /**
   * Takes an internal snapshot of the active layer (qemu-img snapshot -c).
   * Writes started before it finish first; writes started after wait.
   */
  async createSnapshot(name: string, options: SnapshotCreateOptions = {}): Promise<SnapshotInfo> {
    const w = this.#writable(0, 0);
    let made: SnapshotInfo | undefined;
    await this.#guard(() => w.exclusive(async () => {
      made = snapshotInfo(await createSnapshot(this.#state, this.#view, name, options), this.#state.header.size);
    }));
    return made!;
  }

  /** Reverts the active layer to internal snapshot `idOrName` (qemu-img snapshot -a); the disk takes its size. */
  async applySnapshot(idOrName: string): Promise<void> {
    const w = this.#writable(0, 0);
    await this.#guard(() => w.exclusive(() => applySnapshot(this.#state, this.#view, idOrName)));
  }

  /** Deletes internal snapshot `idOrName` (qemu-img snapshot -d). */
  async deleteSnapshot(idOrName: string): Promise<void> {
    const w = this.#writable(0, 0);
    await this.#guard(() => w.exclusive(() => deleteSnapshot(this.#state, this.#view, idOrName)));
  }

  #writable(offset: number, length: number): Qcow2Writer {
    this.#check();
    const s = this.#state;
    if (this.readOnly || !s.writer) throw readOnlyError(FORMAT, s.file);
    if (s.corruptFound) throw Qcow2Writer.corruptError(s.file);
    checkDiskRange(FORMAT, this.#view.size, offset, length);
    return s.writer;
  }

  /** Runs a write; corrupt metadata found on the way sets the corrupt bit (spec: incompatible bit 1). */
  async #guard(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      if (ImageError.isInstance(e) && e.code === ERROR_CODES.CORRUPT) await markCorrupt(this.#state);
      throw e;
    }
  }

  async flush(): Promise<void> {
    this.#check();
    const s = this.#state;
    if (this.readOnly || !s.writer) return;
    await s.dataFile?.flush();
    await s.storage.flush();
    // Lazy refcounts: refcounts are exact once everything is flushed, so the image is clean again.
    if (s.dirtySet) {
      s.header.incompatibleFeatures &= ~(1n << BigInt(INCOMPAT_DIRTY));
      await writeHeader(s);
      await s.storage.flush();
      s.dirtySet = false;
      s.firstWrite = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#owner && !this.readOnly && this.#state.writer && !this.#state.corruptFound) await this.flush();
    this.#closed = true;
    if (!this.#owner) return;
    const s = this.#state;
    s.cache.clear();
    s.decompressed.clear();
    const errors: unknown[] = [];
    for (const c of [s.backing?.close(), s.dataFile?.close(), s.storage.close()]) {
      try {
        await c;
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Extents from L1/L2 metadata only. Unallocated ranges are resolved
   * through the backing chain (depth = layer), unless `topOnly`.
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#check();
    const { start, end } = extentRange(options, this.#view.size);
    return mergeExtents(this.#extentRuns(start, end, options?.topOnly ?? false, options?.hostOffsets ?? false));
  }

  async *#extentRuns(start: number, end: number, topOnly: boolean, hostOffsets: boolean): AsyncGenerator<Extent> {
    const s = this.#state;
    const fileName = s.dataFile?.name ?? s.storage.name;
    for await (const seg of segments(s, this.#view, start, end)) {
      const backing = s.backing;
      if (seg.kind !== 'hole' || topOnly || !backing) {
        yield segmentExtent(seg, hostOffsets, fileName);
        continue;
      }
      const inBacking = Math.max(0, Math.min(seg.length, backing.size - seg.offset));
      if (inBacking > 0) {
        for await (const e of backing.extents({ offset: seg.offset, length: inBacking, hostOffsets })) {
          yield { ...e, depth: (e.depth ?? 0) + 1 };
        }
      }
      if (inBacking < seg.length) yield { offset: seg.offset + inBacking, length: seg.length - inBacking, kind: 'hole', depth: 0 };
    }
  }

  /** Internal snapshots (qemu-img snapshot -l). */
  get snapshots(): SnapshotInfo[] {
    return this.#state.snapshots.map((s) => snapshotInfo(s, this.#state.header.size));
  }

  /**
   * Opens internal snapshot `idOrName` (id first, then name, as qemu) as a
   * read-only Disk of the snapshot's own size. It shares this image's
   * storage: close it before closing the image.
   */
  async openSnapshot(idOrName: string): Promise<Qcow2Disk> {
    this.#check();
    return openSnapshotView(this.#state, idOrName);
  }

  /** What qemu-img info shows. */
  async info(): Promise<ImageInfo> {
    this.#check();
    const s = this.#state;
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
      virtualSize: this.#view.size,
      clusterSize: s.geom.clusterSize,
      dirty: hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY),
      formatSpecific: specific,
    };
    if (s.backingName !== undefined) {
      info.backingFile = s.backingName;
      if (s.backingInfo) info.fullBackingFile = s.backingInfo.fullName;
      const fmt = extensionString(findExtension(s.extensions, EXT_BACKING_FORMAT)) ?? s.backingInfo?.format;
      if (fmt !== undefined) info.backingFormat = fmt;
    }
    if (s.snapshots.length) info.snapshots = this.snapshots;
    return info;
  }
}

async function readL1(storage: Storage, offset: number, entries: number): Promise<Uint8Array> {
  const l1 = new Uint8Array(entries * 8);
  if (entries) await readHost(storage, offset, l1);
  return l1;
}

async function openSnapshotView(state: Qcow2State, idOrName: string, owner = false): Promise<Qcow2Disk> {
  const snap = state.snapshots.find((s) => s.id === idOrName) ?? state.snapshots.find((s) => s.name === idOrName);
  if (!snap) {
    throw new ImageError(ERROR_CODES.NOT_FOUND, `${FORMAT}: ${state.file}: no snapshot with id or name "${idOrName}"`, { data: { format: FORMAT, file: state.file, field: 'snapshot' } });
  }
  const size = snap.diskSize ?? state.header.size;
  const l1 = await readL1(state.storage, snap.l1TableOffset, snap.l1Size);
  return new Qcow2Disk(state, { l1, l1Offset: snap.l1TableOffset, size }, { readOnly: true, owner, snapshot: snapshotInfo(snap, state.header.size) });
}

function badField(file: string, field: string, offset: number, message: string, actual?: unknown): ImageError {
  return corrupt(FORMAT, file, message, { field, offset, actual });
}

/** A data file that was not opened: metadata works, data reads fail clearly. */
function missingDataFile(file: string, name: string | undefined): Storage {
  const fail = async (): Promise<never> => {
    throw new ImageError(ERROR_CODES.NOT_FOUND, `${FORMAT}: ${file}: the external data file "${name ?? ''}" was not opened`, { data: { format: FORMAT, file, field: 'data file' } });
  };
  return { name: name ?? 'data file', readOnly: true, size: fail, read: fail, readInto: fail, write: fail, truncate: fail, flush: async () => undefined, close: async () => undefined };
}

const states = new WeakMap<object, { state: Qcow2State; view: MappingView }>();

/** @internal The state behind a Qcow2Disk (for check). */
export function stateOf(disk: Qcow2Disk): { state: Qcow2State; view: MappingView } {
  const s = states.get(disk);
  if (!s) throw new TypeError('not a Qcow2Disk');
  return s;
}

/** Set by check.ts: rebuilds refcounts of a dirty image opened for writing. */
export const repairHook: { repair: ((state: Qcow2State, view: MappingView) => Promise<void>) | undefined } = { repair: undefined };

/** Loads the refcounts and attaches a writer to an image opened for writing. */
export async function attachWriter(state: Qcow2State, view: MappingView): Promise<void> {
  const h = state.header;
  const lazy = hasFeature(h.compatibleFeatures, COMPAT_LAZY_REFCOUNTS);
  const barrier = async () => {
    // With lazy refcounts the dirty bit stands in for ordered refcount updates (qemu skips these flushes too).
    if (lazy) return;
    await state.dataFile?.flush();
    await state.storage.flush();
  };
  const refcounts = await Refcounts.load({
    storage: state.storage,
    file: state.file,
    clusterSize: state.geom.clusterSize,
    refcountBits: state.geom.refcountBits,
    tableOffset: h.refcountTableOffset,
    tableClusters: h.refcountTableClusters,
    fileSize: state.fileSize,
    onTableMoved: async (offset, clusters) => {
      h.refcountTableOffset = offset;
      h.refcountTableClusters = clusters;
      await writeHeader(state);
    },
    barrier,
  });
  const caches = state;
  state.writer = new Qcow2Writer(state, view, refcounts, {
    read: (offset, target) => readRange(state, caches, view, offset, target),
    writeHeader: () => writeHeader(state),
    beforeFirstWrite: () => beforeFirstWrite(state),
    barrier,
  });
}

/** Set by driver.ts so that openQcow2 can build its default registry without an import cycle. */
export const registryHook: { formats: (() => FormatRegistryLike) | undefined } = { formats: undefined };

/**
 * Opens a qcow2 image read-only (the default) over `storage`.
 *
 * Backing files and an external data file are opened through
 * `options.resolver`; `noBacking` reads unallocated ranges as zeros;
 * `untrusted` refuses every reference to another file.
 */
export async function openQcow2(storage: Storage, options: Qcow2OpenOptions = {}): Promise<Qcow2Disk> {
  const file = storage.name;
  const readOnly = options.readOnly ?? true;
  if (!readOnly && storage.readOnly) throw readOnlyError(FORMAT, file);
  const fileSize = await storage.size();
  const head = await storage.read(0, Math.min(fileSize, 4096));
  if (head.length < 24 || readU32Be(head, 0) !== QCOW2_MAGIC) {
    // parseHeader names the exact problem (short file or bad magic).
    parseHeader(head, file);
  }
  const clusterBits = readU32Be(head, 20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw badField(file, 'cluster_bits', 20, `cluster_bits ${clusterBits} at 0x14 is outside 9..21 (512 B to 2 MiB clusters)`, clusterBits);
  }
  const cs = 2 ** clusterBits;
  const cluster0 = cs <= head.length ? head.subarray(0, cs) : await storage.read(0, Math.min(fileSize, cs));
  const header = parseHeader(cluster0, file);
  validateHeaderBasics(header, file);

  const extensions = parseExtensions(cluster0, header.headerLength, cs, file);
  checkDuplicateExtensions(extensions, file);
  const featureTable = parseFeatureTable(findExtension(extensions, EXT_FEATURE_TABLE));

  const unknown = featureBits(header.incompatibleFeatures & ~KNOWN_INCOMPAT_MASK);
  if (unknown.length) {
    const names = unknown.map((b) => {
      const n = featureName(featureTable, FEATURE_TYPE_INCOMPATIBLE, b);
      return n ? `bit ${b} (${n})` : `bit ${b}`;
    });
    throw unsupported(FORMAT, file, `unsupported incompatible feature ${names.join(', ')}`, { field: 'incompatible_features', offset: 72, actual: unknown });
  }
  if (header.cryptMethod !== CRYPT_NONE) {
    const kind = header.cryptMethod === CRYPT_AES ? 'AES' : header.cryptMethod === CRYPT_LUKS ? 'LUKS' : `method ${header.cryptMethod}`;
    throw unsupported(FORMAT, file, `image is encrypted (${kind}); encrypted images are not supported`, { field: 'crypt_method', offset: 32, actual: header.cryptMethod });
  }
  const corruptBit = hasFeature(header.incompatibleFeatures, INCOMPAT_CORRUPT);
  if (corruptBit && !readOnly && !options.checkOnly) {
    throw corrupt(FORMAT, file, 'image is marked corrupt (incompatible bit 1): it can only be opened read-only', { field: 'incompatible_features', offset: 72 });
  }
  const compressionBit = hasFeature(header.incompatibleFeatures, INCOMPAT_COMPRESSION);
  if (compressionBit && header.compressionType === COMPRESSION_ZLIB) {
    throw badField(file, 'compression_type', 104, 'compression type bit is set but compression_type is zlib (0) or absent');
  }
  if (!compressionBit && header.compressionType !== COMPRESSION_ZLIB) {
    throw badField(file, 'compression_type', 104, `compression_type ${header.compressionType} at 0x68 without the compression type bit`, header.compressionType);
  }
  if (header.compressionType !== COMPRESSION_ZLIB && header.compressionType !== COMPRESSION_ZSTD) {
    throw unsupported(FORMAT, file, `unknown compression_type ${header.compressionType} at 0x68`, { field: 'compression_type', offset: 104, actual: header.compressionType });
  }
  const extendedL2 = hasFeature(header.incompatibleFeatures, INCOMPAT_EXTENDED_L2);
  if (extendedL2 && clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw badField(file, 'cluster_bits', 20, `extended L2 entries need clusters of at least 16 KiB (cluster_bits ${clusterBits})`, clusterBits);
  }
  const geom = geometry(header, extendedL2);

  // L1 table: bound, alignment, inside the file, large enough for the virtual size.
  if (header.l1Size * 8 > MAX_L1_TABLE_BYTES) {
    throw badField(file, 'l1_size', 36, `l1_size ${header.l1Size} at 0x24 exceeds qemu's 32 MiB L1 bound`, header.l1Size);
  }
  const neededL1 = Math.ceil(header.size / geom.l2Coverage);
  if (neededL1 > header.l1Size) {
    throw badField(file, 'l1_size', 36, `l1_size ${header.l1Size} at 0x24 is too small for a ${header.size}-byte disk (needs ${neededL1})`, header.l1Size);
  }
  if (header.l1Size > 0 && (header.l1TableOffset % cs !== 0 || header.l1TableOffset < cs || header.l1TableOffset + header.l1Size * 8 > fileSize)) {
    throw badField(file, 'l1_table_offset', 40, `L1 table at ${hex(header.l1TableOffset)} (${header.l1Size} entries) is unaligned, overlaps the header or lies past the end of the file`, header.l1TableOffset);
  }
  // Refcount table: checked now although only writers read it.
  if (header.refcountTableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw badField(file, 'refcount_table_clusters', 56, `refcount_table_clusters ${header.refcountTableClusters} at 0x38 exceeds qemu's 8 MiB bound`, header.refcountTableClusters);
  }
  if (header.refcountTableOffset % cs !== 0 || header.refcountTableOffset < cs || header.refcountTableOffset + header.refcountTableClusters * cs > fileSize) {
    throw badField(file, 'refcount_table_offset', 48, `refcount table at ${hex(header.refcountTableOffset)} (${header.refcountTableClusters} clusters) is unaligned, overlaps the header or lies past the end of the file`, header.refcountTableOffset);
  }
  // Backing file name: inside the first cluster (qemu's rule) and the file.
  let backingName: string | undefined;
  if (header.backingFileOffset !== 0) {
    if (header.backingFileSize > MAX_BACKING_FILE_NAME) {
      throw badField(file, 'backing_file_size', 16, `backing file name of ${header.backingFileSize} bytes at 0x10 is longer than ${MAX_BACKING_FILE_NAME}`, header.backingFileSize);
    }
    if (header.backingFileOffset + header.backingFileSize > Math.min(cs, cluster0.length)) {
      throw badField(file, 'backing_file_offset', 8, `backing file name at ${hex(header.backingFileOffset)} (${header.backingFileSize} bytes) lies outside the first cluster or the file`, header.backingFileOffset);
    }
    backingName = utf8Decode(cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize));
  }
  const dataFileBit = hasFeature(header.incompatibleFeatures, INCOMPAT_DATA_FILE);
  const dataFileName = extensionString(findExtension(extensions, EXT_DATA_FILE));
  const rawDataFileBit = hasFeature(header.autoclearFeatures, AUTOCLEAR_DATA_FILE_RAW);

  const snapshots = await readSnapshotTable(storage, header.snapshotsOffset, header.nbSnapshots, fileSize, cs, file);
  const l1 = await readL1(storage, header.l1TableOffset, header.l1Size);

  const cacheBytes = options.l2CacheSize ?? DEFAULT_L2_CACHE_BYTES;
  if (!(cacheBytes >= 0)) throw new RangeError(`l2CacheSize must be a non-negative number of bytes, got ${cacheBytes}`);
  const entryGeom: EntryGeometry = { clusterBits, clusterSize: cs, extendedL2, zeroFlag: header.version >= 3 && !extendedL2, dataFile: dataFileBit };
  if (!readOnly && dataFileBit && options.noDataFile && !options.checkOnly) throw invalidArg(FORMAT, 'an image with an external data file cannot be written without it', { field: 'noDataFile' });

  let dataFile: Storage | undefined;
  let backingInfo: OpenedBacking | undefined;
  try {
    if (dataFileBit && !options.noDataFile) dataFile = await openDataFile(storage, dataFileName, options, !readOnly);
    if (backingName !== undefined && !options.noBacking) {
      const formats = options.formats ?? registryHook.formats?.() ?? new FormatRegistry([rawDriver]);
      const backingFormat = extensionString(findExtension(extensions, EXT_BACKING_FORMAT));
      backingInfo = await openBacking(storage, backingName, backingFormat, options, formats);
    }
  } catch (e) {
    await dataFile?.close().catch(() => undefined);
    throw e;
  }

  const state: Qcow2State = {
    storage,
    file,
    header,
    extensions,
    featureTable,
    geom,
    entryGeom,
    cache: new L2Cache(cacheBytes / cs),
    compressionType: header.compressionType,
    dataStorage: dataFile ?? (dataFileBit ? missingDataFile(file, dataFileName) : storage),
    rawDataFile: dataFile !== undefined && rawDataFileBit,
    backing: backingInfo?.disk,
    fileSize,
    snapshots,
    backingName,
    backingInfo,
    dataFileName,
    dataFile,
    pool: new BufferPool(2 * cs),
    decompressed: new DecompressedCache(),
    writer: undefined,
    corruptFound: false,
    dirtySet: false,
    firstWrite: undefined,
  };
  const view: MappingView = { l1, l1Offset: header.l1TableOffset, size: header.size };
  const active = new Qcow2Disk(state, view, { readOnly, owner: true });
  try {
    if (!readOnly) {
      if (options.snapshot !== undefined) throw invalidArg(FORMAT, 'snapshots open read-only', { field: 'snapshot' });
      await attachWriter(state, view);
      // A dirty image (lazy refcounts, not closed cleanly) has refcounts to rebuild before anything is allocated.
      if (hasFeature(header.incompatibleFeatures, INCOMPAT_DIRTY) && !options.checkOnly) {
        await repairHook.repair?.(state, view);
        header.incompatibleFeatures &= ~(1n << BigInt(INCOMPAT_DIRTY));
        await writeHeader(state);
        await storage.flush();
        await attachWriter(state, view);
      }
    }
  } catch (e) {
    await active.close().catch(() => undefined);
    throw e;
  }
  if (options.snapshot !== undefined) {
    // The snapshot view takes over the state: closing it closes the image.
    return openSnapshotView(state, options.snapshot, true).catch(async (e: unknown) => {
      await active.close();
      throw e;
    });
  }
  return active;
}
