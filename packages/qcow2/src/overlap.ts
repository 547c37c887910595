/**
 * The overlap map (qemu: qcow2_pre_write_overlap_check): which host
 * clusters of an open, writable image hold metadata, and of what kind.
 * Every write to the image file is checked against it, and the allocator
 * never hands out a cluster it holds.
 *
 * qcow2 metadata always starts on a cluster boundary, so the map is keyed
 * by cluster index: a check costs one hash lookup per cluster the write
 * touches (the same order as the write itself), independent of how much
 * metadata the image has.
 */
import { corrupt, hex } from '@img/block';

const FORMAT = 'qcow2';

/** Kinds of metadata, as bits (a cluster of a corrupt image may hold several). */
export const OVERLAP = {
  HEADER: 1,
  ACTIVE_L1: 2,
  L2: 4,
  REFCOUNT_TABLE: 8,
  REFCOUNT_BLOCK: 16,
  SNAPSHOT_TABLE: 32,
  SNAPSHOT_L1: 64,
  BITMAP_DIRECTORY: 128,
  BITMAP_TABLE: 256,
  /** LUKS: the encryption header area (LUKS header and key material). */
  CRYPTO_HEADER: 512,
} as const;

const NAMES: ReadonlyArray<[number, string]> = [
  [OVERLAP.HEADER, 'header'],
  [OVERLAP.ACTIVE_L1, 'active L1 table'],
  [OVERLAP.L2, 'L2 table'],
  [OVERLAP.REFCOUNT_TABLE, 'refcount table'],
  [OVERLAP.REFCOUNT_BLOCK, 'refcount block'],
  [OVERLAP.SNAPSHOT_TABLE, 'snapshot table'],
  [OVERLAP.SNAPSHOT_L1, 'snapshot L1 table'],
  [OVERLAP.BITMAP_DIRECTORY, 'bitmap directory'],
  [OVERLAP.BITMAP_TABLE, 'bitmap table'],
  [OVERLAP.CRYPTO_HEADER, 'encryption header'],
];

/** The name of the lowest kind bit in `kinds`. */
export function overlapKindName(kinds: number): string {
  for (const [bit, name] of NAMES) if (kinds & bit) return name;
  return 'metadata';
}

/** A metadata structure a write would hit. */
export interface OverlapHit {
  kind: number;
  name: string;
  /** Host range of the structure (contiguous clusters of that kind around the hit). */
  offset: number;
  length: number;
}

/** Metadata clusters of an open image by kind (see the module comment). */
export class OverlapMap {
  readonly clusterSize: number;
  /** Cluster index -> kind bits. */
  #kinds = new Map<number, number>();
  /** L2 tables are shared between L1 tables (snapshots): how many L1 entries point at each. */
  #l2Refs = new Map<number, number>();

  constructor(clusterSize: number) {
    this.clusterSize = clusterSize;
  }

  /** Clusters held (for tests and sizing). */
  get size(): number {
    return this.#kinds.size;
  }

