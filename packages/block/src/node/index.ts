export { FileStorage } from './file-storage.js';
export type { FileStorageOptions, FileStorageCreateOptions } from './file-storage-options.js';
export { type LockState } from './image-lock.js';
export { fileResolver, fileResolverWith, resolveRelative, type FileResolverOptions } from './resolver.js';
export { nativeStatus, type NativeStatus, type NativeFeatures } from './native-loader.js';
export { inflateBlocks, nativeInflateAvailable, type InflateBlock, type InflateResult } from './inflate.js';
export { compressZstdClusters, nativeZstdAvailable } from './zstd.js';
export { nativePbkdf2, nativePbkdf2Hashes } from './pbkdf2.js';
export { fsError } from './fs-errors.js';
