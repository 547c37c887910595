/**
 * checkQcow2, the one-shot `qemu-img check`: opens the image for checking
 * and runs {@link checkState} over it. It lives above open.ts, which uses
 * checkState itself (repair on open), so check.ts need not import open.ts.
 */
import { lentStorage, type CheckOptions, type CheckResult, type Storage } from '@img/block';
import { INCOMPAT_DIRTY, INCOMPAT_CORRUPT } from './constants.js';
import { checkState } from './check.js';
import { openQcow2Image } from './open.js';
import { writeHeader } from './core.js';
import { closeQcow2 } from './io.js';

/**
 * Checks the image in `storage` the way `qemu-img check` does: leaks
 * (allocated clusters nothing refers to), corruptions (refcounts too low,
 * wrong COPIED flags, tables out of bounds), and the allocation figures.
 * With `repair` ('leaks' or 'all') the storage must be writable. The
 * storage is left open (flushed after a repair): the caller closes it.
 */
export async function checkQcow2(storage: Storage, options: CheckOptions = {}): Promise<CheckResult> {
  const core = await openQcow2Image(lentStorage(storage), {
    readOnly: !options.repair,
    noBacking: true,
    noDataFile: true,
    checkOnly: true,
    forCheck: true,
    resolver: options.resolver,
    formats: options.formats,
  });
  try {
    const result = await checkState(core, core.active, options.repair);
    // A repaired image is consistent again: the dirty and corrupt bits go (as qemu-img check -r does).
    const h = core.header;
    const flags = (1n << BigInt(INCOMPAT_DIRTY)) | (1n << BigInt(INCOMPAT_CORRUPT));
    if (options.repair && result.corruptions === 0 && (h.incompatibleFeatures & flags) !== 0n && (options.repair === 'all' || result.leaks === 0)) {
      core.setHeader({ incompatibleFeatures: h.incompatibleFeatures & ~flags });
      await writeHeader(core);
      await storage.flush();
    }
    return result;
  } finally {
    await closeQcow2(core);
  }
}
