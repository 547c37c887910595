export { openQcow2, Qcow2Disk, type Qcow2OpenOptions } from './image.js';
export { qcow2Driver, defaultBackingFormats } from './driver.js';
export { parseHeader, serializeHeader, hasQcow2Magic, type Qcow2Header } from './header.js';
export { parseExtensions, serializeExtensions, type HeaderExtension, type FeatureName } from './extensions.js';
export { type Qcow2Snapshot } from './snapshot.js';
export { type Qcow2BitmapInfo } from './bitmaps.js';
export { DEFAULT_L2_CACHE_BYTES } from './l2-cache.js';
export * from './constants.js';
