/**
 * Qcow2Image: the core of one open qcow2 image, shared by its views (the
 * active layer, read-only snapshot views). It owns the header and its
 * extensions, the storage and external data file, the backing image, the
 * L2 and decompressed caches, the overlap map, the writer (allocator,
 * cluster map and scheduler), the bitmap tracker, and the header updates
 * writes make (dirty and corrupt bits). The overlap map is built by
 * image-overlap.ts, cluster 0 rewritten by header-cluster-write.ts.
 */
import { CallOrder, corrupt, diskClosedError, notFoundError, unavailableStorage, type ImageError } from '@img/block';
import type { Disk, Storage } from '@img/block';
import { INCOMPAT_DIRTY, INCOMPAT_CORRUPT, COMPAT_LAZY_REFCOUNTS, AUTOCLEAR_DATA_FILE_RAW, AUTOCLEAR_BITMAPS, EXT_BITMAPS } from './constants.js';
import { hasFeature, type Qcow2Header, type Qcow2Geometry } from './header.js';
import { findExtension, parseBitmapsExtension, serializeExtensions, extensionsLength, type BitmapsExtension, type HeaderExtension, type FeatureName } from './extensions.js';
import type { Qcow2Snapshot } from './snapshot.js';
import { overlapError, type OverlapMap } from './overlap.js';
import { bitmapRanges } from './bitmaps.js';
import { BitmapTracker } from './bitmap-tracker.js';
import { type OpenedBacking } from './backing.js';
import { BufferPool, DecompressedCache, SPAN_BYTES } from './reader.js';
import type { MappingView, ReaderState } from './mapping-view.js';
import { writeHeaderFields } from './header.js';
import type { EntryGeometry } from './mapping.js';
import type { L2Cache } from './l2-cache.js';
import type { Allocator } from './allocator.js';
import type { ClusterMap } from './cluster-map.js';
import type { Scheduler } from './scheduler.js';
import { encryptingStorage, type Qcow2Encryption } from './encryption.js';
import { withWrite } from './write-wrapper.js';

const FORMAT = 'qcow2';

/** The header field of each kind of feature bits. */
const FEATURE_FIELDS = { incompatible: 'incompatibleFeatures', compatible: 'compatibleFeatures', autoclear: 'autoclearFeatures' } as const;

/** The metadata services of an image open for writing (writable.ts puts them together). */
export interface Qcow2WriterParts {
  /** Refcounts, cluster allocation and release. */
  readonly allocator: Allocator;
  /** The active layer's L1/L2 lookups and updates. */
  readonly map: ClusterMap;
  /** Locks, call order and the ordering of dependent writes. */
  readonly scheduler: Scheduler;
}

/** What {@link openQcow2Image} has read and opened, before the image takes it over. */
export interface Qcow2ImageParts extends ReaderState {
  header: Qcow2Header;
  extensions: HeaderExtension[];
  readonly featureTable: FeatureName[];
  geom: Qcow2Geometry;
  snapshots: Qcow2Snapshot[];
  backingName: string | undefined;
  backingInfo: OpenedBacking | undefined;
  readonly dataFileName: string | undefined;
  readonly dataFile: Storage | undefined;
  /** End of header, extensions and backing file name in cluster 0. */
  headerAreaEnd: number;
}

/**
 * The core of one open qcow2 image (see the module comment). Operations
 * are functions over it (io.ts, extents.ts, snapshot-ops.ts, resize.ts,
 * rebase.ts, check.ts, amend.ts); Qcow2Disk (image.ts) is the public
 * facade. Internal: not exported from index.
 */
