/**
 * Guest I/O over the core: reads, writes, zero writes, discards,
 * compressed writes and flush, in call order, and the whole-disk
 * operations (resize, snapshots, backing changes) that run alone.
 *
 * Call order: operations that pause before they take their places in the
 * table locks' queues (a compressed write compresses first; before the
 * first write, with dirty bitmaps or while a compressed write runs, every
 * operation awaits the header update or the bitmaps) register in the
 * core's `order`, and later operations that overlap them wait for them to
 * finish: overlapping operations take effect in call order, whatever their
 * kind. The others take their places before their first pause, which keeps
 * that order by itself.
 */
import { ERROR_CODES, ImageError, checkDiskRange, invalidArg, readOnlyError, unsupported } from '@img/block';
import type { WriteZeroesOptions } from '@img/block';
import { readRange } from './reader.js';
import type { MappingView } from './mapping-view.js';
import { corruptImageError, type Qcow2Image, type Qcow2WriterParts } from './core.js';
import { refreshOverlapMap } from './image-overlap.js';
import type { Scheduler } from './scheduler.js';
import { writeCompressedData } from './compressed-write.js';
import { writeGuest, writeInPlace, zeroOrDiscardGuest } from './writer.js';

const FORMAT = 'qcow2';

/** Reads guest bytes of `view` at `offset` into `target` (range checked by the caller). */
export async function readQcow2Into(core: Qcow2Image, view: MappingView, offset: number, target: Uint8Array): Promise<void> {
  if (target.length === 0) return;
  const allocator = core.writer?.allocator;
  allocator?.readStarted();
  try {
    await readRange(core, core, view, offset, target);
  } finally {
    allocator?.readEnded();
  }
}

/** The writable parts, once the image is open, writable, not marked corrupt, and the range lies inside the active layer. */
export function writableRange(core: Qcow2Image, offset: number, length: number): Qcow2WriterParts {
  core.assertOpen();
  if (core.readOnly || !core.writer) throw readOnlyError(FORMAT, core.file);
  if (core.markedCorrupt) throw corruptImageError(core.file);
  checkDiskRange(FORMAT, core.active.size, offset, length, core.file);
  return core.writer;
}

/** Runs a write; corrupt metadata found on the way sets the corrupt bit (spec: incompatible bit 1). */
async function guard(core: Qcow2Image, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === ERROR_CODES.CORRUPT) await core.markCorrupt();
    throw e;
  }
}

/** Before a change: the once-per-session header update, then the dirty bitmaps learn the range. */
export async function changing(core: Qcow2Image, offset: number, length: number): Promise<void> {
  await core.beforeFirstWrite();
  await core.bitmaps?.change(offset, length);
}

function ordered(core: Qcow2Image, w: Scheduler, offset: number, length: number, op: () => Promise<void>): Promise<void> {
  return core.order.run(offset, length, op, { register: !w.inOrder || core.bitmaps !== undefined });
}

/**
 * Runs a guest operation after {@link changing}, keeping call order:
 * until `op` has taken its places in the table locks' queues (which it
 * does before it returns), later operations cannot overtake it (see
 * Scheduler.hold).
 */
async function inOrder(core: Qcow2Image, w: Scheduler, offset: number, length: number, op: () => Promise<void>): Promise<void> {
  await guard(core, async () => {
    let running: Promise<void>;
    const ready = w.inOrder && !core.bitmaps;
    w.hold();
    try {
      if (!ready) await changing(core, offset, length);
      running = op();
    } finally {
      w.unhold();
    }
    await running;
  });
}

/** Writes `data` at guest `offset` of the active layer. */
export async function writeQcow2(core: Qcow2Image, offset: number, data: Uint8Array): Promise<void> {
  const w = writableRange(core, offset, data.length).scheduler;
  if (!data.length) return;
  return ordered(core, w, offset, data.length, () => {
    // A write over allocated clusters starts at once (no metadata changes, no bitmaps to update).
    const direct = core.bitmaps ? undefined : writeInPlace(core, offset, data);
    return direct ?? inOrder(core, w, offset, data.length, () => writeGuest(core, offset, data));
  });
}

