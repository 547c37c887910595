export { FileStorage, type FileStorageOptions, type FileStorageCreateOptions } from './file-storage.js';
export { type LockState } from './image-lock.js';
export { fileResolver, fileResolverWith, resolveRelative, type FileResolverOptions } from './resolver.js';
export { nativeStatus, type NativeStatus, type NativeFeatures } from './native-loader.js';
export { inflateBlocks, nativeInflateAvailable, INFLATE_OK, INFLATE_BAD, INFLATE_TOO_LARGE, INFLATE_TRUNCATED, type InflateBlock, type InflateResult } from './inflate.js';
