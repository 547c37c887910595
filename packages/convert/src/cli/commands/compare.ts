/**
 * img compare: whether two images read the same, as qemu-img compare.
 */
import { parseArgs } from '../parse-args.js';
import { bytesEqual, ImageError, isAllZero, type Disk, type Extent } from '@img/block';
import { checkCacheModes, ExitCode, UsageError } from '../common.js';
import { qemuProgressPrinter } from '../progress.js';
import { firstStatusMismatch } from '../compare-status.js';
import { diskWindow } from '../../disk-window.js';
import { type Handler, commonNoOutput, shareOption, openForCommand, quietOption, quietIo } from './shared.js';

/** img compare. */
export const compare: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'compare', args: argv, options: { ...commonNoOutput, ...quietOption, ...shareOption, F: { type: 'string' }, strict: { type: 'boolean', short: 's' }, p: { type: 'boolean' }, T: { type: 'string' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      "Usage: img compare [-q] [-f fmt] [-F fmt] [-U] [-T src_cache] [-p] [--strict] <a> <b>\n\n-T: qemu's cache mode, checked as qemu-img checks it; img picks its own caching.\n\nExit status: 0 identical, 1 different, 2 an image did not open, 3 block status failed, 4 a read failed.\n\nExample:\n  img compare disk.img disk.qcow2\n",
    );
    return 0;
  }
  try {
    checkCacheModes(undefined, values.T);
  } catch (e) {
    // As qemu-img compare: a bad cache mode is a failed comparison (status 2), said in qemu-img's words.
    throw new ExitCode(2, (e as Error).message);
  }
  try {
    if (positionals.length !== 2) throw new UsageError('expected <a> <b>');
    // Both open at once (an encrypted image's key derivation takes its seconds on a thread of its own); a failure
    // is the first image's where both fail, as qemu-img, which opens them in turn, reports it. As qemu-img compare, an
    // encrypted image given without its passphrase does not open (status 2; see refuseWithoutSecret), where img could
    // compare its unallocated ranges and then fail at the first encrypted one (4).
    const [openedA, openedB] = await Promise.allSettled([openForCommand(positionals[0]!, values, true, io), openForCommand(positionals[1]!, { ...values, f: values.F }, true, io)]);
    if (openedA.status === 'rejected' || openedB.status === 'rejected') {
      for (const o of [openedA, openedB]) if (o.status === 'fulfilled') await o.value.close();
      throw openedA.status === 'rejected' ? openedA.reason : (openedB as PromiseRejectedResult).reason;
    }
    const a = openedA.value;
    const b = openedB.value;
    try {
      // As qemu-img: images of different sizes are compared anyway (the longer one must read as zeros past the
      // shorter one's end), after a warning on stdout; --strict refuses them (firstDifference says so).
      if (a.size !== b.size && !values.strict) io.stdout('Warning: Image size mismatch!\n');
      // --strict, as qemu-img: the block status too, range by range; what comes first, a status or a content
      // difference, is said (contents are compared only up to the first status mismatch).
      const statusAt = values.strict && a.size === b.size ? await stage(3, firstStatusMismatch(a, b)) : undefined;
      const diff = await firstDifference(a, b, values.strict ?? false, values.p && !values.quiet ? qemuBytesProgress(io) : undefined, statusAt);
      if (diff === undefined && statusAt === undefined) {
        io.stdout('Images are identical.\n');
        return 0;
      }
      io.stdout((diff?.message ?? `Strict mode: Offset ${statusAt} block status mismatch!`) + '\n');
      return 1;
    } finally {
      await a.close();
      await b.close();
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    // As qemu-img compare: 2 an image did not open, 3 its block status failed, 4 its data could not be read.
    const status = e instanceof CompareStageError ? e.status : 2;
    const cause = e instanceof CompareStageError ? e.cause : e;
    if (ImageError.isInstance(cause) && cause.code === 'ERR_IMG_ABORTED') throw cause;
    const text = ImageError.isInstance(cause) ? `${cause.code}: ${cause.message}` : (cause as Error).message;
    throw new ExitCode(status, text);
  }
};

