/**
 * The one walk from a view's L1/L2 tables to maximally merged segments
 * (data runs merged only where their host offsets are contiguous): guest
 * reads (reader.ts) and extents, with host offsets for bulk copies
 * (extents.ts), both go through it. It costs a few instructions per L2
 * entry. A copy asks for the extents of a whole disk
 * with host offsets, and a 16 GiB image with 64 KiB clusters has 262,144
 * L2 entries: decoding each into an object and merging objects took
 * 100-300 ms of a one-second conversion, longer than the kernel needs to
 * copy the data. Here the two common entries (unallocated, and a plain
 * data cluster) are recognised from their two 32-bit words
 * (`plainEntryHost`) and merged in local variables; every other entry (compressed, zero, extended L2, or
 * one that is corrupt) goes through `decodeL2Entry`, so what is reported
 * and what is refused are exactly what the reader reports and refuses.
 */
import { readU32Be } from '@img/block';
import { decodeL2Entry, l1EntryOffset, MAX_HOST_OFFSET, plainEntryHost } from './mapping.js';
import { loadL2, type MappingView, type ReaderState, type Segment } from './mapping-view.js';

/** Run kinds while merging: numbers, so the hot loop compares small integers. */
const NONE = 0;
const HOLE = 1;
const ZERO = 2;
const DATA = 3;
const KIND_NAME = ['hole', 'hole', 'zero', 'data'] as const;

/**
 * The pending run and the finished segments. A class, not closure
 * variables: offsets above 2^30 are doubles, and a double captured by a
 * closure is a fresh heap number at every write, while an object field
 * holding one is updated in place (measured: the closure form spent as
 * long in the garbage collector as in the walk).
 */
class RunMerger {
  kind = NONE;
  start = 0;
  length = 0;
  /** Host offset of `start`, or -1 for none. */
  host = -1;
  readonly out: Segment[] = [];

  /** Adds a run of `kind` (host -1: none), merged into the pending one when it continues it (same kind, adjacent, host offsets both absent or contiguous). */
  add(kind: number, at: number, length: number, host: number): void {
    if (kind === this.kind && this.start + this.length === at && (host < 0 ? this.host < 0 : this.host >= 0 && this.host + this.length === host)) {
      this.length += length;
      return;
    }
    this.flush();
    this.kind = kind;
    this.start = at;
    this.length = length;
    this.host = host;
  }

  flush(): void {
    if (this.kind === NONE) return;
    const seg: Segment = { offset: this.start, length: this.length, kind: KIND_NAME[this.kind]! };
    if (this.host >= 0) seg.host = this.host;
    this.out.push(seg);
    this.kind = NONE;
  }
}

/**
 * Whether the standard entry at byte `at` of an L2 table (`dv`) is the
 * entry before it with its offset one cluster further (`stepLo`, `stepHi`:
 * the low and high 16 bits of the cluster size), every other bit the same:
 * a plain data entry if that one is (plainEntryHost accepts it, below
 * MAX_HOST_OFFSET). In 16-bit halves, so that every number stays a small
 * integer: the sum with its carry, which must not reach the top byte (flags
 * and reserved bits).
 */
function followsInFile(dv: DataView, at: number, stepLo: number, stepHi: number): boolean {
  let sum = dv.getUint16(at - 2) + stepLo;
  if (dv.getUint16(at + 6) !== (sum & 0xffff)) return false;
  sum = dv.getUint16(at - 4) + stepHi + (sum >>> 16);
  if (dv.getUint16(at + 4) !== (sum & 0xffff)) return false;
  sum = dv.getUint16(at - 6) + (sum >>> 16);
  if (dv.getUint16(at + 2) !== (sum & 0xffff)) return false;
  const top = dv.getUint16(at - 8);
  sum = (top & 0xff) + (sum >>> 16);
  return sum <= 0xff && dv.getUint16(at) === ((top & 0xff00) | sum);
}

/**
 * Adds the clusters of `[pos, l1End)` (inside the L2 table `table` at
 * `l2Offset`) to `m`. Synchronous, so its locals stay in registers.
 */