/** Makes a range read as zeros (`zero`) or fall through to the backing image (`discard`). */
export async function zeroOrDiscardQcow2(core: Qcow2Image, offset: number, length: number, mode: 'zero' | 'discard', mayUnmap: boolean): Promise<void> {
  const w = writableRange(core, offset, length).scheduler;
  if (length) await ordered(core, w, offset, length, () => inOrder(core, w, offset, length, () => zeroOrDiscardGuest(core, offset, length, mode, mayUnmap)));
}

/** writeZeroes of the Disk interface. */
export function writeQcow2Zeroes(core: Qcow2Image, offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
  return zeroOrDiscardQcow2(core, offset, length, 'zero', options.mayUnmap ?? true);
}

/**
 * Writes whole clusters compressed (`offset` cluster-aligned, `data` a
 * multiple of the cluster size, or ending at the end of the disk).
 */
export async function writeQcow2Compressed(core: Qcow2Image, offset: number, data: Uint8Array): Promise<void> {
  const w = writableRange(core, offset, data.length).scheduler;
  // As qemu-img: compressed clusters are not encrypted, so an encrypted image takes none.
  if (core.encryption) throw unsupported(FORMAT, core.file, 'Compression and encryption not supported at the same time: an encrypted image takes no compressed clusters', { field: 'crypt_method' });
  const cs = core.geom.clusterSize;
  if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== core.active.size)) {
    throw invalidArg(FORMAT, `writeCompressed needs whole clusters (${cs} bytes) at a cluster boundary, got ${offset}+${data.length}`, { field: 'offset' });
  }
  if (core.dataFile) throw unsupported(FORMAT, core.file, 'compressed clusters cannot be written to an image with an external data file');
  // Compression comes before the writer sees the clusters: later overlapping operations wait for it
  // (registered in the call order), and the others take the locked path meanwhile.
  await core.order.run(
    offset,
    data.length,
    async () => {
      w.hold();
      try {
        await guard(core, async () => {
          await changing(core, offset, data.length);
          await writeCompressedData(core, offset, data);
        });
      } finally {
        w.unhold();
      }
    },
    { register: true },
  );
}

/** What a whole-disk operation asks for: the dirty bitmaps learn that every byte changes (snapshot apply, make empty). */
export interface WholeDiskOptions {
  changesEverything?: boolean;
  /** The overlap map is built again afterwards (the operation rewrote tables). */
  refreshOverlap?: boolean;
}

/**
 * Runs an operation on the whole active layer alone: after every
 * registered operation called before it, with no guest write in flight
 * and none starting (resize, snapshots, backing changes).
 */
export async function exclusiveQcow2<T>(core: Qcow2Image, op: () => Promise<T>, options: WholeDiskOptions = {}): Promise<T> {
  const w = writableRange(core, 0, 0).scheduler;
  let out: T;
  await core.order.run(0, Infinity, () =>
    guard(core, async () => {
      if (options.changesEverything) await changing(core, 0, core.active.size);
      await w.exclusive(async () => {
        try {
          out = await op();
        } finally {
          if (options.refreshOverlap) await refreshOverlapMap(core, core.active);
        }
      });
      if (options.changesEverything) await changing(core, 0, core.active.size);
    }),
  );
  return out!;
}

/** Makes everything written so far durable, and the image clean again (lazy refcounts). */
export async function flushQcow2(core: Qcow2Image): Promise<void> {
  core.assertOpen();
  const w = core.writer;
  if (core.readOnly || !w) return;
  await w.scheduler.settle();
  await w.allocator.drainReleases();
  await core.bitmaps?.commit();
  const releaseError = w.allocator.takeReleaseError();
  if (releaseError !== undefined) throw releaseError;
  await core.dataFile?.flush();
  await core.storage.flush();
  // Lazy refcounts: refcounts are exact once everything is flushed, so the image is clean again.
  await core.endWriteSession();
}

/** Flushes (unless the image was marked corrupt), then closes the core; the first error is reported. */
export async function closeQcow2(core: Qcow2Image): Promise<void> {
  if (core.closed) return;
  const errors: unknown[] = [];
  // A failed flush still closes the files; its error is the one reported.
  if (!core.readOnly && core.writer && !core.markedCorrupt) await flushQcow2(core).catch((e: unknown) => errors.push(e));
  await core.close(errors);
}
