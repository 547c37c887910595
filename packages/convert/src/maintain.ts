/**
 * commit and rebase for any format whose Disk offers the maintenance
 * capabilities (backing, setBacking, makeEmpty): built on extents and
 * sparseCopy, so they are written once for every format.
 */
import { abortError, backingReadOnlyError, bytesEqual, giveIoBuffer, invalidArg, sparseCopy, takeIoBuffer, unsupported, type CopyProgress, type Disk, type Extent } from '@img/block';

function backingOf(disk: Disk): Disk | undefined {
  return disk.backing ?? (disk as { parent?: Disk }).parent;
}

export interface CommitOptions {
  /** Keep the top image's data after committing (qemu-img commit -d). Default: empty it where the format can. */
  keepTop?: boolean;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
  /** Move no more than this many bytes of data per second (qemu-img commit -r). Default (or 0): no limit. */
  rateLimit?: number;
}

export interface CommitResult {
  bytesCommitted: number;
  /** True if the top layer was emptied after the commit. */
  emptied: boolean;
}

/**
 * Pushes what the top layer holds into its backing image (opened
 * writable: `backingWritable: true`), growing the backing image if it is
 * smaller; then empties the top unless `keepTop`.
 */
export async function commitDisk(top: Disk, options: CommitOptions = {}): Promise<CommitResult> {
  const base = backingOf(top);
  if (!base) throw invalidArg(top.format, `${top.storage.name}: the image has no backing file to commit into`, { file: top.storage.name });
  if (base.readOnly) {
    throw backingReadOnlyError(top.format, top.storage.name, base.storage.name);
  }
  if (base.size < top.size) {
    if (!base.resize) throw unsupported(base.format, base.storage.name, 'the backing image is smaller than the top and cannot grow');
    await base.resize(top.size);
  }
  const copy = await sparseCopy(top, base, {
    topOnly: true,
    dstIsZero: false,
    ...(options.rateLimit !== undefined ? { rateLimit: options.rateLimit } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  await base.flush();
  let emptied = false;
  if (!options.keepTop && top.makeEmpty) {
    await top.makeEmpty();
    await top.flush();
    emptied = true;
  }
  return { bytesCommitted: copy.bytesWritten, emptied };
}

export interface RebaseOptions {
  /** Only rewrite the stored name and format (qemu-img rebase -u). */
  unsafe?: boolean;
  /** Comparison unit in bytes (default: 64 KiB; with `compress`, the image's cluster). */
  unit?: number;
  /**
   * Write the clusters safe mode copies compressed (qemu-img rebase -c,
   * qemu 8.2): whole clusters, through the format's writeCompressed. A
   * format without compressed clusters is refused (ERR_IMG_UNSUPPORTED).
   */
  compress?: boolean;
  signal?: AbortSignal;
  /** Called as safe mode goes through the ranges the image does not hold (bytes of them done, of all). */
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
}

/** How much of the guest a safe rebase lists holes for at a time. */
const REBASE_WINDOW = 1 << 30;

/**
 * Where a safe rebase looks for differences: the data of `disk` in `[start, end)`, or with `above`, every extent
 * its chain decides above that layer (depth < `above`, whatever its kind).
 */
interface UnitSource {
  disk: Disk;
  start?: number;
  end?: number;
  above?: number;
}

/**
 * Where the old chain and the new backing file can read differently. Where the new backing file is a layer of
 * the old chain (`rebase -b base top` dropping the layers between, as qemu-img's prefix chain), only what the
 * layers above it decide, and its own data past the old chain's end: a flattening of a chain over a large base
 * reads the layers it drops, not the whole base twice.
 */
function rebaseSources(old: Disk | undefined, newBacking: Disk | undefined): UnitSource[] {
  if (old && newBacking?.storage.identity !== undefined) {
    let depth = 0;
    for (let layer: Disk | undefined = old; layer; layer = backingOf(layer), depth++) {
      if (layer.storage.identity === newBacking.storage.identity && layer.format === newBacking.format) {
        return [
          { disk: old, above: depth },
          { disk: newBacking, start: old.size },
        ];
      }
    }
  }
  return [old, newBacking].filter((d): d is Disk => d !== undefined).map((disk) => ({ disk }));
}

/**
 * The units (multiples of `unit`) that the ranges of `sources` touch in
 * `[offset, offset+length)`, in order, each once, pulled from their extents
 * as the copy goes: a hole of a terabyte over a backing file full of data
 * has millions of them (a Set of them passed V8's 2^24 entries).
 */
async function* dataUnits(sources: readonly UnitSource[], offset: number, length: number, unit: number): AsyncGenerator<number> {
  const walks: Array<{ it: AsyncIterator<Extent>; head: Extent | undefined; wanted: (e: Extent) => boolean }> = [];
  try {
    for (const { disk, start = 0, end = disk.size, above } of sources) {
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, end, disk.size);
      if (from >= to) continue;
      // Down to the file's holes: a backing file preallocated with metadata holds zeros there, not data to compare.
      const it = disk.extents({ offset: from, length: to - from, fileHoles: true })[Symbol.asyncIterator]();
      walks.push({ it, head: undefined, wanted: above === undefined ? (e) => e.kind === 'data' : (e) => (e.depth ?? 0) < above });
    }
    const pull = async (w: (typeof walks)[number]) => {
      for (;;) {
        const next = await w.it.next();
        if (next.done) return undefined;
        if (w.wanted(next.value)) return next.value;
      }
    };
    for (const w of walks) w.head = await pull(w);
    let last = -1;
    for (;;) {
      // The wanted extent that starts first among the walks.
      let first: (typeof walks)[number] | undefined;
      for (const w of walks) if (w.head && (!first || w.head.offset < first.head!.offset)) first = w;
      if (!first) return;
      const r = first.head!;
      for (let u = Math.max(last + 1, Math.floor(r.offset / unit)); u * unit < r.offset + r.length; u++) {
        last = u;
        yield u;
      }
      first.head = await pull(first);
    }
  } finally {
    for (const w of walks) await w.it.return?.();
  }
}

/**
 * Changes the backing file of `top` to `newBacking` (open, or undefined
 * for none). Safe mode keeps the guest view unchanged: wherever the top
 * falls through and the old and new backing read differently, the old
 * content is copied into the top first. Then the stored name and format
 * are rewritten.
 */
export async function rebaseDisk(top: Disk, newBacking: Disk | undefined, name: string | undefined, format: string | undefined, options: RebaseOptions = {}): Promise<{ bytesCopied: number }> {
  // As qemu-img rebase -c: a format without compressed clusters is refused before anything else.
  const writeCompressed = options.compress ? top.writeCompressed?.bind(top) : undefined;
  if (options.compress && !writeCompressed) throw unsupported(top.format, top.storage.name, 'Compression not supported for this file format', { field: 'compress' });
  if (!top.setBacking) throw unsupported(top.format, top.storage.name, 'this format cannot change its backing file');
  let copied = 0;
  if (!options.unsafe) {
    const cluster = writeCompressed ? (await top.info?.())?.clusterSize : undefined;
    const unit = cluster ?? options.unit ?? 65536;
    const sources = rebaseSources(backingOf(top), newBacking);
    let bytesTotal = 0;
    for await (const e of top.extents({ topOnly: true })) if (e.kind === 'hole') bytesTotal += e.length;
    let bytesDone = 0;
    options.onProgress?.({ bytesDone, bytesTotal });
    // The holes of a window are listed before its writes (which change the top's extents), a window at a time:
    // a list of every hole took ~350 bytes a hole (3.4 GB for the 10 M holes of a 1.2 TiB image whose every other
    // cluster is allocated). A window is whole units, so no unit is in two.
    const window = Math.ceil(REBASE_WINDOW / unit) * unit;
    for (let from = 0; from < top.size; from += window) {
      const holes: Extent[] = [];
      for await (const e of top.extents({ topOnly: true, offset: from, length: Math.min(window, top.size - from) })) if (e.kind === 'hole') holes.push(e);
      copied += await rebaseHoles(top, sources, newBacking, holes, unit, writeCompressed, options, (n) => {
        bytesDone += n;
        options.onProgress?.({ bytesDone, bytesTotal });
      });
    }
    await top.flush();
  }
  await top.setBacking(name, format);
  await top.flush();
  return { bytesCopied: copied };
}

/** The most bytes of consecutive units a safe rebase compares in one piece. */
const REBASE_RUN = 1 << 20;
/** Pieces a safe rebase has in flight: reads of the next while the last are compared and written. */
const REBASE_RUNS_IN_FLIGHT = 4;

/**
 * Safe rebase's copy for some holes of the top, in order: the bytes copied. `done` is told each hole's length as
 * it is done. Consecutive units go as one piece of up to a MiB, read from both sides at once, a few pieces in
 * flight: one unit at a time, each awaited, made a rebase of a GiB of data 5-12x slower than qemu-img's.
 */
async function rebaseHoles(top: Disk, sources: readonly UnitSource[], newBacking: Disk | undefined, holes: readonly Extent[], unit: number, writeCompressed: Disk['writeCompressed'], options: RebaseOptions, done: (bytes: number) => void): Promise<number> {
  if (writeCompressed) return rebaseCompressed(top, sources, newBacking, holes, unit, writeCompressed, options, done);
  let copied = 0;
  let failure: { error: unknown } | undefined;
  const inFlight = new Set<Promise<void>>();
  // Each piece writes after the one before it has written (or found nothing to write, or failed).
  let turn: Promise<void> = Promise.resolve();
  const launch = async (start: number, end: number) => {
    while (inFlight.size >= REBASE_RUNS_IN_FLIGHT) await Promise.race(inFlight);
    if (failure) return;
    const mine = turn;
    let release!: () => void;
    turn = new Promise<void>((resolve) => (release = resolve));
    // Pooled: a fresh pair per MiB, zero-filled, was a third of a rebase's CPU time with the garbage collector's share.
    const size = Math.max(REBASE_RUN, end - start);
    const buffers: [Uint8Array, Uint8Array] = [takeIoBuffer(size), takeIoBuffer(size)];
    const p: Promise<void> = rebaseRun(top, newBacking, start, end, unit, mine, buffers)
      .then(
        (n) => {
          copied += n;
        },
        (error: unknown) => {
          failure ??= { error };
        },
      )
      .finally(() => {
        // Not before the turn before it: a piece with nothing to write must not let the next one write early.
        void mine.then(release);
        for (const b of buffers) giveIoBuffer(b);
        inFlight.delete(p);
      });
    inFlight.add(p);
  };
  try {
    for (const hole of holes) {
      const holeEnd = hole.offset + hole.length;
      let runStart = -1;
      let runEnd = -1;
      // Only where the old chain or the new backing has data can they differ.
      for await (const u of dataUnits(sources, hole.offset, hole.length, unit)) {
        if (options.signal?.aborted) throw abortError(options.signal, 'rebase');
        if (failure) break;
        const start = Math.max(hole.offset, u * unit);
        const end = Math.min(holeEnd, (u + 1) * unit);
        if (runStart >= 0 && start === runEnd && end - runStart <= REBASE_RUN) {
          runEnd = end;
          continue;
        }
        if (runStart >= 0) await launch(runStart, runEnd);
        runStart = start;
        runEnd = end;
      }
      if (runStart >= 0 && !failure) await launch(runStart, runEnd);
      if (failure) break;
      done(hole.length);
    }
  } finally {
    await Promise.all(inFlight);
  }
  if (failure) throw failure.error;
  return copied;
}

/**
 * One piece of a safe rebase: `[start, end)` as the top reads it now, written where the new backing differs (whole
 * units). `buffers` are the piece's two, of at least its length, left as they were by the piece before.
 */
async function rebaseRun(top: Disk, newBacking: Disk | undefined, start: number, end: number, unit: number, turn: Promise<void>, buffers: [Uint8Array, Uint8Array]): Promise<number> {
  const before = buffers[0].subarray(0, end - start);
  const after = buffers[1].subarray(0, end - start);
  const stop = newBacking ? Math.min(end, newBacking.size) : start;
  // Past the new backing file's end it reads as zeros.
  after.fill(0, Math.max(0, stop - start));
  // Both reads settle before a failure is told: the buffers go back to the pool after this piece, never still filling.
  const reads = await Promise.allSettled([top.readInto(start, before), stop > start ? newBacking!.readInto(start, after.subarray(0, stop - start)) : undefined]);
  for (const r of reads) if (r.status === 'rejected') throw r.reason;
  if (bytesEqual(before, after)) return 0;
  // Pieces are read side by side but written in order, so the clusters they allocate follow the guest's order in
  // the file, as qemu-img rebase places them.
  await turn;
  let copied = 0;
  // A run of differing units is one write.
  let from = -1;
  for (let pos = start; pos <= end;) {
    const next = Math.min(end, (Math.floor(pos / unit) + 1) * unit);
    const differs = pos < end && !bytesEqual(before.subarray(pos - start, next - start), after.subarray(pos - start, next - start));
    if (differs) {
      if (from < 0) from = pos;
    } else if (from >= 0) {
      await top.write(from, before.subarray(from - start, pos - start));
      copied += pos - from;
      from = -1;
    }
    if (pos === end) break;
    pos = next;
  }
  return copied;
}

/** Safe rebase with `-c`: whole clusters, compared and written compressed one at a time (a cluster two holes share once). */
async function rebaseCompressed(top: Disk, sources: readonly UnitSource[], newBacking: Disk | undefined, holes: readonly Extent[], unit: number, writeCompressed: NonNullable<Disk['writeCompressed']>, options: RebaseOptions, done: (bytes: number) => void): Promise<number> {
  let copied = 0;
  // A hole smaller than a cluster (a subcluster of an image with extended L2 entries) makes its whole cluster the
  // unit, read through the chain, written once.
  const written = new Set<number>();
  for (const hole of holes) {
    for await (const u of dataUnits(sources, hole.offset, hole.length, unit)) {
      if (options.signal?.aborted) throw abortError(options.signal, 'rebase');
      if (written.has(u)) continue;
      const start = u * unit;
      const end = Math.min(top.size, (u + 1) * unit);
      const before = await top.read(start, end - start);
      const after = new Uint8Array(end - start);
      if (newBacking && start < newBacking.size) await newBacking.readInto(start, after.subarray(0, Math.min(end, newBacking.size) - start));
      if (!bytesEqual(before, after)) {
        await writeCompressed(start, before);
        written.add(u);
        copied += before.length;
      }
    }
    done(hole.length);
  }
  return copied;
}
