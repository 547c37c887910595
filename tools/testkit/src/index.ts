export * from './qemu.js';
export * from './golden.js';
export { seededBytes } from './random.js';
export { tempDir } from './temp.js';
export { chunked, collectBytes, crashWindow, type CrashModelState } from './harness.js';
