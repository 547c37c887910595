export * from './qemu.js';
export * from './golden.js';
export { seededBytes } from './random.js';
export { tempDir } from './temp.js';
export { chunked, collectBytes, crashWindow, type CrashModelState } from './harness.js';
export { holdWithQemuIo, lockedBytes, lockedBytesOf, QEMU_RO_LOCK_BYTES, QEMU_RW_LOCK_BYTES, type QemuIoHolder } from './qemu-hold.js';
export { makeFifo, settleWithin } from './fifo.js';
export { readQcow2Bytes, entryAt, entryOffsetAt, qemuQcow2, writeCheckBomb, writeCorruptQcow2, QCOW2_CORRUPTIONS, type Qcow2Bytes, type Qcow2Corruption } from './qcow2-corrupt.js';
export { loadVhdWriters, type VhdWriterImage, type VhdWriters } from './vhd-writers.js';
