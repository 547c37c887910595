/**
 * readQcow2Stream: the guest data of a qcow2 image arriving as a byte
 * stream (a pipe, an HTTP body), with no seeking and without buffering
 * the stream.
 *
 * Possible when the metadata precedes the data it describes: header, L1
 * table, then each L2 table before the clusters it maps. That is what
 * streamQcow2 writes and what `qemu-img convert -O qcow2` (with or without
 * -c) writes: header, refcount table and block, L1 table, then L2 tables
 * allocated as the copy reaches them, each before its data. Refcounts and
 * snapshots are not needed to read the active layer and are skipped.
 *
 * The host clusters still to come are kept in a priority queue by host
 * offset; runs of clusters contiguous in both the guest and the file are
 * one entry, so memory grows with the fragmentation of the image, not its
 * size. Compressed clusters are decompressed as they arrive.
 */
import { ByteStreamReader, ImageError, corrupt, hex, unsupported, type OpenOptions, type StreamSource } from '@img/block';
import { decompressCluster } from './compression.js';
import { EXT_DATA_FILE, QCOW2_V2_HEADER_LENGTH } from './constants.js';
import { findExtension } from './extensions.js';
import { headerClusterSize, validateHeaderCluster } from './header-check.js';
import type { EntryGeometry } from './mapping.js';
import { forEachL1Entry, forEachL2Entry } from './l2-walk.js';

const FORMAT = 'qcow2';
const NAME = 'stream';
/** Largest piece yielded. */
const PIECE = 1024 * 1024;
/** Most host runs waiting in the queue (about 40 bytes each): beyond it the image is too fragmented to stream. */
export const MAX_PENDING_RUNS = 1 << 23;

const KIND_L2 = 0;
const KIND_DATA = 1;
const KIND_COMPRESSED = 2;
const KIND_SUBCLUSTERS = 3;

/**
 * Host items still to come, ordered by host offset (a binary heap over
 * parallel typed arrays, so that millions of entries stay compact).
 */
class HostQueue {
  host = new Float64Array(1024);
  guest = new Float64Array(1024);
  /** Bytes (data runs, compressed sizes); unused for L2 tables. */
  len = new Float64Array(1024);
  /** L1 index (L2 tables) or the subcluster allocation bitmap. */
  aux = new Uint32Array(1024);
  kind = new Uint8Array(1024);
  #heap = new Int32Array(1024);
  #free: number[] = [];
  #slots = 0;
  size = 0;

  #grow(): void {
    const n = this.host.length * 2;
    const grow = <T extends Float64Array | Uint32Array | Uint8Array | Int32Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.host = grow(this.host, (k) => new Float64Array(k));
    this.guest = grow(this.guest, (k) => new Float64Array(k));
    this.len = grow(this.len, (k) => new Float64Array(k));
    this.aux = grow(this.aux, (k) => new Uint32Array(k));
    this.kind = grow(this.kind, (k) => new Uint8Array(k));
    this.#heap = grow(this.#heap, (k) => new Int32Array(k));
  }

  push(kind: number, host: number, guest: number, len: number, aux: number): number {
    if (this.size >= MAX_PENDING_RUNS) {
      throw unsupported(FORMAT, NAME, `more than ${MAX_PENDING_RUNS} separate runs of clusters are waiting in the stream: the image is too fragmented to read as a stream; save it to a file and open it`);
    }
    let slot = this.#free.pop();
    if (slot === undefined) {
      if (this.#slots >= this.host.length) this.#grow();
      slot = this.#slots++;
    }
    this.kind[slot] = kind;
    this.host[slot] = host;
    this.guest[slot] = guest;
    this.len[slot] = len;
    this.aux[slot] = aux;
    const h = this.#heap;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.host[h[parent]!]! <= host) break;
      h[i] = h[parent]!;
      i = parent;
    }
    h[i] = slot;
    return slot;
  }

  /** The slot with the lowest host offset (still queued until `pop`). */
  peek(): number {
    return this.#heap[0]!;
  }

  pop(): void {
    const h = this.#heap;
    this.#free.push(h[0]!);
    const last = h[--this.size]!;
    let i = 0;
    const key = this.host[last]!;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= this.size) break;
      if (c + 1 < this.size && this.host[h[c + 1]!]! < this.host[h[c]!]!) c++;
      if (this.host[h[c]!]! >= key) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
  }
}