function walkTable(state: ReaderState, m: RunMerger, table: Uint8Array, l2Offset: number, pos: number, l1End: number): void {
  const { clusterSize: cs, l2Entries, subclusterSize: scs } = state.geom;
  const g = state.entryGeom;
  const plainEntries = !g.extendedL2;
  // Unallocated entries (both words zero) are most of a sparse image's table: they are skipped a run at a time.
  const words = plainEntries && table.byteOffset % 4 === 0 ? new Uint32Array(table.buffer, table.byteOffset, table.byteLength >>> 2) : undefined;
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const stepLo = cs & 0xffff;
  const stepHi = Math.floor(cs / 0x10000);
  while (pos < l1End) {
    const cluster = Math.floor(pos / cs);
    const cStart = cluster * cs;
    const cEnd = Math.min(l1End, cStart + cs);
    const index = cluster % l2Entries;
    if (words !== undefined && words[index * 2] === 0 && words[index * 2 + 1] === 0) {
      const limit = index + Math.ceil((l1End - cStart) / cs);
      let last = index + 1;
      while (last < limit && words[last * 2] === 0 && words[last * 2 + 1] === 0) last++;
      const stop = Math.min(l1End, cStart + (last - index) * cs);
      m.add(HOLE, pos, stop - pos, -1);
      pos = stop;
      continue;
    }
    if (plainEntries) {
      const host = plainEntryHost(readU32Be(table, index * 8), readU32Be(table, index * 8 + 4), g);
      if (host > 0) {
        // The entries after it that name the next clusters of the file (a run qemu or a copy wrote in order) join
        // its run without being decoded: one add per run, and no numbers above 2^30 per entry, which until V8
        // optimizes this function are objects to allocate (a 16 GiB image's walk allocated 7.7 MB).
        const limit = Math.min(index + Math.ceil((l1End - cStart) / cs), index + Math.floor((MAX_HOST_OFFSET - host) / cs) + 1);
        let last = index + 1;
        while (last < limit && followsInFile(view, last * 8, stepLo, stepHi)) last++;
        const stop = Math.min(l1End, cStart + (last - index) * cs);
        m.add(DATA, pos, stop - pos, host + (pos - cStart));
        pos = stop;
        continue;
      }
      if (host === 0) {
        m.add(HOLE, pos, cEnd - pos, -1);
        pos = cEnd;
        continue;
      }
    }
    const entry = decodeL2Entry(table, index, g, state.file, l2Offset);
    switch (entry.type) {
      case 'unallocated':
        m.add(HOLE, pos, cEnd - pos, -1);
        break;
      case 'zero':
        m.add(ZERO, pos, cEnd - pos, entry.host === undefined ? -1 : entry.host + (pos - cStart));
        break;
      case 'normal':
        m.add(DATA, pos, cEnd - pos, entry.host + (pos - cStart));
        break;
      case 'compressed':
        // Never merged: each compressed cluster is read and inflated on its own.
        m.flush();
        m.out.push({ offset: pos, length: cEnd - pos, kind: 'compressed', host: entry.host, csize: entry.size, clusterOffset: cStart });
        break;
      case 'subclusters': {
        let p = pos;
        while (p < cEnd) {
          const sc = Math.floor((p - cStart) / scs);
          const scEnd = Math.min(cEnd, cStart + (sc + 1) * scs);
          const bit = 2 ** sc;
          const host = entry.host === undefined ? -1 : entry.host + (p - cStart);
          // qemu-img map reports the host offset of an unallocated subcluster of an allocated cluster too.
          m.add(Math.floor(entry.alloc / bit) % 2 ? DATA : Math.floor(entry.zero / bit) % 2 ? ZERO : HOLE, p, scEnd - p, host);
          p = scEnd;
        }
        break;
      }
    }
    pos = cEnd;
  }
}

/**
 * The segments covering `[start, end)` of `view`, in guest order and
 * maximally merged (data runs only where their host offsets are
 * contiguous; compressed clusters never), from L1/L2 metadata only.
 */
export async function* segments(state: ReaderState, view: MappingView, start: number, end: number): AsyncGenerator<Segment> {
  // One yield per segment: `yield*` over a batch would wrap it in an async iterator, which a 4 KiB read pays for.
  for await (const batch of segmentBatches(state, view, start, end)) for (const seg of batch) yield seg;
}

/**
 * {@link segments} an L2 table's worth at a time, for walks over millions
 * of them (extents): a promise per segment cost more than the walk. Each
 * batch is reused for the next one: take what it holds before asking again.
 */
export async function* segmentBatches(state: ReaderState, view: MappingView, start: number, end: number): AsyncGenerator<readonly Segment[]> {
  const { clusterSize: cs, l2Coverage } = state.geom;
  const m = new RunMerger();
  let pos = start;
  while (pos < end) {
    const l1Index = Math.floor(pos / l2Coverage);
    const l1End = Math.min(end, (l1Index + 1) * l2Coverage);
    const l2Offset = l1EntryOffset(view.l1, l1Index, cs, state.file, view.l1Offset);
    if (l2Offset === 0) m.add(HOLE, pos, l1End - pos, -1);
    else walkTable(state, m, await loadL2(state, l2Offset, l1Index), l2Offset, pos, l1End);
    pos = l1End;
    if (m.out.length) {
      yield m.out;
      m.out.length = 0;
    }
  }
  m.flush();
  if (m.out.length) yield m.out;
}
