/**
 * The flag byte per host cluster that the writable-open gate (open-gate.ts)
 * keeps while it walks the tables: what uses each cluster, in chunks
 * allocated on first use.
 */
import { unsupported } from '@img/block';

/** The format named in the gate's errors. */
export const FORMAT = 'qcow2';
/** Flag bytes the gate may hold (one per host cluster in use, in chunks): 256 MiB. */
export const MAX_FLAG_BYTES = 256 * 1024 * 1024;
/** Clusters per flag chunk (64 KiB). */
export const CHUNK_CLUSTERS = 2 ** 16;
/** Shared clusters looked at in detail (more than this is refused without looking). */
export const MAX_SHARED = 4096;

/** Metadata: the header, L1 tables, the refcount table and blocks, the snapshot table. */
export const META = 1;
/** Used by the active layer: an L2 table or a data cluster. */
export const USED = 2;
/** Holds compressed data of the active layer (spans may share a cluster). */
export const COMPRESSED = 4;
/** The active layer's entry for it has the COPIED flag: writes go in place. */
export const COPIED = 8;
/** Used by a snapshot's L2 tables (data, compressed spans, the tables themselves): only its refcount is judged. */
export const SNAPSHOT = 16;
/** Used by the persistent bitmaps (directory, tables, data clusters): never shareable. */
export const BITMAP = 32;

/** A flag byte per host cluster, in 64 KiB chunks allocated on first use (at most MAX_FLAG_BYTES). */
export class ClusterFlags {
  #chunks: Array<Uint8Array | undefined> = [];
  bytes = 0;
  constructor(readonly file: string | undefined) {}
  get(c: number): number {
    const k = Math.floor(c / CHUNK_CLUSTERS);
    const chunk = this.#chunks[k];
    return chunk ? chunk[c - k * CHUNK_CLUSTERS]! : 0;
  }
  /** The allocated chunks in cluster order: [first cluster, flag bytes]. */
  *chunks(): Generator<[number, Uint8Array]> {
    for (let k = 0; k < this.#chunks.length; k++) {
      const chunk = this.#chunks[k];
      if (chunk) yield [k * CHUNK_CLUSTERS, chunk];
    }
  }
  /** Sets `bits` on cluster `c` and returns the flags it had. */
  add(c: number, bits: number): number {
    const k = Math.floor(c / CHUNK_CLUSTERS);
    let chunk = this.#chunks[k];
    if (!chunk) {
      this.bytes += CHUNK_CLUSTERS;
      if (this.bytes > MAX_FLAG_BYTES) {
        throw unsupported(FORMAT, this.file, `refusing to open for writing: the image uses host clusters too scattered to check within ${MAX_FLAG_BYTES / 2 ** 20} MiB`, { field: 'L2 entry' });
      }
      chunk = this.#chunks[k] = new Uint8Array(CHUNK_CLUSTERS);
    }
    const i = c - k * CHUNK_CLUSTERS;
    const old = chunk[i]!;
    chunk[i] = old | bits;
    return old;
  }
}
