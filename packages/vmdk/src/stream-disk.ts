/**
 * StreamVmdkDisk: a streamOptimized VMDK whose bytes can only be read
 * front to back (a gzip-compressed OVA member, ova-gzip.ts), as a
 * read-only Disk. Nothing is inflated into memory or spooled to disk;
 * instead each question is a pass over the stream:
 *
 * - `extents()` walks the markers (stream-walk.ts) without inflating a
 *   grain: grain markers are data, the rest holes, as a file's grain
 *   tables would say. A pass over the whole disk ends at the end of the
 *   stream, so it also checks what only the end can tell (a gzip member's
 *   CRC, a truncated stream). A short answer (at most 65536 runs) is kept
 *   for the next call.
 * - reads follow one pass of the grains in order (read-stream.ts),
 *   handing out what lies in the range and dropping what lies before it;
 *   a read before where that pass has got to starts a new pass from the
 *   start of the stream (correct, but it costs a pass: copies read in
 *   order and need none).
 *
 * Grains must come in guest order, as VMware's exporters, qemu-img and
 * this package's stream writers lay them out; a stream whose grains go
 * back (createVmdk's, which may append a partly written grain after later
 * ones) is ERR_IMG_UNSUPPORTED when it is met, since answering a read
 * would then need every pass to the end. readVmdkStream reads such a
 * stream from a pipe in one pass.
 */
import { ByteStreamReader, checkDiskData, checkDiskRange, corrupt, diskClosedError, extentRange, readOnlyError, unsafe, unsupported, type Disk, type Extent, type ExtentOptions, type ImageInfo, type Storage } from '@img/block';
import { CID_NO_PARENT, decodeDescriptorBytes, descriptorField, MAX_DESCRIPTOR_BYTES, parseCid, parseDescriptor } from './descriptor.js';
import { FORMAT } from './image.js';
import { decodeVmdkStream } from './read-stream.js';
import { SECTOR, type SparseHeader } from './sparse-header.js';
import { StreamWalk, parseStreamHeader } from './stream-walk.js';

/** The bytes of a streamOptimized VMDK, from the first, as often as asked. */
export interface StreamVmdkSource {
  /** Names the image in errors and info. */
  readonly name: string;
  /** Where the bytes come from (the disk's `storage`; closed with the disk). */
  readonly storage: Storage;
  /** A new pass over the VMDK's bytes from its first. */
  bytes(): AsyncIterable<Uint8Array>;
  /** Why the grains must come in guest order, for the error when they do not (appended to it). */
  readonly orderAdvice?: string;
}

/** Most data runs of an extents() answer kept for the next call. */
const MAX_CACHED_RUNS = 1 << 16;
/** How far into the stream an embedded descriptor is looked for (it lies before the first grain). */
const MAX_DESCRIPTOR_END = 16 << 20;

/** A piece of guest data from a pass. */
interface Piece {
  offset: number;
  data: Uint8Array;
}

/** A streamOptimized VMDK read front to back, read-only. Use {@link openStreamVmdk}. */
export class StreamVmdkDisk implements Disk {
  readonly format = FORMAT;
  readonly readOnly = true;
  readonly size: number;
  /** The sparse extent header at the start of the stream. */
  readonly header: SparseHeader;
  /** The embedded descriptor's createType, CID and parentCID. */
  readonly createType: string;
  readonly cid: number;
  readonly parentCid: number;
  readonly #source: StreamVmdkSource;
  /** The pass reads follow. */
  #pieces: AsyncIterator<Piece> | undefined;
  /** The first piece of that pass not wholly handed out yet. */
  #piece: Piece | undefined;
  /** Everything before this guest offset has gone by in the current pass. */
  #floor = 0;
  /** Where the last piece of the current pass ended (grains must not go back). */
  #lastEnd = 0;
  #passes = 0;
  #queue: Promise<unknown> = Promise.resolve();
  #runs: Float64Array | undefined;
  #closed = false;

  /** @internal Use openStreamVmdk. */
  constructor(source: StreamVmdkSource, header: SparseHeader, descriptor: { createType: string; cid: number; parentCid: number }) {
    this.#source = source;
    this.header = header;
    this.size = header.capacity * SECTOR;
    this.createType = descriptor.createType;
    this.cid = descriptor.cid;
    this.parentCid = descriptor.parentCid;
  }

  /** The storage the stream's bytes come from. */
  get storage(): Storage {
    return this.#source.storage;
  }