/**
 * Decodes the qcow2 image arriving as `input`. Resolves once the header
 * has been read; the data comes through `pieces`, in stream order, each
 * piece at its guest offset (what no piece covers reads as zeros).
 *
 * Refused with ERR_IMG_UNSUPPORTED: a backing file (unallocated clusters
 * would come from it), an external data file, encryption, unknown
 * incompatible features, and an image whose metadata does not precede its
 * data (an L1 entry or L2 entry pointing back at bytes the stream has
 * passed; the message names the first such cluster). Bad images are
 * ERR_IMG_CORRUPT. Every size is checked against LIMITS before anything
 * is allocated.
 *
 * @example
 * ```ts
 * const { size, pieces } = await readQcow2Stream(Readable.from(req));
 * for await (const p of pieces) await disk.write(p.offset, p.data);
 * ```
 */
export async function readQcow2Stream(input: AsyncIterable<Uint8Array>, _options: OpenOptions = {}): Promise<StreamSource> {
  const reader = new ByteStreamReader(input, FORMAT, NAME);
  try {
    return await readHeaderAndL1(reader);
  } catch (e) {
    await reader.cancel().catch(() => undefined);
    throw e;
  }
}

async function readHeaderAndL1(reader: ByteStreamReader): Promise<StreamSource> {
  const head = await reader.upTo(QCOW2_V2_HEADER_LENGTH);
  const cs = headerClusterSize(head, NAME);
  const cluster0 = new Uint8Array(cs);
  cluster0.set(head);
  cluster0.set(await reader.exact(cs - head.length, 'the header cluster'), head.length);
  const { header: h, extensions, geom, entryGeom: g } = validateHeaderCluster(cluster0, NAME);
  if (h.backingFileOffset !== 0) {
    throw unsupported(FORMAT, NAME, 'an image with a backing file cannot be read as a stream: its unallocated clusters come from the backing file; save it to a file and open it with its backing file', { field: 'backing_file_offset', offset: 8 });
  }
  if (h.cryptMethod !== 0) {
    throw unsupported(FORMAT, NAME, 'an encrypted image cannot be read as a stream: save it to a file and open it with its passphrase', { field: 'crypt_method', offset: 32, actual: h.cryptMethod });
  }
  if (g.dataFile || findExtension(extensions, EXT_DATA_FILE)) {
    throw unsupported(FORMAT, NAME, 'an image with an external data file cannot be read as a stream: its data lives in the other file', { field: 'incompatible_features', offset: 72 });
  }
  const neededL1 = Math.ceil(h.size / geom.l2Coverage);
  const size = h.size;
  const queue = new HostQueue();
  const l1Start = h.l1TableOffset;
  const l1End = l1Start + h.l1Size * 8;
  if (neededL1 > 0) {
    if (l1Start % cs !== 0 || l1Start < cs) {
      throw corrupt(FORMAT, NAME, `L1 table at ${hex(l1Start)} is unaligned or overlaps the header`, { field: 'l1_table_offset', offset: 40, actual: l1Start });
    }
    if (!(await reader.skipTo(l1Start))) throw corrupt(FORMAT, NAME, `the stream ends at ${hex(reader.position)}, before the L1 table at ${hex(l1Start)}`, { field: 'l1_table_offset', offset: 40 });
    // Entries past the disk's end map nothing a reader sees: only the needed ones are read.
    const l1 = await reader.exact(neededL1 * 8, 'the L1 table');
    const rethrow = (e: Error): never => {
      throw e;
    };
    forEachL1Entry(
      { l1, offset: l1Start, entries: neededL1 },
      cs,
      NAME,
      (l2, i) => {
        if (l2 < cs || (l2 < l1End && l2 + cs > l1Start)) {
          throw corrupt(FORMAT, NAME, `L1 entry ${i} points at ${hex(l2)}, inside the header or the L1 table`, { field: 'L1 entry', offset: l1Start + i * 8, actual: l2 });
        }
        if (l2 < reader.position) {
          throw unsupported(FORMAT, NAME, `the L2 table of L1 entry ${i} (guest ${hex(i * geom.l2Coverage)}) lies at ${hex(l2)}, before the L1 table that points to it: this image's metadata does not precede its data; save it to a file and open it`, {
            field: 'L1 entry',
            offset: l1Start + i * 8,
            actual: l2,
          });
        }
        queue.push(KIND_L2, l2, i * geom.l2Coverage, cs, i);
      },
      rethrow,
    );
  }
  return { size, pieces: decode(reader, queue, { size, cs, g, l2Entries: geom.l2Entries, subclusterSize: geom.subclusterSize, compressionType: h.compressionType }) };
}