  #clusters(offset: number, bytes: number): [number, number] {
    const cs = this.clusterSize;
    return [Math.floor(offset / cs), bytes > 0 ? Math.ceil((offset + bytes) / cs) : Math.floor(offset / cs)];
  }

  /** Records metadata of `kind` at [offset, offset + bytes). L2 tables count one reference per call. */
  add(kind: number, offset: number, bytes: number): void {
    const [first, end] = this.#clusters(offset, bytes);
    for (let c = first; c < end; c++) {
      this.#kinds.set(c, (this.#kinds.get(c) ?? 0) | kind);
      if (kind === OVERLAP.L2) this.#l2Refs.set(c, (this.#l2Refs.get(c) ?? 0) + 1);
    }
  }

  /** Forgets metadata of `kind` at [offset, offset + bytes); an L2 table stays while other L1 entries point at it. */
  remove(kind: number, offset: number, bytes: number): void {
    const [first, end] = this.#clusters(offset, bytes);
    for (let c = first; c < end; c++) {
      if (kind === OVERLAP.L2) {
        const refs = (this.#l2Refs.get(c) ?? 0) - 1;
        if (refs > 0) {
          this.#l2Refs.set(c, refs);
          continue;
        }
        this.#l2Refs.delete(c);
      }
      const left = (this.#kinds.get(c) ?? 0) & ~kind;
      if (left) this.#kinds.set(c, left);
      else this.#kinds.delete(c);
    }
  }

  /** Takes over the contents of `other` (a map built again after a snapshot operation). */
  assign(other: OverlapMap): void {
    this.#kinds = other.#kinds;
    this.#l2Refs = other.#l2Refs;
  }

  /** Forgets cluster `index` altogether (its refcount dropped to zero: nothing uses it any more). */
  forget(index: number): void {
    this.#kinds.delete(index);
    this.#l2Refs.delete(index);
  }

  /** The clusters that hold metadata, in no particular order. */
  clusters(): IterableIterator<number> {
    return this.#kinds.keys();
  }

  /** Kind bits of cluster `index` (0: no metadata). */
  kindsAt(index: number): number {
    return this.#kinds.get(index) ?? 0;
  }

  /**
   * The first metadata structure that [offset, offset + length) hits,
   * kinds in `allowed` not counted; undefined when the write is safe.
   * A range of more clusters than the map holds (a preallocated data
   * area) is checked by going over the map instead.
   */
  find(offset: number, length: number, allowed = 0): OverlapHit | undefined {
    if (this.#kinds.size === 0 || length <= 0) return undefined;
    const [first, end] = this.#clusters(offset, length);
    if (end - first > this.#kinds.size) {
      let at = -1;
      for (const [c, kinds] of this.#kinds) if (c >= first && c < end && kinds & ~allowed && (at < 0 || c < at)) at = c;
      return at < 0 ? undefined : this.#hit(at, this.#kinds.get(at)! & ~allowed);
    }
    for (let c = first; c < end; c++) {
      const kinds = (this.#kinds.get(c) ?? 0) & ~allowed;
      if (kinds) return this.#hit(c, kinds);
    }
    return undefined;
  }

  /** The last cluster of [first, end) that holds metadata, or -1. */
  lastIn(first: number, end: number): number {
    if (end - first > this.#kinds.size) {
      let last = -1;
      for (const c of this.#kinds.keys()) if (c >= first && c < end && c > last) last = c;
      return last;
    }
    for (let c = end - 1; c >= first; c--) if (this.#kinds.has(c)) return c;
    return -1;
  }

  #hit(c: number, kinds: number): OverlapHit {
    let bit = 1;
    while (!(kinds & bit)) bit <<= 1;
    let lo = c;
    let hi = c + 1;
    while (lo > 0 && this.kindsAt(lo - 1) & bit && bit !== OVERLAP.L2 && bit !== OVERLAP.REFCOUNT_BLOCK) lo--;
    while (this.kindsAt(hi) & bit && bit !== OVERLAP.L2 && bit !== OVERLAP.REFCOUNT_BLOCK) hi++;
    return { kind: bit, name: overlapKindName(bit), offset: lo * this.clusterSize, length: (hi - lo) * this.clusterSize };
  }

  /**
   * Throws ERR_IMG_CORRUPT if [offset, offset + length) hits metadata of a
   * kind not in `allowed`; the message names both ranges.
   */
  check(file: string, offset: number, length: number, allowed = 0): void {
    const hit = this.find(offset, length, allowed);
    if (hit) throw overlapError(file, offset, length, hit);
  }
}

/** Preventing invalid write on metadata: one sentence naming the write and the structure it hits. */
export function overlapError(file: string, offset: number, length: number, hit: OverlapHit) {
  return corrupt(FORMAT, file, `preventing invalid write on metadata: the write of ${length} bytes at ${hex(offset)}..${hex(offset + length - 1)} overlaps the ${hit.name} at ${hex(hit.offset)}..${hex(hit.offset + hit.length - 1)}`, {
    field: hit.name,
    offset,
    expected: hit.offset,
    actual: offset,
  });
}
