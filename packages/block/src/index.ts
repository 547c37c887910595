export {
  ERROR_CODES,
  type ImageErrorCode,
  type ImageErrorData,
  type ImageErrorOptions,
  ImageError,
  hex,
  where,
  corrupt,
  unsupported,
  unsafe,
  invalidArg,
  readOnlyError,
  readOnlyStorageError,
  closedError,
  diskClosedError,
  abortError,
  storageClosedError,
  storageReadOnlyError,
  backingReadOnlyError,
  invalidUsage,
  unknownFormatError,
  untrustedReferenceError,
  streamLengthError,
  throwIfAborted,
  lockedError,
  sameFileError,
  wrongFormat,
  notAnImageFile,
  notFoundError,
  ioError,
  missingFileError,
  noResolverError,
  chainTooDeepError,
  parentMismatchError,
  chainCycleError,
  cannotOpenError,
  shown,
} from './errors.js';
export {
  readU8,
  readU16Be,
  readU16Le,
  readU32Be,
  readU32Le,
  readI32Be,
  type U64Context,
  readU64Be,
  readU64BeParts,
  writeU8,
  writeU16Be,
  writeU16Le,
  writeU32Be,
  writeU32Le,
  writeU64Be,
  writeU64BeParts,
  readAscii,
  writeAscii,
  bytesEqual,
  concatBytes,
  utf8Encode,
  utf8Decode,
} from './bytes.js';
export type { Storage, StorageRange, RunCopyOptions, RunCopyResult, RunReadResult } from './storage.js';
export { MemoryStorage, type MemoryStorageOptions } from './memory-storage.js';
export { lentStorage } from './lent-storage.js';
export { unavailableStorage } from './unavailable-storage.js';
export { BlobStorage, BlobTarget, storageToBlob, type BlobLike, type BlobStorageOptions, type BlobTargetOptions, type StorageToBlobOptions } from './blob-storage.js';
export { inflateWebBounded, deflateWeb, CODEC_TOO_LARGE, CODEC_UNAVAILABLE, INFLATE_OK, INFLATE_BAD, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, type WebDeflateFormat } from './web-compression.js';
export {
  type ExtentKind,
  type Extent,
  type ExtentOptions,
  type WriteZeroesOptions,
  type Disk,
  type ResizeOptions,
  type ResizePreallocation,
  type MeasureResult,
  type MeasureInput,
  type ResolveRequest,
  type Resolver,
  type OpenOptions,
  type ChainOpenOptions,
  type BackingOpenOptions,
  type CreateOptions,
  type DriverCreateOptions,
  type FormatRegistryLike,
  type ProbeResult,
  PROBE_BYTES,
  type FormatDriver,
  type FreshImageWriter,
  type ImageStream,
  type StreamSource,
  type SnapshotInfo,
  type ImageInfo,
  type CheckResult,
  type CheckOptions,
} from './disk.js';
export { checkDiskRange, checkDiskData, alignUp, alignDown, KeyedLock, Mutex } from './disk-util.js';
export { DiskOperations } from './disk-operations.js';
export { PlacedRuns, joinPlacedExtent, type PieceWalk, type PlacedRunsOwner, type WriterPhase } from './run-placement.js';
export { SlotMap } from './slot-map.js';
export { preallocateRange } from './preallocate.js';
export { CallOrder, type CallOrderRunOptions } from './call-order.js';
export { mergeExtents, mergeExtentBatches, flattenExtentBatches, diskExtentBatches, clipExtents, collectExtents, validateExtentCover, assertExtentCover, chunkExtents, extentRange, summarizeExtents, diskExtents, parentExtents } from './extents.js';
export { isAllZero, type ZeroRun, findZeroRuns } from './zero.js';
export { looksIncompressible } from './incompressible.js';
export { FormatRegistry } from './registry.js';
export { ratePace, type Pace } from './rate-limit.js';
export { RawDisk, openRaw, createRaw, rawDriver, streamRaw, readRawStream, RAW_SECTOR, RAW_CREATE_OPTIONS, type RawCreateOptions } from './raw.js';
export { PLUMBING_CREATE_KEYS, checkOptionKeys, driverOptions, optionHelp, optionHelpLines, optionsFromText, suggestOptionKey, unknownOptionName, type DriverOptionsCheck, type OptionKind, type OptionSpec, type OptionTable } from './create-options.js';
export { sparseCopy, type SparseCopyOptions, type SparseCopyResult, type CopyProgress } from './sparse-copy.js';
export { parseSize, formatSize, parseBool } from './size.js';
export { findSignatures, SIGNATURE_FORMATS, SIGNATURE_TAIL_BYTES, type SignatureMatch } from './signatures.js';
export { LIMITS } from './limits.js';
export { ByteStreamReader } from './byte-stream.js';
export { startedAhead } from './started.js';
export { FILE_HOLES_SLICE, FileHoles, fileHolePieces, splitAtFileHoles, type RangesSource } from './file-holes.js';
export { takeIoBuffer, giveIoBuffer } from './buffer-pool.js';