interface DecodeContext {
  size: number;
  cs: number;
  g: EntryGeometry;
  l2Entries: number;
  subclusterSize: number;
  compressionType: number;
}

/** Bytes of the host cluster where the last compressed cluster ended, from that cluster's start. */
interface Retained {
  start: number;
  bytes: Uint8Array;
}

async function* decode(reader: ByteStreamReader, queue: HostQueue, c: DecodeContext): AsyncGenerator<{ offset: number; data: Uint8Array }> {
  const { size, cs } = c;
  // Compressed clusters are packed: qemu (and our writer) put the next compressed cluster in the free
  // tail of the host cluster the last one ended in, even when L2 tables and plain clusters were
  // allocated after it. So the rest of that host cluster is kept until the next compressed read.
  const tail: { retained: Retained | undefined } = { retained: undefined };
  const compressedBytes = async (host: number, len: number, guest: number): Promise<Uint8Array> => {
    const end = Math.ceil((host + len) / cs) * cs;
    let prefix: Uint8Array = new Uint8Array(0);
    if (host < reader.position) {
      const r = tail.retained;
      const rEnd = r ? r.start + r.bytes.length : 0;
      if (!r || host < r.start || host > rEnd || (host + len > rEnd && reader.position > rEnd)) throw overlap(host, guest, reader.position);
      prefix = r.bytes.subarray(host - r.start);
    } else {
      await reader.skipTo(host);
    }
    const more = reader.position < end && reader.position >= host ? await reader.upTo(end - reader.position) : new Uint8Array(0);
    let bytes: Uint8Array = more;
    if (prefix.length) {
      bytes = new Uint8Array(prefix.length + more.length);
      bytes.set(prefix);
      bytes.set(more, prefix.length);
    }
    tail.retained = { start: host, bytes };
    return bytes.subarray(0, len);
  };
  try {
    while (queue.size > 0) {
      const slot = queue.peek();
      const kind = queue.kind[slot]!;
      const host = queue.host[slot]!;
      const guest = queue.guest[slot]!;
      const len = queue.len[slot]!;
      const aux = queue.aux[slot]!;
      queue.pop();
      if (kind === KIND_COMPRESSED) {
        const bytes = await compressedBytes(host, len, guest);
        const plain = await decompressCluster(c.compressionType, bytes, cs, { file: NAME, hostOffset: host });
        yield { offset: guest, data: plain.subarray(0, Math.min(cs, size - guest)) };
        continue;
      }
      if (host < reader.position) throw overlap(host, guest, reader.position);
      if (!(await reader.skipTo(host))) {
        if (kind === KIND_L2) throw corrupt(FORMAT, NAME, `the stream ends at ${hex(reader.position)}, before the L2 table at ${hex(host)}`, { field: 'L1 entry', offset: host });
        // Data past the end of the file reads as zeros (as it does from a file).
        continue;
      }
      if (kind === KIND_L2) {
        const table = await reader.exact(cs, `the L2 table at ${hex(host)}`);
        queueTable(queue, table, host, aux, reader.position, tail.retained, c);
      } else if (kind === KIND_DATA) {
        const stop = Math.min(len, size - guest);
        for (let pos = 0; pos < stop;) {
          const piece = await reader.some(Math.min(PIECE, stop - pos));
          if (!piece) break;
          // Pieces may share memory with the input: hand out copies the consumer may keep.
          yield { offset: guest + pos, data: piece.slice() };
          pos += piece.length;
        }
      } else {
        for (const [a, b] of bitRuns(aux)) {
          const from = a * c.subclusterSize;
          const to = Math.min(b * c.subclusterSize, size - guest);
          if (from >= to || !(await reader.skipTo(host + from))) continue;
          const data = await reader.upTo(to - from);
          if (data.length) yield { offset: guest + from, data };
        }
      }
    }
    tail.retained = undefined;
    await reader.drain();
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

function overlap(host: number, guest: number, position: number): ImageError {
  return corrupt(FORMAT, NAME, `the cluster for guest offset ${hex(guest)} at ${hex(host)} overlaps metadata or another cluster the stream has passed (now at ${hex(position)})`, {
    field: 'L2 entry',
    offset: host,
  });
}

/** Runs [first, end) of set bits of a 32-bit subcluster bitmap. */
function bitRuns(mask: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < 32;) {
    if (((mask >>> i) & 1) === 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 32 && ((mask >>> j) & 1) === 1) j++;
    out.push([i, j]);
    i = j;
  }
  return out;
}

/** Queues what one L2 table maps; data that lies before the table's end (already passed) is refused. */
function queueTable(queue: HostQueue, table: Uint8Array, tableOffset: number, l1Index: number, position: number, retained: Retained | undefined, c: DecodeContext): void {
  const { cs, g, size } = c;
  const full = g.extendedL2 ? 0xffffffff : 1;
  const base = l1Index * c.l2Entries;
  // The current run of clusters contiguous in guest and host.
  let runHost = -1;
  let runGuest = -1;
  let runLen = 0;
  const flush = () => {
    if (runLen) queue.push(KIND_DATA, runHost, runGuest, runLen, 0);
    runLen = 0;
  };
  // Entries past the disk's end map nothing a reader sees; one that does not decode ends the stream.
  const count = Math.min(c.l2Entries, Math.ceil(size / cs) - base);
  const rethrow = (e: Error): never => {
    throw e;
  };
  forEachL2Entry(
    { file: NAME, entryGeom: g },
    table,
    tableOffset,
    (e, i) => {
      const guest = (base + i) * cs;
      let host: number | undefined;
      if (e.type === 'normal') host = e.host;
      else if (e.type === 'compressed') host = e.host;
      else if (e.type === 'subclusters' && e.host !== undefined && e.alloc !== 0) host = e.host;
      if (host === undefined) return;
      const inTail = e.type === 'compressed' && retained !== undefined && host >= retained.start && host < retained.start + retained.bytes.length;
      if (host < position && !inTail) {
        const span = e.type === 'compressed' ? e.size : cs;
        if (host < cs || (host < tableOffset + cs && host + span > tableOffset)) {
          throw corrupt(FORMAT, NAME, `L2 entry ${i} of the table at ${hex(tableOffset)} (guest ${hex(guest)}) points at ${hex(host)}, inside the header or the table itself`, {
            field: 'L2 entry',
            offset: tableOffset + i * (g.extendedL2 ? 16 : 8),
            actual: host,
          });
        }
        throw unsupported(FORMAT, NAME, `the cluster for guest offset ${hex(guest)} lies at ${hex(host)}, before the L2 table at ${hex(tableOffset)} that maps it (the stream has passed it): this image's metadata does not precede its data; save it to a file and open it`, {
          field: 'L2 entry',
          offset: tableOffset + i * (g.extendedL2 ? 16 : 8),
          actual: host,
        });
      }
      if (e.type === 'compressed') {
        flush();
        queue.push(KIND_COMPRESSED, e.host, guest, e.size, 0);
      } else if (e.type === 'normal' || (e.type === 'subclusters' && e.alloc === full)) {
        if (runLen && runHost + runLen === host && runGuest + runLen === guest) runLen += cs;
        else {
          flush();
          runHost = host;
          runGuest = guest;
          runLen = cs;
        }
      } else if (e.type === 'subclusters') {
        flush();
        queue.push(KIND_SUBCLUSTERS, host, guest, cs, e.alloc);
      }
    },
    rethrow,
    count,
  );
  flush();
}