/** A failure after both images opened, with qemu-img compare's status for it: 3 block status, 4 reading data. */
class CompareStageError extends Error {
  constructor(
    readonly status: 3 | 4,
    override readonly cause: unknown,
  ) {
    super((cause as Error)?.message ?? String(cause));
  }
}

/** Awaits `work`, a block status (3) or read (4) step of the comparison, its failure tagged with that status. */
async function stage<T>(status: 3 | 4, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (e) {
    throw e instanceof CompareStageError ? e : new CompareStageError(status, e);
  }
}

/**
 * A disk's zero-or-hole ranges for skipping reads that cannot differ, pulled
 * from its extents as the comparison moves forward. A list of them cost ~50
 * bytes a range: gigabytes, or a failed comparison, for an image of tens of
 * millions of extents.
 */
class SparseWalk {
  readonly #extents: AsyncIterator<Extent>;
  /** The last extent pulled: `[start, end)`, zero-or-hole or data. */
  #start = 0;
  #end = 0;
  #zero = false;
  #done = false;

  constructor(disk: Disk) {
    // Down to the file's holes, as qemu-img compare asks its block status: a cluster allocated over a hole of the
    // file (preallocation=metadata, a sparse copy) reads as zeros without reading it.
    this.#extents = disk.extents({ fileHoles: true })[Symbol.asyncIterator]();
  }

