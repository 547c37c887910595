/**
 * Resizing the active layer (qemu-img resize): the L1 table grows (moving
 * to new clusters) or the clusters and L2 tables past the new end go.
 */
import { abortError, invalidArg, unsupported, type ResizeOptions } from '@img/block';
import { MAX_L1_TABLE_BYTES } from './constants.js';
import { resizeWithBitmaps } from './bitmap-resize.js';
import type { MappingView } from './mapping-view.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { exclusiveQcow2, flushQcow2, writableRange, writeQcow2 } from './io.js';
import { qcow2Extents } from './extents.js';
import { zeroOrDiscardExclusive } from './writer.js';
import { preallocateGrow } from './resize-prealloc.js';

const FORMAT = 'qcow2';

/** How much of the added space one preallocating write covers (`metadata`). */
const PREALLOC_CHUNK = 1 << 20;

/**
 * Changes the virtual size of the active layer: growing always works; shrinking needs `{ shrink: true }` and
 * drops the data past the new end. `preallocation` (growing only) allocates clusters for the added space, as
 * qemu-img resize leaves them: `falloc` and `full` as data clusters of zeros laid out as qemu's preallocating
 * truncate lays them out (resize-prealloc.ts: `falloc` has the file system allocate them, `full` writes their
 * zeros), `metadata` as clusters whose bytes are holes in the file (img writes the zeros, then punches them out
 * again where the storage can; qemu writes none).
 */
export async function resizeQcow2(core: Qcow2Image, newSize: number, options: ResizeOptions = {}): Promise<void> {
  writableRange(core, 0, 0);
  const old = core.active.size;
  const prealloc = options.preallocation ?? 'off';
  checkResize(core, old, newSize, options);
  let rewritten = false;
  try {
    // Writes in flight finish first and new ones wait: the L1 table may move. Clusters preallocated with falloc
    // or full are mapped before any write can reach the added range.
    await exclusiveQcow2(
      core,
      async () => {
        rewritten = await resizeWithBitmaps(core, core.active, newSize, () => resizeLayer(core, core.active, newSize));
        if (newSize > old && (prealloc === 'falloc' || prealloc === 'full')) await preallocateGrow(core, old, newSize, prealloc, options.signal);
      },
      { refreshOverlap: true },
    );
    if (prealloc === 'metadata' && newSize > old) await preallocateMetadata(core, old, newSize, options);
  } finally {
    // Resized bitmaps are kept up to date again once the preallocation is in: it changes no guest byte, so it sets no bit (as qemu's).
    if (rewritten) await core.reloadBitmapTracker();
  }
}

/** Allocates the clusters of the grown part [old, newSize) as `metadata` leaves them: zeros written, then punched. */
async function preallocateMetadata(core: Qcow2Image, old: number, newSize: number, options: ResizeOptions): Promise<void> {
  const zeros = new Uint8Array(Math.max(PREALLOC_CHUNK, core.geom.clusterSize));
  for (let pos = old; pos < newSize;) {
    if (options.signal?.aborted) throw abortError(options.signal, 'resize');
    // Pieces end on chunk boundaries, so that every write after the first covers whole clusters.
    const end = Math.min(newSize, (Math.floor(pos / zeros.length) + 1) * zeros.length);
    await writeQcow2(core, pos, zeros.subarray(0, end - pos));
    pos = end;
  }
  await punchAdded(core, old, newSize);
}

/**
 * `metadata` keeps the clusters and gives their bytes back to the file system (holes read as zeros), as qemu
 * leaves them: allocated clusters over holes. Where the storage cannot punch holes they keep the zeros written.
 */
async function punchAdded(core: Qcow2Image, old: number, newSize: number): Promise<void> {
  const storage = core.storage;
  if (!storage.punchHole || core.dataFile) return;
  // The zeros must be on the file before their place is punched, or a late write would fill the hole again.
  await flushQcow2(core);
  for await (const e of qcow2Extents(core, core.active, { offset: old, length: newSize - old, hostOffsets: true })) {
    if (e.kind === 'data' && e.hostOffset !== undefined) await storage.punchHole(e.hostOffset, e.length);
  }
}

/** Refuses sizes that are not multiples of 512, need an L1 table past qemu's bound, shrink without being asked to, or preallocate while shrinking. */
function checkResize(s: Qcow2Image, old: number, newSize: number, options: ResizeOptions): void {
  if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % 512 !== 0) {
    throw invalidArg(FORMAT, `invalid size ${newSize} (a non-negative multiple of 512)`, { field: 'size' });
  }
  if (Math.ceil(newSize / s.geom.l2Coverage) * 8 > MAX_L1_TABLE_BYTES) {
    throw invalidArg(FORMAT, `size ${newSize} needs an L1 table over qemu's 32 MiB bound with ${s.geom.clusterSize}-byte clusters`, { field: 'size' });
  }
  const prealloc = options.preallocation ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) throw invalidArg(FORMAT, `invalid preallocation "${prealloc}" (off, metadata, falloc or full)`, { field: 'preallocation' });
  if (newSize < old && !options.shrink) {
    throw invalidArg(FORMAT, `shrinking from ${old} to ${newSize} bytes loses data; pass { shrink: true } to allow it`, { field: 'size' });
  }
  if (newSize < old && prealloc !== 'off') throw invalidArg(FORMAT, 'preallocation is for growing only', { field: 'preallocation' });
  // Preallocated clusters hold zeros (or nothing) in the file, which an encrypted image would read as their decryption.
  if (s.encryption && prealloc !== 'off') throw unsupported(FORMAT, s.file, 'preallocation on an encrypted image is not supported (preallocated clusters would read as the decryption of zeros)', { field: 'preallocation' });
  // As qemu: a version 2 snapshot table need not record each snapshot's size, so every snapshot is taken to have the image's.
  if (s.header.version < 3 && s.snapshots.length > 0) {
    throw unsupported(FORMAT, s.file, "can't resize a version 2 image which has internal snapshots (as qemu: they may not record their own size); upgrade it with amend -o compat=1.1 first", { field: 'size' });
  }
}

/** Changes the size of the active layer `view` (its persistent bitmaps are resized around it); the caller holds the writer exclusively. */
async function resizeLayer(s: Qcow2Image, view: MappingView, newSize: number): Promise<void> {
  const { map } = s.writer!;
  const old = view.size;
  if (newSize < old) {
    // The new size reaches the disk before anything past it is freed: a crash in between leaves the
    // new size with clusters past it still referenced (unreachable, at worst leaked when dropped),
    // never the old size with part of its tail gone.
    s.setHeader({ size: newSize });
    await writeHeader(s);
    await s.storage.flush();
    const cs = s.geom.clusterSize;
    const tailEnd = Math.min(old, Math.ceil(newSize / cs) * cs);
    // Zero the tail of the last cluster so that growing again shows zeros there, then drop the rest.
    if (tailEnd > newSize) await zeroOrDiscardExclusive(s, newSize, tailEnd - newSize, 'zero', true);
    if (old > tailEnd) await zeroOrDiscardExclusive(s, tailEnd, old - tailEnd, 'discard', true);
    await map.dropTablesFrom(Math.ceil(newSize / s.geom.l2Coverage));
  } else {
    await map.growL1(Math.ceil(newSize / s.geom.l2Coverage));
  }
  s.setSize(newSize);
  await writeHeader(s);
  await s.storage.flush();
  // The new area reads as zeros even where a longer backing file has data (as qemu does).
  const backingEnd = Math.min(newSize, s.backing?.size ?? 0);
  if (backingEnd > old) await zeroOrDiscardExclusive(s, old, backingEnd - old, 'zero', true);
}
