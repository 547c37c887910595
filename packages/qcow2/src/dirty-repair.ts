/**
 * The repair of a dirty image (lazy refcounts, not closed cleanly): what
 * qemu runs when it opens one for writing, and what amend runs before it
 * changes anything. The refcounts are rebuilt from the L1/L2 tables (check
 * with repair 'all'), the dirty bit is cleared on disk, and the writable
 * parts are put together again over the new refcounts.
 */
import { corrupt } from '@img/block';
import { checkState } from './check.js';
import { firstDroppedL1Entry } from './check-repair.js';
import type { Qcow2Image } from './core.js';
import type { MappingView } from './mapping-view.js';
import { attachWriter } from './writable.js';

const FORMAT = 'qcow2';

/** Repairs dirty image `core` through `view` (see the module comment); ERR_IMG_CORRUPT if problems are left. */
export async function repairDirtyImage(core: Qcow2Image, view: MappingView): Promise<void> {
  // Rebuilding refcounts must not change what the guest reads: a repair that would clear an L1 entry is left to an
  // explicit check -r all (seed 1001 case 1161: an L1 entry naming the L1 table itself, dropped on a writable open).
  const dropped = firstDroppedL1Entry(core, view);
  if (dropped) {
    throw corrupt(FORMAT, core.file, `the image is dirty and rebuilding its refcounts would drop guest data: ${dropped.why}; img check -r all repairs it, read-only opens still work`, { field: 'L1 entry', offset: dropped.at });
  }
  const repaired = await checkState(core, view, 'all');
  if (repaired.corruptions) {
    throw corrupt(FORMAT, core.file, `the image is dirty and its refcounts could not be repaired (${repaired.corruptions} problems left): ${repaired.messages.slice(0, 3).join('; ')}`, { field: 'incompatible_features', offset: 72 });
  }
  await core.clearDirty();
  // The repair changed refcounts and flags behind the writer's caches.
  core.cache.clear();
  await attachWriter(core);
}
