/**
 * coalesceVhd: merge a differencing disk into its parent, sector by sector.
 *
 * Crash safety (idempotent copy, then unmark):
 *
 * 1. The parent is marked: both footer copies get the cookie "coalesce"
 *    instead of "conectix" (checksum updated), then a flush. No VHD reader
 *    (qemu, Windows, libvhdi, ours without `allowCoalescing`) opens a
 *    marked image on its own, so a half-merged parent can never be read as
 *    if it were either its old or its new content.
 * 2. Every sector the child holds (bitmap bit set) is written into the
 *    parent through the parent's normal write path (allocation order: data
 *    and bitmap, then the BAT entry). The child is never modified, so
 *    running the copy again gives the same result: the copy is idempotent.
 * 3. The parent is flushed and unmarked ("conectix" again), then flushed.
 *
 * While the mark is on, the chain child -> parent still reads correctly
 * (every sector the copy touched is one the child overrides), and opening
 * the child still works (a parent opened for its child may be marked).
 * An interrupted coalesce is finished by calling coalesceVhd on the same
 * child again: it sees the mark and resumes (`resumed: true`). checkVhd
 * reports a marked image. Rolling back is not offered: the old content of
 * overwritten parent sectors is not kept (that would need an undo journal).
 *
 * The parent gets a new timestamp when the merge completes, so any other
 * child of it reports a parent timestamp mismatch: a parent with more than
 * one child should not be coalesced into (their content would change).
 */
import { throwIfAborted, unsupported, type Resolver, type Storage } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { bitRuns } from './bitmap.js';
import { openParent } from './chain.js';
import { COALESCE_COOKIE, FOOTER_COOKIE, toVhdTimestamp } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { loadVhdImage } from './open.js';
import { FORMAT } from './state.js';
import { writeVhd } from './write.js';
import { writeFooters } from './write-metadata.js';

export interface VhdCoalesceOptions {
  /** Opens the parent (writable). */
  resolver: Resolver;
  /** Directories to look for the parent in (see openVhdChain). */
  searchPath?: readonly string[];
  /** Stops the copy before the next block (ERR_IMG_ABORTED); running coalesceVhd again finishes it. */
  signal?: AbortSignal;
  /** Called after each block with the number of blocks done and in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface VhdCoalesceResult {
  /** The parent's storage name. */
  parent: string;
  /** Child blocks whose sectors were copied. */
  blocks: number;
  /** Sectors copied. */
  sectors: number;
  /** True if an interrupted coalesce was finished. */
  resumed: boolean;
}

/**
 * Merges the differencing disk in `child` into its parent. Afterwards the
 * parent alone reads as the child did; the child is left unchanged (and
 * redundant: delete it or keep it as an empty overlay).
 *
 * @example
 * ```ts
 * await coalesceVhd(await FileStorage.open('child.vhd'), { resolver: fileResolver });
 * ```
 */
export async function coalesceVhd(child: Storage, options: VhdCoalesceOptions): Promise<VhdCoalesceResult> {
  // The child's core alone (it is only read, sector by sector, from its own file); its parent's
  // core opened writable through the chain's lookup, with the parent's own parents below it.
  const childCore = await loadVhdImage(child, { noBacking: true });
  let parentCore: VhdImage | undefined;
  try {
    const cs = childCore.state;
    if (cs.type !== 'differencing') throw unsupported(FORMAT, child.name, `only a differencing disk can be coalesced (this one is ${cs.type})`);
    parentCore = await openParent(cs, { resolver: options.resolver, writableParent: true, ...(options.searchPath ? { searchPath: options.searchPath } : {}) }, loadVhdImage);
    const ps = parentCore.state;
    if (ps.size !== cs.size) {
      throw unsupported(FORMAT, child.name, `child (${cs.size} bytes) and parent (${ps.size} bytes) differ in size; resize the parent first`);
    }
    const parent = parentCore;
    const resumed = ps.coalescing;
    // 1. Mark.
    if (!resumed) {
      ps.footer = { ...ps.footer, cookie: COALESCE_COOKIE };
      ps.coalescing = true;
      await parent.allocator.run(() => writeFooters(ps));
      await ps.storage.flush();
    }
    // 2. Copy every sector the child holds.
    const blocks = [...cs.bat.keys()].filter((i) => cs.bat[i] !== BAT_UNUSED && i * cs.blockSize < cs.size);
    let done = 0;
    let sectors = 0;
    for (const block of blocks) {
      throwIfAborted(options.signal);
      const bitmap = await childCore.bitmap(block);
      const base = block * cs.blockSize;
      const dataStart = cs.bat[block]! * VHD_SECTOR + cs.bitmapBytes;
      const count = Math.min(cs.sectorsPerBlock, Math.ceil((cs.size - base) / VHD_SECTOR));
      for (const run of bitRuns(bitmap, 0, count)) {
        if (!run.set) continue;
        const from = run.start * VHD_SECTOR;
        const length = Math.min(run.count * VHD_SECTOR, cs.size - base - from);
        const data = new Uint8Array(length);
        const n = await cs.storage.readInto(dataStart + from, data);
        if (n < length) data.fill(0, n);
        await writeVhd(parent, base + from, data);
        sectors += run.count;
      }
      done++;
      options.onProgress?.(done, blocks.length);
    }
    // 3. Flush, unmark, flush.
    await ps.storage.flush();
    // The parent changed: a new timestamp lets its other children notice (they record the old one).
    ps.footer = { ...ps.footer, cookie: FOOTER_COOKIE, timestamp: toVhdTimestamp(new Date()) };
    await parent.allocator.run(() => writeFooters(ps));
    await ps.storage.flush();
    ps.coalescing = false;
    return { parent: ps.storage.name, blocks: done, sectors, resumed };
  } finally {
    try {
      await parentCore?.close();
    } finally {
      await childCore.close();
    }
  }
}