  /** What {@link zeroUntil} answers for `pos` from the extents pulled so far, or undefined where it must pull more. */
  known(pos: number): number | undefined {
    if (pos < this.#end) return this.#zero && this.#start <= pos ? this.#end : pos;
    return this.#done ? pos : undefined;
  }

  /** Where the zero-or-hole range at `pos` ends, or `pos` where there is data; `pos` never goes back. */
  async zeroUntil(pos: number): Promise<number> {
    while (!this.#done && this.#end <= pos) {
      const next = await this.#extents.next();
      if (next.done) this.#done = true;
      else {
        this.#start = next.value.offset;
        this.#end = next.value.offset + next.value.length;
        this.#zero = next.value.kind !== 'data';
      }
    }
    return this.known(pos)!;
  }

  /** Ends the walk early (a difference found, a read failed). */
  async close(): Promise<void> {
    if (!this.#done) await this.#extents.return?.();
  }
}

/** Chunks a comparison reads ahead of the one it compares. */
const COMPARE_AHEAD = 4;

/**
 * Where two disks first differ, or undefined if they read the same:
 * `offset` is the first differing byte; the message names the start of its
 * 512-byte sector, as qemu-img compare does (it compares sector by sector).
 * With `end`, only the bytes before it are compared.
 */
export async function firstDifference(a: Disk, b: Disk, strict: boolean, onProgress?: (done: number, total: number) => void, end?: number): Promise<{ offset: number; message: string } | undefined> {
  if (strict && a.size !== b.size) return { offset: Math.min(a.size, b.size), message: `Strict mode: Image size mismatch!` };
  if (end !== undefined) return firstDifference(diskWindow(a, 0, end), diskWindow(b, 0, end), false, onProgress);
  const common = Math.min(a.size, b.size);
  const longerSize = Math.max(a.size, b.size);
  const chunk = 1024 * 1024;
  const za = new SparseWalk(a);
  const zb = new SparseWalk(b);
  // Reads run ahead of the comparison, a few chunks deep: one chunk at a time, each read awaited before the next
  // was asked for, left the disks idle while the chunk before was compared.
  const queue: Array<{ pos: number; n: number; bufs: [Uint8Array, Uint8Array]; reads: Promise<[PromiseSettledResult<void>, PromiseSettledResult<void>]> } | { error: unknown }> = [];
  const free: Array<[Uint8Array, Uint8Array]> = [];
  for (let k = 0; k < COMPARE_AHEAD; k++) free.push([new Uint8Array(chunk), new Uint8Array(chunk)]);
  let next = 0;
  /** Asks for the reads of the chunks ahead that have buffers; a failed block status waits in the queue for its turn. */
  const fill = async () => {
    while (free.length > 0 && next < common && !queue.some((q) => 'error' in q)) {
      let endA = za.known(next);
      let endB = zb.known(next);
      // Ahead of the comparison only as far as the extents pulled so far tell: a difference in the first chunk must
      // not wait for a walk over millions of extents after it.
      if ((endA === undefined || endB === undefined) && queue.length > 0) return;
      let skip: number;
      try {
        endA ??= await za.zeroUntil(next);
        endB ??= await zb.zeroUntil(next);
        skip = Math.min(endA, endB, common);
      } catch (error) {
        queue.push({ error });
        return;
      }
      if (skip > next) {
        next = skip;
        continue;
      }
      const n = Math.min(chunk, common - next);
      const bufs = free.pop()!;
      const viewA = bufs[0].subarray(0, n);
      const viewB = bufs[1].subarray(0, n);
      queue.push({ pos: next, n, bufs, reads: Promise.allSettled([a.readInto(next, viewA), b.readInto(next, viewB)]) });
      next += n;
    }
  };
  try {
    for (;;) {
      await fill();
      const head = queue.shift();
      if (!head) break;
      if ('error' in head) throw new CompareStageError(3, head.error);
      // Where both sides fail, the first image's failure is the one told (as reading them in turn).
      const [readA, readB] = await head.reads;
      if (readA.status === 'rejected') throw new CompareStageError(4, readA.reason);
      if (readB.status === 'rejected') throw new CompareStageError(4, readB.reason);
      const viewA = head.bufs[0].subarray(0, head.n);
      const viewB = head.bufs[1].subarray(0, head.n);
      if (!bytesEqual(viewA, viewB)) {
        let i = 0;
        while (viewA[i] === viewB[i]) i++;
        const at = head.pos + i;
        return { offset: at, message: mismatch(at) };
      }
      free.push(head.bufs);
      const done = head.pos + head.n;
      if (done < longerSize) onProgress?.(done, longerSize);
    }
  } finally {
    // Reads still running when a difference or a failure ends the walk are let finish (they fill buffers no one reads).
    await Promise.all(queue.flatMap((q) => ('reads' in q ? [q.reads] : [])));
    await za.close();
    await zb.close();
  }
  const bufA = free[0]?.[0] ?? new Uint8Array(chunk);
  // The longer image must read as zeros past the shorter one's end: its data extents there, read as they come.
  const longer = a.size > b.size ? a : b;
  const tail = longer.extents({ offset: common, length: longer.size - common, fileHoles: true })[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await stage(3, tail.next());
      if (next.done) break;
      const e = next.value;
      if (e.kind !== 'data') continue;
      for (let p = e.offset; p < e.offset + e.length; p += chunk) {
        const n = Math.min(chunk, e.offset + e.length - p);
        const view = bufA.subarray(0, n);
        await stage(4, longer.readInto(p, view));
        if (isAllZero(view)) continue;
        const i = view.findIndex((x) => x !== 0);
        return { offset: p + i, message: mismatch(p + i) };
      }
    }
  } finally {
    await tail.return?.();
  }
  onProgress?.(longerSize, longerSize);
  return undefined;
}

/** qemu-img compare's line for a difference at byte `at`: it names the sector's first byte. */
function mismatch(at: number): string {
  return `Content mismatch at offset ${at - (at % 512)}!`;
}

/** qemu-img compare -p's percentage lines (a step of 2 %), fed as (bytes done, bytes in all). */
function qemuBytesProgress(io: { stdout: (text: string) => void }): (done: number, total: number) => void {
  const print = qemuProgressPrinter(io, 2);
  return (bytesDone, bytesTotal) => print({ bytesDone, bytesTotal });
}
