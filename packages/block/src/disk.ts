/**
 * Disk, Extent and FormatDriver: the shapes every format implements and
 * every tool (sparseCopy, convert, the CLI) relies on.
 */
import type { OptionTable } from './create-options.js';
import type { Storage } from './storage.js';

// Open images are AsyncDisposable (`await using disk = ...`). The symbol's
// type comes with lib "esnext.disposable" or @types/node; declared here as
// well, so that the shipped types check in a project with lib
// ["ES2022", "DOM"] and no Node types (the declarations merge where the
// library has it). At run time it is the platform's symbol: where a runtime
// lacks it, close() is the way to close.
declare global {
  interface SymbolConstructor {
    readonly asyncDispose: unique symbol;
  }
}

/**
 * - `data`: bytes are stored in the layer `depth` (read them).
 * - `zero`: known to read as zeros (a zero cluster, an unused VHD block).
 * - `hole`: allocated nowhere in the chain: reads as zeros. With
 *   `topOnly`, a hole means "not in the top layer" (falls through).
 */
export type ExtentKind = 'data' | 'zero' | 'hole';

export interface Extent {
  /** Guest offset in bytes. */
  offset: number;
  length: number;
  kind: ExtentKind;
  /**
   * The chain layer that decides the bytes: 0 is the image itself, 1 its
   * backing file, ... For holes, the deepest layer looked at (as qemu-img map).
   */
  depth?: number;
  /** Where `data` lives in that layer's file, when asked for with `hostOffsets`. */
  hostOffset?: number;
  /** The file of that layer, when asked for with `hostOffsets`. */
  file?: string;
}

export interface ExtentOptions {
  /** Start of the range (default 0). */
  offset?: number;
  /** Length of the range (default: to the end of the disk). */
  length?: number;
  /** Report only the top layer's allocation: everything it does not hold is a hole. */
  topOnly?: boolean;
  /** Report host offsets; extents are then also split where host offsets are not contiguous. */
  hostOffsets?: boolean;
  /**
   * Also report as `zero` what a layer stores in holes of its file (a
   * block allocated but written only in part): a question to the file
   * system (a format may read the sectors of the page beside a hole to
   * find which are zeros). A copy asks for it; `img map` does not,
   * as qemu-img map does not look below the format. Default false
   * (raw images always do it).
   */
  fileHoles?: boolean;
  /**
   * For a caller that counts whole units of this many bytes (a measure
   * counting clusters): a format may report each data extent widened to
   * the units it touches, aligned to multiples of it, and skip the
   * questions inside them (a raw file's SEEK_HOLE per run), so `data` may
   * then cover holes and zeros. A hint: formats that cannot use it answer
   * exactly. Default: exact extents.
   */
  granularity?: number;
}

export interface WriteZeroesOptions {
  /** May the range be deallocated (made a hole/zero cluster) instead of writing zeros? Default true. */
  mayUnmap?: boolean;
}

/**
 * How a resize allocates the space it adds (qemu-img resize --preallocation):
 * `off` allocates nothing; `metadata` allocates the format's tables and
 * clusters, reading as zeros; `falloc` and `full` also give every new byte
 * its place in the file. A format that cannot do a mode refuses it
 * (ERR_IMG_UNSUPPORTED), and shrinking takes `off` only.
 */
export type ResizePreallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** Options of {@link Disk.resize}. */
export interface ResizeOptions {
  /** Allow a smaller size (the data past the new end is lost). */
  shrink?: boolean;
  /** What to allocate for the space a grow adds (default `off`). */
  preallocation?: ResizePreallocation;
  /**
   * Stops a preallocating grow between pieces (ERR_IMG_ABORTED). The disk
   * has its new size by then; a caller that wants the old one back resizes
   * to it (`{ shrink: true }`).
   */
  signal?: AbortSignal;
}

/**
 * The virtual disk a guest sees. Offsets are bytes; alignment is the
 * format's business. All methods may be called concurrently.
 */