export class Qcow2Image implements ReaderState {
  readonly storage: Storage;
  readonly file: string;
  readonly geom: Qcow2Geometry;
  readonly entryGeom: EntryGeometry;
  readonly cache: L2Cache;
  readonly compressionType: number;
  readonly dataStorage: Storage;
  readonly rawDataFile: boolean;
  readonly backing: Disk | undefined;
  readonly encryption: Qcow2Encryption | undefined;
  #fileSize: number;
  /** The header as last written (or about to be): read through {@link header}, changed only by this class's methods. */
  readonly #header: Qcow2Header;
  #extensions: HeaderExtension[];
  readonly featureTable: FeatureName[];
  #snapshots: readonly Qcow2Snapshot[];
  #backingName: string | undefined;
  #backingInfo: OpenedBacking | undefined;
  readonly dataFileName: string | undefined;
  readonly dataFile: Storage | undefined;
  /** The active layer's L1 table (snapshot views have their own). */
  readonly active: MappingView;
  /** Opened read-only (no writer). */
  readonly readOnly: boolean;
  readonly pool: BufferPool;
  readonly spans: BufferPool;
  readonly decompressed = new DecompressedCache();
  /**
   * Call order of overlapping guest operations that pause before taking
   * their places in the table locks' queues (see io.ts).
   */
  readonly order = new CallOrder();
  /** Present when the image is open for writing. */
  #writer: Qcow2WriterParts | undefined;
  /** A write met corrupt metadata: the corrupt bit is set and writes are refused. */
  #corrupt = false;
  /** The dirty bit was set by this session (lazy refcounts) and is cleared by {@link endWriteSession}. */
  #dirtySet = false;
  /** The once-per-session header update before the first write. */
  #firstWrite: Promise<void> | undefined;
  /** {@link #firstWrite} has finished (a write may start without waiting for it). */
  #firstWriteDone = false;
  #headerAreaEnd: number;
  #bitmaps: BitmapTracker | undefined;
  #overlap: OverlapMap | undefined;
  #closed = false;

