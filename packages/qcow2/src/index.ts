// The public API of @img/qcow2 (Node's codecs and pool: @img/qcow2/node; the spec's
// structures and constants: @img/qcow2/layout).
export { openQcow2, type Qcow2OpenOptions } from './open.js';
export { Qcow2Disk } from './image.js';
export { qcow2Driver, defaultBackingFormats } from './driver.js';
export { createQcow2, parseCreateOptions, QCOW2_CREATE_OPTIONS, type Qcow2CreateOptions, type Qcow2Layout } from './create.js';
export { checkQcow2 } from './check-qcow2.js';
export { detectMetadataPreallocation } from './prealloc-detect.js';
export { amendQcow2, parseAmendOptions, QCOW2_AMEND_OPTIONS, QCOW2_AMEND_UNSUPPORTED, type Qcow2AmendOptions, type Qcow2AmendRequest } from './amend.js';
export { measureQcow2 } from './measure.js';
export { amendQcow2KeySlots, QCOW2_AMEND_KEYSLOT_OPTIONS, type Qcow2KeySlotChange } from './luks-keyslots.js';
export { streamQcow2, createQcow2Stream, qcow2StreamOptionsFrom, QCOW2_STREAM_OPTIONS, type Qcow2StreamOptions } from './stream.js';
export { readQcow2Stream, MAX_PENDING_RUNS } from './read-stream.js';
export { type SnapshotCreateOptions } from './snapshot-ops.js';
// The types of Qcow2Disk's header and extensions getters (their codecs: @img/qcow2/layout).
export { hasQcow2Magic, type Qcow2Header } from './header.js';
export { type HeaderExtension, type FeatureName } from './extensions.js';
export { type Qcow2Snapshot } from './snapshot.js';
export { type Qcow2BitmapInfo, type Qcow2DirtyBitmap, type DirtyRun, readQcow2DirtyBitmap } from './bitmaps.js';
export { editQcow2Bitmaps, listQcow2Bitmaps, addQcow2Bitmap, removeQcow2Bitmap, defaultQcow2BitmapGranularity, type Qcow2BitmapOp, type Qcow2BitmapEditOptions } from './bitmap-edit.js';
export { DEFAULT_L2_CACHE_BYTES } from './l2-cache.js';
export { qcow2Codecs, setQcow2Codecs } from './compression.js';
export { webCodecs } from './web-codecs.js';
export { type Qcow2Codecs, type ZstdEncoderKind, type CompressedClusters } from './codecs.js';
export { qcow2CryptoPrimitives, readyCryptoPrimitives, setQcow2CryptoPrimitives, type Qcow2CryptoPrimitives } from './crypto-primitives.js';
export { webCryptoPrimitives } from './web-crypto.js';
export { compactQcow2, type Qcow2CompactOptions, type Qcow2CompactResult } from './compact.js';
export { sparsifyQcow2, QCOW2_DEFAULT_MIN_ZERO_RUN, type Qcow2SparsifyOptions, type Qcow2SparsifyResult } from './sparsify.js';
