/**
 * Storage: the bytes an image lives in. Positional and cursor-free, so many
 * requests can be in flight at once. A file, memory, an HTTP object.
 */

/** One allocation run reported by storages that know their holes. */
export interface StorageRange {
  offset: number;
  length: number;
  /** True where the storage holds bytes, false where it is a hole that reads as zeros. */
  data: boolean;
}

export interface Storage {
  /** A name for messages: the path for files, "memory" for memory storage. */
  readonly name: string;
  /** True if write/truncate are refused. */
  readonly readOnly: boolean;
  /** Current size in bytes. */
  size(): Promise<number>;
  /**
   * Reads up to `length` bytes at `position`. The result is shorter than
   * `length` only when the end of the storage is reached.
   */
  read(position: number, length: number): Promise<Uint8Array>;
  /**
   * Reads into `target` at `position`; returns how many bytes were read
   * (less than target.length only at the end of the storage). Lets hot
   * paths reuse buffers.
   */
  readInto(position: number, target: Uint8Array): Promise<number>;
  /** Writes all of `data` at `position`, growing the storage if needed. */
  write(position: number, data: Uint8Array): Promise<void>;
  /**
   * Optional: writes several buffers at consecutive positions in one call
   * (writev), so callers need not copy contiguous pieces together.
   */
  writev?(position: number, chunks: readonly Uint8Array[]): Promise<void>;
  /** Sets the size; growing fills with zeros (sparse where the backend can). */
  truncate(size: number): Promise<void>;
  /** Durability barrier: everything written before is on stable storage when it resolves. */
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: where the storage holds data and where it has holes, for
   * `[offset, offset+length)`. Backends that cannot tell omit it.
   */
  ranges?(offset: number, length: number): Promise<StorageRange[]>;
  /**
   * Optional: deallocate a range so it reads as zeros (hole punching).
   * Returns false if the backend could not punch a hole.
   */
  punchHole?(offset: number, length: number): Promise<boolean>;
}