  constructor(parts: Qcow2ImageParts, active: MappingView, readOnly: boolean) {
    this.storage = parts.storage;
    this.file = parts.file;
    this.geom = parts.geom;
    this.entryGeom = parts.entryGeom;
    this.cache = parts.cache;
    this.compressionType = parts.compressionType;
    // A writable image's own data goes through the overlap guard.
    const guarded = parts.dataStorage === parts.storage && !readOnly ? guardedDataStorage(parts.storage, this) : parts.dataStorage;
    // A writable LUKS image's data is encrypted on its way to the file (the open refuses one without its key).
    this.dataStorage = !readOnly && parts.encryption?.cipher ? encryptingStorage(guarded, parts.encryption.cipher) : guarded;
    this.rawDataFile = parts.rawDataFile;
    this.backing = parts.backing;
    this.encryption = parts.encryption;
    this.#fileSize = parts.fileSize;
    this.#header = parts.header;
    this.#extensions = parts.extensions;
    this.featureTable = parts.featureTable;
    this.#snapshots = parts.snapshots;
    this.#backingName = parts.backingName;
    this.#backingInfo = parts.backingInfo;
    this.dataFileName = parts.dataFileName;
    this.dataFile = parts.dataFile;
    this.#headerAreaEnd = parts.headerAreaEnd;
    this.active = active;
    this.readOnly = readOnly;
    this.pool = new BufferPool(2 * parts.geom.clusterSize);
    this.spans = new BufferPool(SPAN_BYTES + 2 * parts.geom.clusterSize, 4);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes of the image file as far as this image knows: grows through {@link noteFileEnd}, never shrinks. */
  get fileSize(): number {
    return this.#fileSize;
  }

  /** Records that the file reaches at least `end` (an allocation, a write past the old end, a size read back). */
  noteFileEnd(end: number): void {
    if (end > this.#fileSize) this.#fileSize = end;
  }

  /** The header as last written (or about to be); read-only outside this class: fields change through {@link setHeader} and the feature-bit methods. */
  get header(): Readonly<Qcow2Header> {
    return this.#header;
  }

  /**
   * Changes header fields in memory, for the caller to write (writeHeader,
   * writeHeaderCluster, a commit's one-sector switch): the one place that
   * rewrites version, sizes and table offsets.
   */
  setHeader(fields: Partial<Qcow2Header>): void {
    Object.assign(this.#header, fields);
  }

  /** After a refcount width change switched the header (refcount-order.ts): the geometry follows it, for the writer attached next. */
  setRefcountBits(bits: number): void {
    this.geom.refcountBits = bits;
  }

  /**
   * Sets (`on`) or clears bit `bit` of one of the header's feature fields
   * (spec: bytes 72, 80, 88), in memory: the caller writes the header.
   * Answers whether the field changed.
   */
  setFeatureBit(kind: 'incompatible' | 'compatible' | 'autoclear', bit: number, on: boolean): boolean {
    const field = FEATURE_FIELDS[kind];
    const before = this.#header[field];
    const mask = 1n << BigInt(bit);
    this.#header[field] = on ? before | mask : before & ~mask;
    return this.#header[field] !== before;
  }

  /** The virtual size of the active layer: the header's and the active view's together. */
  setSize(size: number): void {
    this.#header.size = size;
    this.active.size = size;
  }

  /** Points the active view at a new L1 table (a snapshot commit's switch, L1 growth); the header's fields go through {@link setHeader}. */
  replaceActiveL1(l1: Uint8Array, offset: number): void {
    this.active.l1 = l1;
    this.active.l1Offset = offset;
  }

  /** Header extensions as in cluster 0 (or about to be written there by writeHeaderCluster). */
  get extensions(): readonly HeaderExtension[] {
    return this.#extensions;
  }

  /** Replaces the header extensions (in memory: writeHeaderCluster writes them). */
  setExtensions(extensions: HeaderExtension[]): void {
    this.#extensions = extensions;
  }

  /** The internal snapshots, as the snapshot table on disk lists them. */
  get snapshots(): readonly Qcow2Snapshot[] {
    return this.#snapshots;
  }

  /** Replaces the snapshot list after the snapshot table on disk changed. */
  setSnapshots(snapshots: readonly Qcow2Snapshot[]): void {
    this.#snapshots = snapshots;
  }

  /** The backing file name in cluster 0. */
  get backingName(): string | undefined {
    return this.#backingName;
  }

  /** How the open backing image was found (format, probed, full name); none after a rebase until reopened. */
  get backingInfo(): OpenedBacking | undefined {
    return this.#backingInfo;
  }

  /** A new backing file name and backing format extension (in memory: writeHeaderCluster writes them); what was opened no longer describes it. */
  setBackingName(name: string | undefined, extensions: HeaderExtension[]): void {
    this.#backingName = name;
    this.#extensions = extensions;
    this.#backingInfo = undefined;
  }

  /** End of header, extensions and backing file name in cluster 0, as last written. */
  get headerAreaEnd(): number {
    return this.#headerAreaEnd;
  }

  /** Records where the header area written last ends (what a later rewrite of cluster 0 must clear). */
  setHeaderAreaEnd(end: number): void {
    this.#headerAreaEnd = end;
  }

  /** Enabled persistent bitmaps being kept up to date (after the first write). */
  get bitmaps(): BitmapTracker | undefined {
    return this.#bitmaps;
  }

  /** Starts or stops keeping bitmaps up to date (stopped while the bitmap directory is rewritten). */
  setBitmapTracker(tracker: BitmapTracker | undefined): void {
    this.#bitmaps = tracker;
  }

  /** Where the metadata is (writable opens): every write is checked against it. */
  get overlap(): OverlapMap | undefined {
    return this.#overlap;
  }

  /** Attaches the writable parts: the overlap map first (the refcounts load into it), then the services. */
  attachWritable(overlap: OverlapMap, writer?: Qcow2WriterParts): void {
    this.#overlap = overlap;
    if (writer) this.#writer = writer;
  }

  /** The metadata services, when the image is open for writing. */
  get writer(): Qcow2WriterParts | undefined {
    return this.#writer;
  }

  /** A write met corrupt metadata ({@link markCorrupt}): writes are refused from now on. */
  get markedCorrupt(): boolean {
    return this.#corrupt;
  }

  /**
   * After a write met corrupt metadata: refuses further writes and sets
   * the corrupt bit (version 3; spec: incompatible bit 1) on disk, header
   * written and flushed. A failure to write the bit is ignored: the error
   * that found the corruption is the one the caller reports. Once.
   */
  async markCorrupt(): Promise<void> {
    if (this.#corrupt) return;
    this.#corrupt = true;
    if (this.#header.version < 3) return;
    this.setFeatureBit('incompatible', INCOMPAT_CORRUPT, true);
    try {
      await writeHeader(this);
      await this.storage.flush();
    } catch {
      // The original error matters more than a failure to mark the image.
    }
  }

  /**
   * Clears the dirty bit on disk (header written, flushed) after the
   * refcounts were made exact: a dirty image's repair when it opens.
   */
  async clearDirty(): Promise<void> {
    this.setFeatureBit('incompatible', INCOMPAT_DIRTY, false);
    await writeHeader(this);
    await this.storage.flush();
  }

  /** The once-per-session header update has finished: a write may start without waiting for {@link beforeFirstWrite}. */
  get firstWriteDone(): boolean {
    return this.#firstWriteDone;
  }

  /**
   * Before the first change of a session, once (later callers wait for
   * the same update): clears the autoclear bits this code does not keep
   * consistent (every one but "raw external data", which writes honour),
   * sets the dirty bit when lazy refcounts are on, starts keeping
   * consistent persistent bitmaps up to date and drops inconsistent ones
   * (extension and clusters, as qemu would otherwise count them as leaked).
   * The header is written and flushed if it changed.
   */
  beforeFirstWrite(): Promise<void> {
    this.#firstWrite ??= this.#firstWriteUpdate();
    return this.#firstWrite;
  }

  async #firstWriteUpdate(): Promise<void> {
    const h = this.#header;
    const before = { a: h.autoclearFeatures, i: h.incompatibleFeatures };
    if (h.version >= 3) {
      h.autoclearFeatures &= 1n << BigInt(AUTOCLEAR_DATA_FILE_RAW);
      if (hasFeature(h.compatibleFeatures, COMPAT_LAZY_REFCOUNTS) && !hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY)) {
        this.setFeatureBit('incompatible', INCOMPAT_DIRTY, true);
        this.#dirtySet = true;
      }
    }
    const bitmaps = parseBitmapsExtension(findExtension(this.extensions, EXT_BITMAPS), this.file);
    const consistent = bitmaps !== undefined && (before.a & (1n << BigInt(AUTOCLEAR_BITMAPS))) !== 0n;
    if (consistent && h.version >= 3) {
      this.setFeatureBit('autoclear', AUTOCLEAR_BITMAPS, true);
      this.setBitmapTracker(await this.#loadTracker(bitmaps!));
    }
    const stale = bitmaps && !consistent ? await bitmapRanges(this.storage, bitmaps, this.fileSize, this.geom.clusterSize) : [];
    if (bitmaps && !consistent) {
      const oldLength = extensionsLength(this.extensions);
      this.setExtensions(this.extensions.filter((e) => e.type !== EXT_BITMAPS));
      const area = new Uint8Array(oldLength);
      area.set(serializeExtensions(this.extensions));
      await this.storage.write(h.headerLength, area);
    }
    if ((bitmaps && !consistent) || before.a !== h.autoclearFeatures || before.i !== h.incompatibleFeatures) {
      await writeHeader(this);
      await this.storage.flush();
    }
    for (const r of stale) await this.#writer?.allocator.release(r.offset, r.bytes);
    this.#firstWriteDone = true;
  }

  /**
   * After a flush made the refcounts exact: clears the dirty bit this
   * session set (lazy refcounts; header written and flushed), and the next
   * write starts a new session ({@link beforeFirstWrite} again).
   */
  async endWriteSession(): Promise<void> {
    if (!this.#dirtySet) return;
    this.setFeatureBit('incompatible', INCOMPAT_DIRTY, false);
    await writeHeader(this);
    await this.storage.flush();
    this.#dirtySet = false;
    this.#firstWrite = undefined;
    this.#firstWriteDone = false;
  }

  #loadTracker(bitmaps: BitmapsExtension): Promise<BitmapTracker | undefined> {
    const allocator = this.#writer!.allocator;
    return BitmapTracker.load({ storage: this.storage, clusterSize: this.geom.clusterSize, allocate: (n) => allocator.allocate(n), writeFresh: (o, b, w) => allocator.writeFresh(o, b, w), flush: () => this.storage.flush() }, bitmaps, this.fileSize, this.#header.size);
  }

  /**
   * After the bitmap directory was rewritten within a write session (a
   * resize): the consistent enabled bitmaps are kept up to date again,
   * from the new directory. Before the session's first write it does
   * nothing ({@link beforeFirstWrite} loads them then).
   */
  async reloadBitmapTracker(): Promise<void> {
    if (!this.#firstWriteDone || !this.#writer) return;
    const bitmaps = parseBitmapsExtension(findExtension(this.extensions, EXT_BITMAPS), this.file);
    const consistent = bitmaps !== undefined && hasFeature(this.#header.autoclearFeatures, AUTOCLEAR_BITMAPS);
    this.setBitmapTracker(consistent ? await this.#loadTracker(bitmaps) : undefined);
  }

  /** Throws ERR_IMG_CLOSED once closed. */
  assertOpen(): void {
    if (this.#closed) throw diskClosedError(FORMAT, this.file);
  }

  /** The internal snapshot with id `idOrName`, else the one named so (as qemu looks them up). */
  findSnapshot(idOrName: string): Qcow2Snapshot {
    const snap = this.snapshots.find((s) => s.id === idOrName) ?? this.snapshots.find((s) => s.name === idOrName);
    if (!snap) {
      throw notFoundError(this.file, `no snapshot with id or name "${idOrName}"`, { format: FORMAT, field: 'snapshot' });
    }
    return snap;
  }

  /**
   * Closes the image: deferred L2 writes finish, caches go, then the
   * backing image, the data file and the storage close. Idempotent; the
   * first error is reported after everything was closed.
   */
  async close(errors: unknown[] = []): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.writer?.scheduler.settle().catch((e: unknown) => errors.push(e));
    this.cache.clear();
    this.decompressed.clear();
    for (const close of [() => this.backing?.close(), () => this.dataFile?.close(), () => this.storage.close()]) {
      try {
        await close();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  }
}

/** The error for a write after an earlier one met corrupt metadata. */
export function corruptImageError(file: string): ImageError {
  return corrupt(FORMAT, file, 'the image was marked corrupt by an earlier write; it can only be read');
}

/** Rewrites the header fields (bytes 0..header_length); extensions are left as they are. */
export function writeHeader(s: Qcow2Image): Promise<void> {
  return writeHeaderFields(s.storage, s.header);
}

/** A data file that was not opened: metadata works, data reads fail clearly. */
export function missingDataFile(file: string, name: string | undefined): Storage {
  return unavailableStorage(name ?? 'data file', () => notFoundError(file, `the external data file "${name ?? ''}" was not opened`, { format: FORMAT, field: 'data file' }));
}

/**
 * The image file as guest data sees it: each write is checked against the
 * overlap map first, and one that would hit metadata marks the image
 * corrupt and is refused (qemu: "Preventing invalid write on metadata").
 */
export function guardedDataStorage(storage: Storage, s: Qcow2Image): Storage {
  const write = async (position: number, data: Uint8Array): Promise<void> => {
    if (s.markedCorrupt) throw corruptImageError(s.file);
    const hit = s.overlap?.find(position, data.length);
    if (hit) {
      await s.markCorrupt();
      throw overlapError(s.file, position, data.length, hit);
    }
    return storage.write(position, data);
  };
  return withWrite(storage, write);
}
