/**
 * sparseCopy: copy a disk into another through the extent iterator, so
 * that cost grows with allocated data and not with virtual size.
 */
import type { Disk, Extent } from './disk.js';
import { abortError, invalidArg } from './errors.js';
import { chunkExtents, clipExtents } from './extents.js';
import { findZeroRuns } from './zero.js';

export interface CopyProgress {
  /** Bytes of the range dealt with so far (holes count when skipped). */
  bytesDone: number;
  /** Bytes in the whole range. */
  bytesTotal: number;
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes written to the destination (data, not zeroes). */
  bytesWritten: number;
}

export interface SparseCopyOptions {
  /**
   * Minimum run of zero bytes inside data that is left sparse instead of
   * written (qemu-img -S). Default 4096. 0 disables zero detection and
   * writes everything, zero and hole extents included, as data.
   */
  minZeroRun?: number;
  /** Largest single read/write, in bytes. Default 4 MiB. */
  chunkSize?: number;
  /** Requests in flight. Default 4. */
  concurrency?: number;
  /** Upper bound on buffer memory, in bytes. Default 64 MiB. */
  bufferBudget?: number;
  /**
   * Does the destination already read as zeros everywhere (a freshly
   * created image)? Then zeros are skipped instead of written. Default true.
   */
  dstIsZero?: boolean;
  /** Copy only what the source's top layer holds; its holes are left alone in the destination. */
  topOnly?: boolean;
  /** Copy only this range (default: the whole source). */
  offset?: number;
  length?: number;
  /** Called after each chunk. */
  onProgress?: (progress: CopyProgress) => void;
  signal?: AbortSignal;
  /**
   * Data is read, zero-scanned and written in whole units of this many
   * bytes, aligned to it (default 512). A compressing writer sets it to the
   * cluster size, so every write is whole clusters.
   */
  alignment?: number;
  /**
   * Writes a data run to the destination. Default `dst.write`. Lets a caller
   * compress (qcow2 -c) or filter without a second copy loop.
   */
  writeData?: (offset: number, data: Uint8Array) => Promise<void>;
  /** Makes a range of the destination read as zeros. Default `dst.writeZeroes`. */
  writeZeroes?: (offset: number, length: number) => Promise<void>;
}

export interface SparseCopyResult extends CopyProgress {
  /** Bytes of the range that were left sparse (zero, hole or zero-detected). */
  bytesSkipped: number;
}

const MiB = 1024 * 1024;

/**
 * Copies `src` into `dst` (same or larger size), skipping what reads as
 * zeros. Reads data in large chunks with several requests in flight and a
 * bounded set of reused buffers.
 *
 * @example
 * ```ts
 * const src = await openRaw(await FileStorage.open('in.img'));
 * const dst = await createRaw(await FileStorage.create('out.img'), { size: src.size });
 * await sparseCopy(src, dst);
 * ```
 */
