// The public API of @img/vhd (file helpers: @img/vhd/node).
export { VhdDisk, type VhdSectorLocation } from './disk.js';
export { openVhd, openVhdChain, vhdOpenOptionsFrom, type VhdChainOptions, type VhdOpenOptions } from './open.js';
export { vhdChainLayers, DEFAULT_MAX_CHAIN_DEPTH } from './chain.js';
export type { VhdProblem, VhdProblemCode, VhdProblemSeverity } from './problems.js';
export { createVhd, DEFAULT_BLOCK_SIZE, DEFAULT_CREATOR, vhdCreateOptionsFrom, VHD_CREATE_OPTIONS, type VhdCreateOptions, type VhdParentSpec } from './create.js';
export { checkVhd, type VhdCheckOptions, type VhdCheckResult } from './check.js';
export { coalesceVhd, type VhdCoalesceOptions, type VhdCoalesceResult } from './coalesce.js';
export { compactVhd, type VhdCompactOptions, type VhdCompactResult } from './compact.js';
export { sparsifyVhd, DEFAULT_MIN_ZERO_RUN, type VhdSparsifyOptions, type VhdSparsifyResult } from './sparsify.js';
export { vhdDriver, probeVhd } from './driver.js';
export { streamVhd, createVhdStream, vhdStreamOptionsFrom, VHD_STREAM_OPTIONS, type VhdStreamOptions } from './stream.js';
export { readVhdStream, type VhdReadStreamOptions } from './read-stream.js';
// The codecs: the spec's structures, parsed and serialized.
export { parseFooter, serializeFooter, footerChecksum, diskTypeName, toVhdTimestamp, fromVhdTimestamp, FOOTER_SIZE, FOOTER_COOKIE, COALESCE_COOKIE, DISK_TYPE, type VhdFooter, type VhdType } from './footer.js';
export { parseDynamicHeader, serializeDynamicHeader, dynamicHeaderChecksum, DYNAMIC_HEADER_SIZE, DYNAMIC_HEADER_COOKIE, PARENT_LOCATOR_COUNT, type VhdDynamicHeader, type ParentLocatorEntry } from './dynamic-header.js';
export { parseBat, serializeBat, batBytes, BAT_UNUSED, MAX_BAT_ENTRIES } from './bat.js';
export { bitmapSize, testBit, setBits, allBitsSet, bitRuns } from './bitmap.js';
export { chsForSectors, chsProduct, vhdVirtualSize, vhdSizeRule, VHD_SECTOR, VHD_MAX_SIZE, type VhdGeometry, type VhdSizeMode } from './geometry.js';
export { PLATFORM_CODE, encodeLocatorData, decodeLocatorData } from './parent-locator.js';
export { MAX_BLOCK_SIZE } from './state.js';
