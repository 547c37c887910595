/**
 * sparseCopy: copy a disk into another through the extent iterator, so
 * that cost grows with allocated data and not with virtual size.
 */
import type { Disk, Extent, ExtentOptions, FreshImageWriter } from './disk.js';
import { giveIoBuffer, takeIoBuffer } from './buffer-pool.js';
import { ImageError, abortError, invalidArg } from './errors.js';
import { chunkExtent, diskExtentBatches, singleExtentBatches } from './extents.js';
import { pacedBatchBytes, pacedChunkSize, ratePace } from './rate-limit.js';
import { RawDisk } from './raw.js';
import type { RunCopyOptions, Storage } from './storage.js';
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
  /**
   * Let storages copy batches of runs themselves (Storage.copyRunsTo: the
   * native loop of local files) where the bytes go unchanged from a source
   * file into a raw destination file. Default true; the result is the same
   * either way.
   */
  batchRuns?: boolean;
  /**
   * Move data at no more than this many bytes per second (qemu-img convert
   * -r), averaged from the start of the copy; holes and skipped zeros cost
   * nothing. Pieces shrink so that none holds more than a tenth of a second
   * of it. Default (or 0): no limit.
   */
  rateLimit?: number;
}

export interface SparseCopyResult extends CopyProgress {
  /** Bytes of the range that were left sparse (zero, hole or zero-detected). */
  bytesSkipped: number;
}

const MiB = 1024 * 1024;
/**
 * A native copy batch (Storage.copyRunsTo) holds up to this many bytes of
 * runs: one pool job, one thread hand-off for its reads, zero scan and
 * writes, where JavaScript pays one for each read and each write. Batches
 * run `concurrency` at a time and the native loop's copy slots let one
 * per CPU copy at once (the others wait on their pool thread), so a batch
 * is the unit of progress reports, not of parallelism. Larger batches
 * mean fewer round trips through JavaScript while the copy saturates the
 * CPUs: B raw->qcow2 (1 GiB in 1 MiB runs, ext4 page cache, 2 vCPUs), the
 * copy inside the command took 0.28-0.32 s with 8 MiB batches and
 * 0.25-0.27 s with 32 MiB (a bare loop of native batches in Node: 0.24-0.26
 * s with 8 MiB, 0.21-0.23 s from 32 MiB up, the C floor of two threads
 * 0.21-0.22 s). Before the copy slots, small batches served a loaded
 * machine better, as a pool thread that copies for tens of milliseconds
 * without sleeping waits longer on the run queue (at a load average of
 * 16-22, B qcow2->raw in one process: 32 MiB batches 2.2-3.3 s, 8 MiB
 * 1.6-3.2 s); with slots, one thread per CPU copies and the rest sleep.
 */
const COPY_BATCH_BYTES = 32 * MiB;
/**
 * A read batch (Storage.readRuns: read and zero-scanned natively, written
 * through the format by JavaScript) holds up to this many bytes; its
 * buffer counts against the buffer budget.
 */
const READ_BATCH_BYTES = 8 * MiB;
/**
 * The end of a native copy goes out in batches of this many bytes: the
 * copy threads each take a batch at a time, and the one that finishes
 * first would otherwise wait while the other copies the rest of a full
 * batch alone (B raw->qcow2 in a perf timeline: 30-35 ms of one thread at
 * the end of a 0.3 s conversion). sparseCopy holds the last full batch
 * back until the next one fills, so that the last one or two are split.
 */
const TAIL_BATCH_BYTES = 4 * MiB;
const BATCH_RUNS = 4096;

/** Runs of one source storage waiting to be copied (or read) as one batch. */
interface RunBatch {
  from: Storage;
  runs: number[];
  bytes: number;
}

/** A batch's runs in batches of at most `limit` bytes (whole runs; a run longer than `limit` is a batch alone). */
function splitBatch(b: RunBatch, limit: number): RunBatch[] {
  const out: RunBatch[] = [];
  let cur: RunBatch | undefined;
  for (let k = 0; k + 2 < b.runs.length; k += 3) {
    const len = b.runs[k + 2]!;
    if (cur && cur.bytes + len > limit) {
      out.push(cur);
      cur = undefined;
    }
    cur ??= { from: b.from, runs: [], bytes: 0 };
    cur.runs.push(b.runs[k]!, b.runs[k + 1]!, len);
    cur.bytes += len;
  }
  if (cur) out.push(cur);
  return out;
}