export async function sparseCopy(src: Disk, dst: Disk, options: SparseCopyOptions = {}): Promise<SparseCopyResult> {
  const minZeroRun = options.minZeroRun ?? 4096;
  const chunkSize = options.chunkSize ?? 4 * MiB;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const budget = options.bufferBudget ?? 64 * MiB;
  const dstIsZero = options.dstIsZero ?? true;
  const offset = options.offset ?? 0;
  const length = options.length ?? src.size - offset;
  const signal = options.signal;
  const writeData = options.writeData ?? ((o: number, d: Uint8Array) => dst.write(o, d));
  const alignment = options.alignment ?? 512;
  const writeZeroes = options.writeZeroes ?? ((o: number, n: number) => dst.writeZeroes(o, n));

  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw invalidArg('copy', `invalid chunk size ${chunkSize}`);
  if (!Number.isSafeInteger(alignment) || alignment < 1 || chunkSize % Math.min(alignment, chunkSize) !== 0 || (alignment > 512 && chunkSize % alignment !== 0)) {
    throw invalidArg('copy', `invalid alignment ${alignment} for chunk size ${chunkSize}`);
  }
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < 0) throw invalidArg('copy', `invalid minimum zero run ${minZeroRun}`);
  if (offset < 0 || length < 0 || offset + length > src.size) {
    throw invalidArg('copy', `range ${offset}+${length} is outside the source (${src.size} bytes)`);
  }
  if (offset + length > dst.size) {
    throw invalidArg('copy', `destination (${dst.size} bytes) is smaller than the range to copy (ends at ${offset + length})`);
  }
  const slots = Math.max(1, Math.min(concurrency, Math.floor(budget / chunkSize)));

  const progress: SparseCopyResult = { bytesDone: 0, bytesTotal: length, bytesRead: 0, bytesWritten: 0, bytesSkipped: 0 };
  const report = () => options.onProgress?.({ ...progress });

  const free: Uint8Array[] = [];
  const takeBuffer = (): Uint8Array => free.pop() ?? new Uint8Array(chunkSize);

  let zeroBuffer: Uint8Array | undefined;
  const writeZeroData = async (at: number, n: number) => {
    // -S 0: zeros are written as data so the destination is fully allocated.
    zeroBuffer ??= new Uint8Array(Math.min(chunkSize, 4 * MiB));
    for (let pos = at; pos < at + n; pos += zeroBuffer.length) {
      const len = Math.min(zeroBuffer.length, at + n - pos);
      await writeData(pos, len === zeroBuffer.length ? zeroBuffer : zeroBuffer.subarray(0, len));
    }
    progress.bytesWritten += n;
  };

  const copyData = async (e: Extent) => {
    const buffer = takeBuffer();
    try {
      const view = buffer.subarray(0, e.length);
      await src.readInto(e.offset, view);
      progress.bytesRead += e.length;
      if (minZeroRun === 0) {
        await writeData(e.offset, view);
        progress.bytesWritten += e.length;
        return;
      }
      for (const run of findZeroRuns(view, Math.max(minZeroRun, alignment), Math.max(512, alignment), e.offset)) {
        const n = run.end - run.start;
        if (!run.zero) {
          await writeData(e.offset + run.start, view.subarray(run.start, run.end));
          progress.bytesWritten += n;
        } else {
          if (!dstIsZero) await writeZeroes(e.offset + run.start, n);
          progress.bytesSkipped += n;
        }
      }
    } finally {
      free.push(buffer);
    }
  };

  const copyZero = async (e: Extent) => {
    if (e.kind === 'hole' && options.topOnly) {
      progress.bytesSkipped += e.length;
      return;
    }
    if (minZeroRun === 0) {
      await writeZeroData(e.offset, e.length);
      return;
    }
    if (!dstIsZero) await writeZeroes(e.offset, e.length);
    progress.bytesSkipped += e.length;
  };

  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  const launch = (e: Extent, work: (e: Extent) => Promise<void>) => {
    const p: Promise<void> = work(e)
      .then(() => {
        progress.bytesDone += e.length;
        report();
      })
      .catch((err: unknown) => {
        failure ??= err;
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  };

  const raw = src.extents({ offset, length, topOnly: options.topOnly ?? false });
  const source = options.alignment !== undefined ? alignDataExtents(raw, alignment, offset + length) : raw;
  try {
    for await (const big of source) {
      // Extents that only need skipping are handled whole; anything that
      // reads or writes is split into chunks, so progress and abort stay responsive.
      const skipOnly = big.kind !== 'data' && minZeroRun > 0 && (dstIsZero || (big.kind === 'hole' && options.topOnly));
      const pieces = skipOnly ? clipExtents([big], big.offset, big.length) : chunkExtents([big], chunkSize);
      for await (const e of pieces) {
        if (failure) break;
        if (signal?.aborted) throw abortError(signal);
        while (inFlight.size >= slots) await Promise.race(inFlight);
        if (failure) break;
        launch(e, e.kind === 'data' ? copyData : copyZero);
      }
      if (failure) break;
    }
  } finally {
    await Promise.all(inFlight);
  }
  if (failure) throw failure;
  if (signal?.aborted) throw abortError(signal);
  return progress;
}

/**
 * Widens data extents to whole `alignment` units (never past `end`); the
 * zero and hole extents they swallow become data. Used when the writer
 * needs whole clusters (compression).
 */
export async function* alignDataExtents(extents: AsyncIterable<Extent>, alignment: number, end: number): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  for await (const e of extents) {
    let cur: Extent = { ...e };
    if (pending && pending.kind === 'data' && cur.offset < pending.offset + pending.length) {
      // Part of this extent was swallowed by the previous widened data extent.
      const covered = pending.offset + pending.length - cur.offset;
      if (covered >= cur.length) continue;
      cur = { ...cur, offset: cur.offset + covered, length: cur.length - covered };
    }
    if (cur.kind === 'data') {
      const start = Math.floor(cur.offset / alignment) * alignment;
      const stop = Math.min(end, Math.ceil((cur.offset + cur.length) / alignment) * alignment);
      if (pending && pending.kind !== 'data' && start < pending.offset + pending.length) {
        pending.length = start - pending.offset;
        if (pending.length > 0) yield pending;
        pending = undefined;
      }
      if (pending && pending.kind === 'data' && pending.offset + pending.length >= start) {
        pending.length = stop - pending.offset;
        continue;
      }
      if (pending) yield pending;
      pending = { offset: start, length: stop - start, kind: 'data', ...(cur.depth !== undefined ? { depth: cur.depth } : {}) };
      continue;
    }
    if (pending) yield pending;
    pending = cur;
  }
  if (pending && pending.length > 0) yield pending;
}