  /** Passes over the stream that reads have started (1 for reads in order; each read that went back adds one). */
  get readPasses(): number {
    return this.#passes;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#checkOpen();
    checkDiskRange(FORMAT, this.size, offset, length, this.#source.name);
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  /** Reads guest bytes, one read after another in call order. */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    this.#checkOpen();
    checkDiskData(FORMAT, target, 'target', this.#source.name);
    checkDiskRange(FORMAT, this.size, offset, target.length, this.#source.name);
    const run = this.#queue.then(() => this.#readInto(offset, target));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #readInto(offset: number, target: Uint8Array): Promise<void> {
    if (!this.#pieces || offset < this.#floor) await this.#startPass();
    try {
      target.fill(0);
      const end = offset + target.length;
      for (;;) {
        const p = this.#piece ?? (await this.#next());
        // The stream has no grain after this: zeros. (A read that ends the disk always gets here, so it has read the
        // stream to its end and what only the end can tell, a gzip member's CRC, a truncation, has been checked.)
        if (!p) return;
        const pEnd = p.offset + p.data.length;
        if (p.offset >= end) {
          this.#piece = p;
          return;
        }
        const from = Math.max(offset, p.offset);
        const to = Math.min(end, pEnd);
        if (to > from) target.set(p.data.subarray(from - p.offset, to - p.offset), from - offset);
        if (pEnd > end) {
          this.#piece = p;
          return;
        }
        this.#piece = undefined;
        this.#floor = pEnd;
      }
    } catch (e) {
      // The pass is in no state to go on from: the next read starts another.
      await this.#endPass();
      throw e;
    }
  }

  /** The pass's next piece (undefined at its end); a piece that goes back is ERR_IMG_UNSUPPORTED. */
  async #next(): Promise<Piece | undefined> {
    const r = await this.#pieces!.next();
    if (r.done) return undefined;
    const p = r.value;
    if (p.offset < this.#lastEnd) throw this.#outOfOrder(p.offset);
    this.#lastEnd = p.offset + p.data.length;
    return p;
  }

  async #startPass(): Promise<void> {
    await this.#endPass();
    const source = await decodeVmdkStream(this.#source.bytes(), this.#source.name);
    if (source.size !== this.size) {
      await source.pieces[Symbol.asyncIterator]().return?.();
      throw corrupt(FORMAT, this.#source.name, `the stream's header changed between two reads (${source.size} bytes, was ${this.size})`, { field: 'capacity', expected: this.size, actual: source.size });
    }
    this.#pieces = source.pieces[Symbol.asyncIterator]();
    this.#passes++;
  }

  async #endPass(): Promise<void> {
    const pieces = this.#pieces;
    this.#pieces = undefined;
    this.#piece = undefined;
    this.#floor = 0;
    this.#lastEnd = 0;
    await pieces?.return?.().catch(() => undefined);
  }

  #outOfOrder(offset: number): Error {
    return unsupported(FORMAT, this.#source.name, `the grain for guest offset ${offset} comes after grains that lie beyond it; a stream read front to back needs its grains in guest order${this.#source.orderAdvice ? ` (${this.#source.orderAdvice})` : ''}`, {
      field: 'grain marker lba',
      actual: offset,
    });
  }

  /** Data runs of the disk in guest order, [offset, length] pairs, from one pass over the markers (no grain inflated). */
  async *#scan(stopAt: number): AsyncGenerator<[number, number]> {
    const name = this.#source.name;
    const r = new ByteStreamReader(this.#source.bytes(), FORMAT, name);
    const keep: number[] | undefined = this.#runs ? undefined : [];
    let complete = false;
    try {
      const walk = await StreamWalk.open(r, name);
      let runStart = -1;
      let runEnd = 0;
      for (;;) {
        const g = await walk.next();
        if (!g) break;
        if (g.offset < runEnd) throw this.#outOfOrder(g.offset);
        if (g.offset === runEnd && runStart >= 0) {
          runEnd += g.length;
          continue;
        }
        if (runStart >= 0) {
          if (keep && keep.length < 2 * MAX_CACHED_RUNS + 2) keep.push(runStart, runEnd - runStart);
          yield [runStart, runEnd - runStart];
          if (runEnd >= stopAt) return;
        }
        runStart = g.offset;
        runEnd = g.offset + g.length;
      }
      if (runStart >= 0) {
        if (keep) keep.push(runStart, runEnd - runStart);
        yield [runStart, runEnd - runStart];
      }
      complete = true;
    } finally {
      await r.cancel();
      if (complete && keep && keep.length <= 2 * MAX_CACHED_RUNS) this.#runs = Float64Array.from(keep);
    }
  }

  /**
   * The allocation: grains the stream holds are data, the rest holes (no
   * parent: they read as zeros). Without a kept answer this is a pass over
   * the stream's markers, grains skipped, not inflated.
   */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#checkOpen();
    const { start, end } = extentRange(options, this.size);
    return this.#extents(start, end);
  }

  async *#extents(start: number, end: number): AsyncGenerator<Extent> {
    if (start >= end) return;
    const runs = this.#runs ? pairs(this.#runs) : this.#scan(end);
    let pos = start;
    for await (const [offset, length] of runs) {
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, end);
      if (to <= from) {
        if (offset >= end) break;
        continue;
      }
      if (from > pos) yield { offset: pos, length: from - pos, kind: 'hole', depth: 0 };
      yield { offset: from, length: to - from, kind: 'data', depth: 0 };
      pos = to;
      if (pos >= end) break;
    }
    if (pos < end) yield { offset: pos, length: end - pos, kind: 'hole', depth: 0 };
  }

  /** What `img info` shows: qemu-img's vmdk fields, as for the same VMDK in a file. */
  async info(): Promise<ImageInfo> {
    this.#checkOpen();
    const grainBytes = this.header.grainSize * SECTOR;
    return {
      format: FORMAT,
      virtualSize: this.size,
      dirty: this.header.uncleanShutdown,
      clusterSize: grainBytes,
      formatSpecific: {
        cid: this.cid,
        'parent-cid': this.parentCid,
        'create-type': this.createType,
        extents: [{ compressed: true, 'virtual-size': this.size, filename: this.#source.name, 'cluster-size': grainBytes, format: '' }],
      },
    };
  }

  async write(): Promise<void> {
    throw readOnlyError(FORMAT, this.#source.name);
  }

  async writeZeroes(): Promise<void> {
    throw readOnlyError(FORMAT, this.#source.name);
  }

  async discard(): Promise<void> {
    throw readOnlyError(FORMAT, this.#source.name);
  }

  async flush(): Promise<void> {}

  /** Ends the pass reads follow and closes the storage. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue;
    await this.#endPass();
    await this.#source.storage.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #checkOpen(): void {
    if (this.#closed) throw diskClosedError(FORMAT, this.#source.name);
  }
}

async function* pairs(runs: Float64Array): AsyncGenerator<[number, number]> {
  for (let i = 0; i + 1 < runs.length; i += 2) yield [runs[i]!, runs[i + 1]!];
}

/**
 * Opens the streamOptimized VMDK `source` gives: its header and embedded
 * descriptor are read from the front of one pass, which then stops. A
 * header that is not streamOptimized's is ERR_IMG_UNSUPPORTED (as from a
 * pipe); a descriptor that names a parent is ERR_IMG_UNSAFE (nothing named
 * inside is opened, as an OVA's disk is opened untrusted).
 */
export async function openStreamVmdk(source: StreamVmdkSource): Promise<StreamVmdkDisk> {
  const name = source.name;
  const r = new ByteStreamReader(source.bytes(), FORMAT, name);
  try {
    const h = parseStreamHeader(await r.exact(SECTOR, 'the sparse extent header'), name);
    let text = '';
    if (h.descriptorOffset > 0 && h.descriptorSize > 0) {
      const at = h.descriptorOffset * SECTOR;
      const length = Math.min(h.descriptorSize * SECTOR, MAX_DESCRIPTOR_BYTES);
      if (at + length > MAX_DESCRIPTOR_END) throw unsupported(FORMAT, name, `the embedded descriptor lies at ${at}, past the first ${MAX_DESCRIPTOR_END} bytes a stream is looked into for it`, { field: 'descriptorOffset', offset: 28, actual: at });
      await r.skipTo(at, 'the embedded descriptor');
      text = decodeDescriptorBytes(await r.exact(length, 'the embedded descriptor'));
    }
    if (!text.includes('parentCID')) {
      throw unsupported(FORMAT, name, 'the sparse extent has no embedded descriptor (no parentCID in its descriptor area): it is one extent of a split image, open the descriptor file that names it', { field: 'descriptorOffset', offset: 28 });
    }
    const d = parseDescriptor(text, name);
    const hint = descriptorField(d, 'parentFileNameHint');
    if (hint) throw unsafe(FORMAT, name, `the image refers to a parent "${hint}"; untrusted opens do not follow it (use noBacking)`, { field: 'parentFileNameHint', actual: hint });
    return new StreamVmdkDisk(source, h, {
      createType: descriptorField(d, 'createType') ?? 'streamOptimized',
      cid: parseCid(descriptorField(d, 'CID')) ?? 0,
      parentCid: parseCid(descriptorField(d, 'parentCID')) ?? CID_NO_PARENT,
    });
  } finally {
    await r.cancel();
  }
}