/** How data runs leave the source: copied file to file, read in batches and written through the format, or one read per chunk. */
type RunMode = 'copy' | 'read' | undefined;

/**
 * The storage a data extent's bytes can be copied from unchanged, when
 * `dst` is a raw file the source's storage can copy runs into: the file of
 * the extent's layer, named by the extent itself (a qcow2 external data
 * file or a compressed cluster has no such host run, and is read through
 * the format).
 */
function runSource(src: Disk, e: Extent, mode: RunMode, to: Storage): Storage | undefined {
  if (e.hostOffset === undefined || e.file === undefined) return undefined;
  let layer: Disk | undefined = src;
  for (let d = e.depth ?? 0; d > 0 && layer; d--) layer = layer.backing;
  const from = layer?.storage;
  if (!from || from.name !== e.file) return undefined;
  return (mode === 'copy' ? from.canCopyRunsTo?.(to) : typeof from.readRuns === 'function') ? from : undefined;
}

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
  const pace = ratePace(options.rateLimit, options.signal);
  const givenChunk = options.chunkSize ?? 4 * MiB;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const budget = options.bufferBudget ?? 64 * MiB;
  const dstIsZero = options.dstIsZero ?? true;
  const offset = options.offset ?? 0;
  const length = options.length ?? src.size - offset;
  const signal = options.signal;
  // An abort names the copy: "copy from a.qcow2 to b.vhd aborted" (the storages' names: the files, for files).
  const aborted = () => abortError(signal, `copy from ${nameOf(src)} to ${nameOf(dst)}`);
  const writeData = options.writeData ?? ((o: number, d: Uint8Array) => dst.write(o, d));
  const alignment = options.alignment ?? 512;
  const writeZeroes = options.writeZeroes ?? ((o: number, n: number) => dst.writeZeroes(o, n));

  if (!Number.isSafeInteger(givenChunk) || givenChunk < 1) throw invalidArg('copy', `invalid chunk size ${givenChunk}`);
  if (!Number.isSafeInteger(alignment) || alignment < 1 || givenChunk % Math.min(alignment, givenChunk) !== 0 || (alignment > 512 && givenChunk % alignment !== 0)) {
    throw invalidArg('copy', `invalid alignment ${alignment} for chunk size ${givenChunk}`);
  }
  // A limited copy moves smaller pieces, so that none is a long burst (see rate-limit.ts).
  const chunkSize = pace ? pacedChunkSize(givenChunk, Math.max(512, alignment), options.rateLimit!) : givenChunk;
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < 0) throw invalidArg('copy', `invalid minimum zero run ${minZeroRun}`);
  if (offset < 0 || length < 0 || offset + length > src.size) {
    throw invalidArg('copy', `range ${offset}+${length} is outside the source (${src.size} bytes)`);
  }
  if (offset + length > dst.size) {
    throw invalidArg('copy', `destination (${dst.size} bytes) is smaller than the range to copy (ends at ${offset + length})`);
  }
  const slots = Math.max(1, Math.min(concurrency, Math.floor(budget / chunkSize)));
  // Raw destination, bytes unchanged, zeros either skipped on a fresh target or all written: storages may copy runs themselves.
  // Otherwise data runs of local files may still be read in batches (Storage.readRuns) and written through the format.
  const batching = (options.batchRuns ?? true) && options.alignment === undefined;
  // A new image whose writer places runs itself (a fresh qcow2): copied file to file as into raw, at the host positions it gives.
  const placer = (dst as Partial<FreshImageWriter>).canPlaceRuns?.() === true ? (dst as FreshImageWriter) : undefined;
  // Over a raw target that may hold data (convert -n), the helper zeroes the zero runs it finds instead of skipping them.
  const zeroTarget = !dstIsZero && minZeroRun > 0 && dst instanceof RawDisk;
  const copyMode = batching && (dst instanceof RawDisk || placer !== undefined) && !dst.readOnly && options.writeData === undefined && options.writeZeroes === undefined && (dstIsZero || minZeroRun === 0 || zeroTarget) && src.storage.canCopyRunsTo?.(dst.storage) === true;
  const mode: RunMode = copyMode ? 'copy' : batching && typeof src.storage.readRuns === 'function' ? 'read' : undefined;
  // The data runs come from extents asked with fileHoles (the walk below): a raw file's are its storage's ranges()
  // answers, and a format splits its data at the holes of its file (FileHoles). The helper need not probe them for
  // holes again (B qcow2->qcow2: 8192 lseeks per GiB of data, 2% of the CPU; on tmpfs each walks the page cache).
  const runOptions: RunCopyOptions = {
    minZeroRun: minZeroRun === 0 ? 0 : Math.max(minZeroRun, alignment),
    granule: Math.max(512, alignment),
    chunkSize,
    probeHoles: false,
    // A raw file keeps its holes; a placing writer says what it allows (see FreshImageWriter.copyPreallocation).
    preallocate: placer ? (placer.copyPreallocation ?? 'never') : 'holes',
    ...(zeroTarget ? { zeroTarget: true } : {}),
  };
  // A read batch's buffer: whole chunks, within the buffer budget.
  const readBatchBytes = Math.max(chunkSize, Math.min(READ_BATCH_BYTES, Math.floor(budget / slots / chunkSize) * chunkSize));
  const batchBuffers: Uint8Array[] = [];

  const progress: SparseCopyResult = { bytesDone: 0, bytesTotal: length, bytesRead: 0, bytesWritten: 0, bytesSkipped: 0 };
  const report = () => options.onProgress?.({ ...progress });

  const free: Uint8Array[] = [];
  const takeBuffer = (): Uint8Array => free.pop() ?? takeIoBuffer(chunkSize);

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
  const launch = (e: Extent, work: (e: Extent) => Promise<void>) => start(e.length, () => work(e));
  const start = (length: number, work: () => Promise<void>) => {
    const p: Promise<void> = work()
      .then(() => {
        progress.bytesDone += length;
        report();
      })
      .catch((err: unknown) => {
        failure ??= err;
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  };

  let batch: RunBatch | undefined;
  const copyBatch = async (b: RunBatch) => {
    const runs = Float64Array.from(b.runs);
    const done = await b.from.copyRunsTo!(dst.storage, runs, { ...runOptions, ...(signal ? { signal } : {}) });
    if (placer && done.bytesSkipped > 0) await placer.settleRuns!(runs);
    progress.bytesRead += done.bytesRead;
    progress.bytesWritten += done.bytesWritten;
    progress.bytesSkipped += done.bytesSkipped;
  };
  /** Reads a batch in one native call, then writes its data runs through the format. */
  const readBatch = async (b: RunBatch) => {
    const buffer = batchBuffers.pop() ?? takeIoBuffer(readBatchBytes);
    try {
      const got = await b.from.readRuns!(Float64Array.from(b.runs), buffer, { ...runOptions, ...(signal ? { signal } : {}) });
      progress.bytesRead += got.bytesRead;
      const jobs: (() => Promise<void>)[] = [];
      const zero = (at: number, n: number) => {
        progress.bytesSkipped += n;
        if (!dstIsZero) jobs.push(() => writeZeroes(at, n));
      };
      let base = 0;
      for (let r = 0; r < got.pieces.length; r++) {
        const guest = b.runs[3 * r + 1]!;
        const len = b.runs[3 * r + 2]!;
        const pieces = got.pieces[r]!;
        let pos = base;
        for (let k = 0; k + 1 < pieces.length; k += 2) {
          const start = pieces[k]!;
          const end = pieces[k + 1]!;
          if (start > pos) zero(guest + pos - base, start - pos);
          const at = guest + start - base;
          jobs.push(async () => {
            await writeData(at, buffer.subarray(start, end));
            progress.bytesWritten += end - start;
          });
          pos = end;
        }
        if (pos < base + len) zero(guest + pos - base, base + len - pos);
        base += len;
      }
      // One write at a time per batch, batches `slots` at a time: as many writes in flight as the
      // JavaScript path has (more, measured, only made a VHD writer work harder). The buffer goes
      // back to the pool only after the last of them, even after a failure.
      for (const job of jobs) {
        if (signal?.aborted) throw aborted();
        await job();
      }
    } finally {
      batchBuffers.push(buffer);
    }
  };
  const launchBatch = async (b: RunBatch) => {
    while (inFlight.size >= slots) await Promise.race(inFlight);
    if (failure) return;
    if (pace) {
      await pace(b.bytes);
      if (signal?.aborted) throw aborted();
    }
    start(b.bytes, () => (mode === 'copy' ? copyBatch(b) : readBatch(b)));
  };
  // Unpaced native copies hold the last full batch back until the next one fills (see TAIL_BATCH_BYTES).
  const holdTail = mode === 'copy' && !pace;
  let held: RunBatch | undefined;
  const flushBatch = async () => {
    const b = batch;
    batch = undefined;
    if (!b) return;
    if (!holdTail) return launchBatch(b);
    const before = held;
    held = b;
    if (before) await launchBatch(before);
  };
  /** At the end of the source: the held batch and the partial one after it, in pieces of TAIL_BATCH_BYTES. */
  const flushTail = async () => {
    const last = [held, batch];
    held = batch = undefined;
    for (const b of last) {
      if (!b) continue;
      for (const piece of holdTail ? splitBatch(b, TAIL_BATCH_BYTES) : [b]) {
        await launchBatch(piece);
        if (failure) return;
      }
    }
  };
  /** Counts an extent that needs no I/O (a hole, or zeros over a destination that reads as zeros) as dealt with. */
  const skip = (e: Extent) => {
    progress.bytesSkipped += e.length;
    progress.bytesDone += e.length;
    report();
  };
  const unpacedBatch = mode === 'copy' ? COPY_BATCH_BYTES : readBatchBytes;
  const batchLimit = pace ? pacedBatchBytes(unpacedBatch, chunkSize, options.rateLimit!) : unpacedBatch;
  /** The storage a data extent's bytes can leave in a native batch; undefined: read through the format. */
  const batchSource = (e: Extent): Storage | undefined => (mode && e.kind === 'data' && e.length <= readBatchBytes ? runSource(src, e, mode, dst.storage) : undefined);
  /** Adds a data extent to the batch being gathered (the caller flushed the one it does not fit in). */
  const addRun = (from: Storage, e: Extent): RunBatch => {
    const b = (batch ??= { from, runs: [], bytes: 0 });
    if (mode === 'copy' && placer) {
      const placed = placer.placeRuns!(e.offset, e.length);
      for (let k = 0; k < placed.length; k += 3) b.runs.push(e.hostOffset! + placed[k]! - e.offset, placed[k + 1]!, placed[k + 2]!);
    } else b.runs.push(e.hostOffset!, e.offset, e.length);
    b.bytes += e.length;
    return b;
  };

  const walk: ExtentOptions = { offset, length, topOnly: options.topOnly ?? false, fileHoles: true, ...(mode ? { hostOffsets: true } : {}) };
  // In arrays as the source finds them (Disk.extentBatches): one await per array, not per extent.
  const lists = options.alignment !== undefined ? singleExtentBatches(alignDataExtents(src.extents(walk), alignment, offset + length)) : diskExtentBatches(src, walk);
  // Per extent, only the I/O awaits: holes are counted on the spot and data runs join a batch.
  try {
    walking: for await (const list of lists) {
      for (const big of list) {
        if (failure) break walking;
        if (signal?.aborted) throw aborted();
        // Extents that only need skipping are handled whole; anything that
        // reads or writes is split into chunks, so progress and abort stay responsive.
        if (big.kind !== 'data' && minZeroRun > 0 && (dstIsZero || (big.kind === 'hole' && options.topOnly))) {
          skip(big);
          continue;
        }
        for (const e of chunkExtent(big, chunkSize)) {
          if (failure) break walking;
          if (signal?.aborted) throw aborted();
          const from = batchSource(e);
          if (from) {
            if (batch && (batch.from !== from || batch.bytes + e.length > batchLimit)) await flushBatch();
            const b = addRun(from, e);
            if (b.bytes >= batchLimit || b.runs.length >= 3 * BATCH_RUNS) await flushBatch();
            continue;
          }
          while (inFlight.size >= slots) await Promise.race(inFlight);
          if (failure) break walking;
          // Data, and zeros written as data (-S 0), move at the limit's pace.
          if (pace && (e.kind === 'data' || minZeroRun === 0)) {
            await pace(e.length);
            if (signal?.aborted) throw aborted();
          }
          launch(e, e.kind === 'data' ? copyData : copyZero);
        }
      }
    }
    if (!failure) await flushTail();
  } finally {
    await Promise.all(inFlight);
    // Nothing uses them now: the next copy in this process takes them instead of allocating its own (see buffer-pool.ts).
    for (const b of [...free, ...batchBuffers]) giveIoBuffer(b);
  }
  // The native copy loop stopped by the signal says only "operation aborted": said as the copy's own abort.
  if (failure) throw ImageError.isInstance(failure) && failure.code === 'ERR_IMG_ABORTED' && signal?.aborted ? aborted() : failure;
  if (signal?.aborted) throw aborted();
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

/** A disk as an abort message names it: its storage's name (the file), else its format. */
function nameOf(disk: Disk): string {
  return (disk.storage as Disk['storage'] | undefined)?.name ?? disk.format;
}
