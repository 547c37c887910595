export * from './errors.js';
export * from './bytes.js';
export type { Storage, StorageRange, RunCopyOptions, RunCopyResult, RunReadResult } from './storage.js';
export { MemoryStorage, type MemoryStorageOptions } from './memory-storage.js';
export { BlobStorage, BlobTarget, storageToBlob, type BlobLike, type BlobStorageOptions, type BlobTargetOptions, type StorageToBlobOptions } from './blob-storage.js';
export * from './disk.js';
export * from './disk-util.js';
export { CallOrder, type CallOrderRunOptions } from './call-order.js';
export * from './extents.js';
export * from './zero.js';
export { FormatRegistry } from './registry.js';
export { RawDisk, openRaw, createRaw, rawDriver, streamRaw, readRawStream, RAW_SECTOR, RAW_CREATE_OPTIONS, type RawCreateOptions } from './raw.js';
export {
  PLUMBING_CREATE_KEYS,
  checkOptionKeys,
  optionHelp,
  optionHelpLines,
  optionsFromText,
  suggestOptionKey,
  unknownOptionName,
  type OptionKind,
  type OptionSpec,
  type OptionTable,
} from './create-options.js';
export { sparseCopy, type SparseCopyOptions, type SparseCopyResult, type CopyProgress } from './sparse-copy.js';
export { parseSize, formatSize, parseBool } from './size.js';
export { FaultStorage, seededRandom, type FaultOp, type CrashMode } from './fault-storage.js';
export { findSignatures, SIGNATURE_FORMATS, SIGNATURE_TAIL_BYTES, type SignatureMatch } from './signatures.js';
export { LIMITS } from './limits.js';
export { ByteStreamReader } from './byte-stream.js';
