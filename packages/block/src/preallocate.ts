/**
 * Preallocation of a range, as qemu's `falloc` and `full` do it: `falloc`
 * asks the storage to give the range its blocks (Storage.allocate:
 * fallocate on a local file) and writes zeros only where it cannot;
 * `full` writes the zeros. Either way the range reads as zeros and has its
 * place in the file.
 */
import { abortError } from './errors.js';
import type { Storage } from './storage.js';

/** Zeros are written this much at a time. */
const ZERO_PIECE = 4 * 1024 * 1024;

/**
 * Gives `[offset, offset + length)` of `storage` its space: with `falloc`
 * in one allocate call where the storage has it (a 10 GiB image in
 * milliseconds), else (and with `full`) by writing zeros, a piece at a
 * time; `signal` stops it between pieces.
 */
export async function preallocateRange(storage: Storage, offset: number, length: number, mode: 'falloc' | 'full', signal?: AbortSignal): Promise<void> {
  if (length <= 0) return;
  if (mode === 'falloc' && storage.allocate && (await storage.allocate(offset, length))) return;
  const zeros = new Uint8Array(Math.min(length, ZERO_PIECE));
  for (let at = offset; at < offset + length; at += zeros.length) {
    if (signal?.aborted) throw abortError(signal, 'preallocation');
    await storage.write(at, zeros.subarray(0, Math.min(zeros.length, offset + length - at)));
  }
}
