export { FileStorage, type FileStorageOptions } from './file-storage.js';
export { fileResolver, resolveRelative } from './resolver.js';
