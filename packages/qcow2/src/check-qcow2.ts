/**
 * checkQcow2, the one-shot `qemu-img check`: opens the image for checking
 * and runs {@link checkState} over it. It lives above open.ts, which uses
 * checkState itself (repair on open), so check.ts need not import open.ts.
 */
import type { CheckOptions, CheckResult, Storage } from '@img/block';
import { INCOMPAT_DIRTY, INCOMPAT_CORRUPT } from './constants.js';
import { checkState } from './check.js';
import { openQcow2 } from './open.js';
import { writeHeader } from './state.js';
import { stateOf } from './image.js';

/**
 * Checks the image in `storage` the way `qemu-img check` does: leaks
 * (allocated clusters nothing refers to), corruptions (refcounts too low,
 * wrong COPIED flags, tables out of bounds), and the allocation figures.
 * With `repair` ('leaks' or 'all') the storage must be writable.
 */
export async function checkQcow2(storage: Storage, options: CheckOptions = {}): Promise<CheckResult> {
  const disk = await openQcow2(storage, {
    readOnly: !options.repair,
    noBacking: true,
    noDataFile: true,
    checkOnly: true,
    resolver: options.resolver,
    formats: options.formats,
  });
  try {
    const { state, view } = stateOf(disk);
    const result = await checkState(state, view, options.repair);
    // A repaired image is consistent again: the dirty and corrupt bits go (as qemu-img check -r does).
    const h = state.header;
    const flags = (1n << BigInt(INCOMPAT_DIRTY)) | (1n << BigInt(INCOMPAT_CORRUPT));
    if (options.repair && result.corruptions === 0 && (h.incompatibleFeatures & flags) !== 0n && (options.repair === 'all' || result.leaks === 0)) {
      h.incompatibleFeatures &= ~flags;
      await writeHeader(state);
      await storage.flush();
    }
    return result;
  } finally {
    await disk.close();
  }
}