export interface Disk {
  /** Format name ("raw", "qcow2", "vhd"). */
  readonly format: string;
  /** Virtual size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** The storage the top layer lives in. */
  readonly storage: Storage;
  /** Reads `length` bytes at `offset` (must lie inside the disk). */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Reads target.length bytes at `offset` into target. */
  readInto(offset: number, target: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void>;
  /** Tells the format the range is unused: it may deallocate it. Reads after discard return zeros or backing data. */
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /**
   * Waits for every operation called before it to settle (failed ones
   * too), then flushes and closes. Operations called once it has started
   * are refused with ERR_IMG_CLOSED; a second call waits for the first.
   */
  close(): Promise<void>;
  /**
   * A sorted, gap-free, non-overlapping, maximally merged cover of the
   * range, from metadata only (never reads data).
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent>;
  /**
   * The same extents as {@link Disk.extents}, in the same order, handed
   * over in arrays as the format finds them (a window of a raw file's
   * ranges, a qcow2 L2 table's worth), so that a walk over many extents
   * pays one await per array instead of one per extent. Optional:
   * {@link diskExtentBatches} falls back to `extents()`, one per array.
   * No array is empty.
   */
  extentBatches?(options?: ExtentOptions): AsyncIterable<readonly Extent[]>;
  /** What `img info` shows (optional: formats with more than a size implement it). */
  info?(): Promise<ImageInfo>;
  /** Changes the virtual size (optional). Shrinking must be asked for. */
  resize?(newSize: number, options?: ResizeOptions): Promise<void>;
  /** Opens an internal snapshot read-only (formats with snapshots). */
  openSnapshot?(idOrName: string): Promise<Disk>;
  /**
   * Writes whole clusters compressed (formats with compression: qcow2).
   * `offset` is cluster-aligned and `data` whole clusters (or ends at the
   * end of the disk); a cluster that does not shrink is stored plain.
   */
  writeCompressed?(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Rewrites the backing file reference only (rebase -u): the name and
   * format stored in the image, or none. Content is not touched.
   */
  setBacking?(name: string | undefined, format?: string): Promise<void>;
  /** Deallocates every cluster/block of this layer so reads fall through to the backing image (commit). */
  makeEmpty?(): Promise<void>;
  /** The open backing image (or parent), if any. */
  readonly backing?: Disk | undefined;
  [Symbol.asyncDispose](): Promise<void>;
}

/** What `img measure` prints, as qemu-img measure. */
export interface MeasureResult {
  /** Bytes the new image needs for this content. */
  required: number;
  /** Bytes it would need fully allocated. */
  fullyAllocated: number;
}

/** Input of FormatDriver.measure: a size, or a source disk whose extents say what is allocated. */
export interface MeasureInput {
  size: number;
  source?: Disk;
  options?: Record<string, unknown>;
}

/** What a resolver is asked to open. */
export interface ResolveRequest {
  /** The name as stored in the image (backing file name, parent locator path, data file name). */
  name: string;
  /** Why it is needed. */
  kind: 'backing' | 'data-file' | 'parent';
  /** The storage of the image that refers to it (its name is the base for relative names). */
  from: Storage;
  /** Open for writing? Backing files and parents are opened read-only unless a commit needs them. */
  writable: boolean;
  /** Create the file (a new external data file); implies writable. */
  create?: boolean;
}

/**
 * Opens storages named inside images. The caller controls it: the Node
 * entry's `fileResolver` opens files relative to the referring image;
 * untrusted opens refuse to call any resolver.
 */
export type Resolver = (request: ResolveRequest) => Promise<Storage>;

export interface OpenOptions {
  /** Open read-only (default true for open(), false for create()). */
  readOnly?: boolean;
  /** Opens backing files, data files and parents. Without one they cannot be opened. */
  resolver?: Resolver;
  /** Formats a backing file may be opened with (default: the format's own plus raw). */
  formats?: FormatRegistryLike;
  /** Never open anything named inside the image; apply every bound strictly. */
  untrusted?: boolean;
  /** Do not open backing files/parents at all: unallocated ranges read as zeros. */
  noBacking?: boolean;
  /** How deep a chain may go (default 64). */
  maxChainDepth?: number;
  /** Open backing files / parents writable too (commit needs it). */
  backingWritable?: boolean;
  /**
   * The passphrase of an encrypted image (qcow2 with LUKS or the old AES
   * method): without it the image opens, shows its metadata and maps, but
   * its data does not read. Formats without encryption ignore it.
   */
  passphrase?: string | Uint8Array;
  /**
   * Options for the backing file alone, as qemu's `backing.*` image options:
   * its passphrase when it is encrypted under another one than this image's
   * (qemu's `backing.encrypt.key-secret`), and, nested, its own backing
   * file's. Where none is given, a backing file is tried with this image's
   * passphrase.
   */
  backing?: BackingOpenOptions;
}

/** What {@link OpenOptions.backing} may say about a backing file. */
export interface BackingOpenOptions {
  /** The backing file's passphrase. */
  passphrase?: string | Uint8Array;
  /** The same for the backing file's own backing file. */
  backing?: BackingOpenOptions;
}

/**
 * OpenOptions as a format passes them on when it opens a backing file or
 * parent (through another format's driver, too): they also carry the names
 * of the images already open above it, for cycle detection. Formats read
 * `chain`; callers of `open()` never set it.
 */
export interface ChainOpenOptions extends OpenOptions {
  /** The names (`Storage.name`) of the images already open above this one, top first. */
  chain?: readonly string[];
}

/**
 * The base of every format's create options (`Qcow2CreateOptions`,
 * `RawCreateOptions`, ...), which add their own typed, camelCase keys.
 */
export interface CreateOptions {
  /** Virtual size in bytes. */
  size: number;
}

/**
 * What a caller that knows only the FormatDriver shape (the registry,
 * convert) passes to `create()`: the size, the plumbing that opens a
 * backing file, and format options under their typed (camelCase) keys.
 * The keys cannot be checked by the compiler here; each driver checks them
 * against its option table and refuses any it does not declare
 * (ERR_IMG_INVALID_ARG, "did you mean ...?").
 */
export interface DriverCreateOptions extends CreateOptions {
  backingFile?: string;
  backingFormat?: string;
  resolver?: Resolver;
  formats?: FormatRegistryLike;
  noBacking?: boolean;
  [key: string]: unknown;
}

/** The minimal registry shape formats use to open backing images of another format. */
export interface FormatRegistryLike {
  get(name: string): FormatDriver | undefined;
  probe(head: Uint8Array, size: number, tail?: Uint8Array): ProbeResult[];
}

export interface ProbeResult {
  format: string;
  /** 0 = not this format, 100 = certainly this format. raw answers 1 for anything. */
  score: number;
}

/** How many bytes of a file probe() wants to see. */
export const PROBE_BYTES = 4096;

/** What a format package exports for the registry. */
export interface FormatDriver {
  readonly name: string;
  /** Other names accepted on the command line ("vpc" for vhd). */
  readonly aliases?: readonly string[];
  /**
   * How sure is this format that these bytes are one of its images?
   * `head` is the first PROBE_BYTES bytes (less for small files), `tail`
   * the last 512 bytes (VHD keeps its footer there).
   */
  probe(head: Uint8Array, size: number, tail?: Uint8Array): number;
  open(storage: Storage, options?: OpenOptions): Promise<Disk>;
  create(storage: Storage, options: DriverCreateOptions): Promise<Disk>;
  /** `-o` names accepted by create(), with a line of help each (derived from `createOptionTable`). */
  readonly createOptions?: Readonly<Record<string, string>>;
  /** The options create() accepts: typed key, qemu-img's `-o` name, help, parser. */
  readonly createOptionTable?: OptionTable;
  /** Consistency check (and repair) of an image in `storage`. */
  check?(storage: Storage, options?: CheckOptions): Promise<CheckResult>;
  /** Size a new image of this format would need (qemu-img measure). */
  measure?(input: MeasureInput): Promise<MeasureResult>;
  /**
   * A sequential writer: the whole image as a byte stream with no seeking
   * (stdout, a pipe, an HTTP upload). Metadata is laid out from the
   * source's extents first, so `length` is known before the first byte.
   */
  stream?(source: Disk, options?: Record<string, unknown>): Promise<ImageStream>;
  /**
   * True when an image made with these create options is best written
   * front to back through `stream()` (vmdk streamOptimized: grains in guest
   * order, as VMware's exporters lay them out); convert then writes an
   * output file through the stream writer instead of create().
   */
  streamOnly?(options: Record<string, unknown>): boolean;
  /**
   * A sequential reader: the guest data of an image arriving as a stream,
   * possible when its metadata precedes the data it describes. Pieces come
   * in increasing host order; anything out of order is an ImageError that
   * names the first offending cluster or block.
   */
  readStream?(input: AsyncIterable<Uint8Array>, options?: OpenOptions): Promise<StreamSource>;
  /**
   * A writer for a brand-new image in `storage` that nobody reads until it
   * is finished (a conversion target): data is laid out as it arrives and
   * the metadata is written once by {@link FreshImageWriter.finish}.
   * Answers undefined where these create options need the general writer
   * (backing file, preallocation, external data file, ...); convert then
   * uses create().
   */
  createFresh?(storage: Storage, options: DriverCreateOptions): Promise<FreshImageWriter | undefined>;
}

/**
 * A Disk that writes a new image for a one-shot copy (see
 * {@link FormatDriver.createFresh}). Until `finish()` the data written
 * is not part of any image (qcow2 keeps a valid empty image in the
 * storage meanwhile, as qemu-img convert's target is); `finish()` commits
 * the metadata and answers the image opened for writing; `abort()` gives
 * up without it.
 */
export interface FreshImageWriter extends Disk {
  finish(): Promise<Disk>;
  abort(): Promise<void>;
  /**
   * Optional, for sparseCopy's file-to-file loop: true when the writer
   * can place guest runs in `storage` ahead of the copy (placeRuns) so the
   * bytes go from the source file straight to their host position.
   */
  canPlaceRuns?(): boolean;
  /**
   * Reserves host space for guest `[offset, offset + length)` (all of it
   * becomes allocated) and answers (guest offset, host position, length)
   * triples covering it.
   */
  placeRuns?(offset: number, length: number): number[];
  /**
   * After a batch of placed runs was copied with zero detection and some
   * zeros were left unwritten: the writer gives back what it reserved and
   * nothing was written into. `runs` are the batch's (source position,
   * host position, length) triples.
   */
  settleRuns?(runs: Float64Array): Promise<void>;
  /**
   * How the file-to-file copy may allocate this writer's file ahead of the
   * placed runs (`RunCopyOptions.preallocate` of {@link Storage.copyRunsTo}); default `'never'`.
   */
  readonly copyPreallocation?: 'holes' | 'any' | 'never';
}

/** An image as a byte stream of known length. */
export interface ImageStream {
  /**
   * Total bytes the stream will yield, or -1 when it is known only at the
   * end (a compressed stream: vmdk streamOptimized).
   */
  length: number;
  chunks: AsyncIterable<Uint8Array>;
}

/** Guest data decoded from an image stream. */
export interface StreamSource {
  /**
   * Virtual size of the disk; -1 while unknown (a raw stream only knows it
   * at its end, when it sets it).
   */
  size: number;
  /** Data pieces at guest offsets; what no piece covers reads as zeros. Pieces never overlap. */
  pieces: AsyncIterable<{ offset: number; data: Uint8Array }>;
}

/** An internal snapshot as `img info` and `img snapshot -l` show it (qemu-img's fields). */
export interface SnapshotInfo {
  id: string;
  name: string;
  /** Seconds and nanoseconds since the epoch when it was taken. */
  dateSec: number;
  dateNsec: number;
  /** Guest clock at the snapshot, in nanoseconds. */
  vmClockNsec: number;
  /** Bytes of saved VM state. */
  vmStateSize: number;
  /** Virtual disk size of the snapshot. */
  diskSize: number;
  /** Guest instruction count, when recorded (-1 / undefined otherwise). */
  icount?: number;
}

/** What `img info` prints about an image; field meanings follow qemu-img info. */
export interface ImageInfo {
  format: string;
  virtualSize: number;
  clusterSize?: number;
  /** Backing file / parent name as stored in the image. */
  backingFile?: string;
  /** The resolved path or name of the backing file, where known. */
  fullBackingFile?: string;
  backingFormat?: string;
  dirty?: boolean;
  /** The image's data is encrypted (qemu-img info's "encrypted: yes"). */
  encrypted?: boolean;
  snapshots?: SnapshotInfo[];
  /** Format-specific fields, keyed as qemu-img's "format-specific" data prints them (kebab-case). */
  formatSpecific?: Record<string, unknown>;
}

/** The verdict of a consistency check, modelled on qemu-img check. */
export interface CheckResult {
  format: string;
  /** Problems that can lose or expose data. */
  corruptions: number;
  /** Allocated space nothing refers to (harmless, reclaimable). */
  leaks: number;
  /** Internal errors while checking (I/O errors, unreadable tables). */
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** One line per problem found, for people. */
  messages: string[];
  /**
   * Set where the check stopped and failed as qemu-img's would (exit 1, "Check failed: <reason>", no summary): the
   * reason (`Invalid argument`, ...). Formats set it only where qemu-img's own check stops on the same image.
   */
  checkFailed?: string;
  /** End of the last used byte of the file, where the format knows it. */
  imageEndOffset?: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
}

export interface CheckOptions {
  /** Repair: leaks only, or everything that can be repaired. */
  repair?: 'leaks' | 'all';
  resolver?: Resolver;
  formats?: FormatRegistryLike;
}
