/**
 * A child over a parent whose CID is not the child's parentCID (the
 * parent was written after the child was made, as a commit into it does,
 * or it is another disk). As qemu-img 7.2 does, the image opens (info,
 * map and check work) and its own grains read and write; what needs the
 * parent's bytes (a read that falls through to it, a new grain filled and
 * stacked on it) is refused, unless the open passed allowCidMismatch.
 */
import { parentMismatchError } from '@img/block';
import { FORMAT, type VmdkImage } from './image.js';

const cidHex = (n: number): string => n.toString(16).padStart(8, '0');

/** Throws ERR_IMG_MISMATCH when `core` has a stale parent and the open did not allow it; `use` says what the parent was needed for. */
export function assertParentCurrent(core: VmdkImage, use: string): void {
  const stale = core.staleParent;
  if (!stale || stale.allowed) return;
  throw parentMismatchError(FORMAT, core.storage.name, `"${core.parentName ?? ''}", which ${use},`, { label: 'parentCID', parentLabel: 'CID', expected: cidHex(stale.parentCid), actual: cidHex(stale.cid), allow: 'allowCidMismatch' }, { field: 'parentCID' });
}
