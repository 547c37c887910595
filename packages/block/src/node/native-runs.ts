/**
 * Checks of what JavaScript hands the native copy loop: batches of
 * (source, destination, length) runs and the loop's options, so that the C
 * side only ever sees whole numbers in range.
 */
import { invalidArg } from '../errors.js';
import type { RunCopyOptions } from '../storage.js';
import type { NativeRunOptions } from './seek.js';

/** A whole number from 0 to 2^53: an offset or a length the native helper takes as it is. */
export const wholeNumber = (v: number): boolean => Number.isSafeInteger(v) && v >= 0;

/** Checks a batch of (source, destination, length) runs before it goes to native code. */
export function checkRuns(runs: Float64Array): number {
  if (runs.length % 3 !== 0) throw invalidArg('file', `runs must be (source, destination, length) triples: ${runs.length} numbers`);
  let total = 0;
  for (let i = 0; i < runs.length; i += 3) {
    const s = runs[i]!;
    const d = runs[i + 1]!;
    const n = runs[i + 2]!;
    if (!wholeNumber(s) || !wholeNumber(d) || !wholeNumber(n) || !Number.isSafeInteger(s + n) || !Number.isSafeInteger(d + n)) {
      throw invalidArg('file', `run ${i / 3} (${s}, ${d}, ${n}) is not three whole numbers from 0 to 2^53`, { field: 'runs' });
    }
    total += n;
  }
  return total;
}

/** Validated native options from RunCopyOptions. */
export function nativeRunOptions(options: RunCopyOptions): NativeRunOptions {
  const chunkSize = options.chunkSize ?? 4 * 1024 * 1024;
  const granule = options.granule ?? 512;
  const minZeroRun = options.minZeroRun;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 512 || chunkSize > 64 * 1024 * 1024) throw invalidArg('file', `invalid chunk size ${chunkSize} (512 bytes to 64 MiB)`, { field: 'chunkSize' });
  if (!Number.isSafeInteger(granule) || granule < 1 || granule > chunkSize) throw invalidArg('file', `invalid granule ${granule} (1 to the chunk size)`, { field: 'granule' });
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < 0) throw invalidArg('file', `invalid minimum zero run ${minZeroRun}`, { field: 'minZeroRun' });
  // 2: the helper decides by the destination's file system (copy_file_range only where the kernel offloads it).
  return {
    chunkSize,
    granule,
    minZeroRun,
    copyRange: options.copyRange === undefined ? 2 : options.copyRange ? 1 : 0,
    probeHoles: options.probeHoles === false ? 0 : 1,
    preallocate: options.preallocate === 'never' ? 0 : options.preallocate === 'any' ? 2 : 1,
    zeroTarget: options.zeroTarget ? 1 : 0,
  };
}
