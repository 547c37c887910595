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

/** How {@link Storage.copyRunsTo} and {@link Storage.readRuns} treat the bytes they move. */
export interface RunCopyOptions {
  /**
   * Zero runs of at least this many bytes inside a chunk are not written
   * (copyRunsTo) or not reported as data (readRuns); 0 moves every byte.
   * The rule is findZeroRuns' (granules aligned to the destination offset,
   * zero runs at either end of a chunk kept whatever their length).
   */
  minZeroRun: number;
  /** Zero detection works in whole granules of this many bytes (default 512). */
  granule?: number;
  /** Runs are read in chunks that end at multiples of this many destination bytes (default 4 MiB, at most 64 MiB). */
  chunkSize?: number;
  /**
   * Whether copyRunsTo lets the kernel copy (copy_file_range) and, with zero
   * detection, scans chunks through a mapping of the source instead of
   * reading them. Default: only into a file system that copies by itself
   * (a reflink or a server-side copy: XFS, Btrfs, bcachefs, ZFS, NFS, SMB,
   * Ceph); elsewhere (tmpfs, ext4) the kernel would copy through the page
   * cache in small pieces, slower than pread and pwrite. `true` uses it
   * wherever the kernel takes it, `false` never.
   */
  copyRange?: boolean;
  /**
   * Whether to look for file holes inside the runs (SEEK_DATA probes 128
   * KiB apart), so that a hole is neither read nor scanned. Default true.
   * Pass false when the runs are what {@link Storage.ranges} reported as
   * data: the probes would find nothing. Either way the output is the same
   * (a hole reads as zeros).
   */
  probeHoles?: boolean;
  /**
   * Whether copyRunsTo may allocate the target's blocks just before it
   * writes them (where that is faster: ext4, whose buffered writes into
   * unallocated blocks take a slower path). `'holes'` (the default): zero
   * runs it skips stay holes, so a raw output is as sparse as its source.
   * `'any'`: skipped runs may stay allocated and unwritten (they read as
   * zeros, and SEEK_DATA reports them as holes), for a writer that fills or
   * truncates those places itself, such as a new qcow2 image's data area;
   * in tmpfs the file may also grow to the end of the batch's runs before
   * they are written (so that they can be written through a mapping), and
   * the writer cuts what stays unwritten.
   * `'never'`: no allocation ahead, for a writer whose own writes between
   * the runs would end up scattered around them (a VHD's block bitmaps).
   */
  preallocate?: 'holes' | 'any' | 'never';
  /**
   * The target may hold data where the runs go (`convert -n` into an
   * existing raw image): the zero runs the scan finds (and file holes of
   * the source inside the runs) are zeroed in the target, punched where it
   * can (as `RawDisk.writeZeroes` does) and written as zeros where it
   * cannot, instead of being skipped. Nothing is allocated ahead then.
   * They still count as skipped. Default false (the target reads as zeros
   * there). Needs `minZeroRun` > 0 to matter.
   */
  zeroTarget?: boolean;
  /** Stops between chunks; the call then rejects with ERR_IMG_ABORTED. */
  signal?: AbortSignal;
}

/** What {@link Storage.copyRunsTo} did. */
export interface RunCopyResult {
  bytesRead: number;
  /** Bytes written to the target. */
  bytesWritten: number;
  /** Bytes found to be zero and not written. */
  bytesSkipped: number;
}

/** What {@link Storage.readRuns} read. */
export interface RunReadResult {
  bytesRead: number;
  /**
   * Per run, the data it holds as buffer ranges: for run i, `pieces[i]` is
   * [start, end, start, end, ...] (positions in the buffer, where run i's
   * bytes begin at the sum of the earlier runs' lengths). Zero runs are left out.
   */
  pieces: number[][];
}

export interface Storage {
  /** A name for messages: the path for files, "memory" for memory storage. */
  readonly name: string;
  /** True if write/truncate are refused. */
  readonly readOnly: boolean;
  /**
   * Optional: what the bytes are, whatever name they were opened by (a local
   * file's device and inode). Two storages with one identity are one file
   * opened twice, so a writer through one changes what the other reads.
   * Backends that cannot tell omit it.
   */
  readonly identity?: string;
  /**
   * Optional: true for a block device (a disk, an LVM logical volume, a loop
   * device). Its size is fixed: `truncate` to at most its size
   * changes nothing and beyond it fails, as does a write past its end. Its
   * size is not the end of the image it holds, and bytes never written read
   * as whatever the device held before, not as zeros: a format writing
   * into it writes every byte its metadata relies on.
   */
  readonly fixedSize?: boolean;
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
  /**
   * Sets the size; growing fills with zeros (sparse where the backend can).
   * A storage whose `fixedSize` is true keeps its size and its bytes: a
   * size up to its own is accepted as it is, a bigger one fails.
   */
  truncate(size: number): Promise<void>;
  /** Durability barrier: everything written before is on stable storage when it resolves. */
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: where the storage holds data and where it has holes, for
   * `[offset, offset+length)`, in order. Backends that cannot tell omit it.
   *
   * With `limit`, a backend may stop after about that many ranges, so that
   * a file of millions of runs is not held in memory at once: the answer
   * then covers only the start of the window (up to the end of its last
   * range), and the caller asks again from there. Without it, or from a
   * backend that ignores it, the answer covers the whole window.
   *
   * With `granularity` (bytes, > 1), a caller that counts whole units (a
   * measure counting clusters) lets the backend widen each data range to
   * the units it touches, aligned to multiples of `granularity` and cut to
   * the window, and skip the questions inside them: data ranges may then
   * cover holes. A backend may ignore it and answer exactly.
   */
  ranges?(offset: number, length: number, limit?: number, granularity?: number): Promise<StorageRange[]>;
  /**
   * Optional: the bytes the backend holds for this storage (a file's
   * allocated blocks). At least `size()` means it has no holes, so a
   * caller need not ask {@link ranges} (which can cost a walk over the
   * whole file on tmpfs).
   */
  allocatedBytes?(): Promise<number>;
  /**
   * Optional: deallocate a range so it reads as zeros (hole punching).
   * Returns false if the backend could not punch a hole.
   */
  punchHole?(offset: number, length: number): Promise<boolean>;
  /**
   * Optional: give `[offset, offset + length)` its blocks, reading as
   * zeros, growing the storage if it ends before (fallocate, qemu's
   * preallocation=falloc). Returns false if the backend cannot; the caller
   * then writes zeros (see {@link preallocateRange}).
   */
  allocate?(offset: number, length: number): Promise<boolean>;
  /**
   * Optional: whether {@link copyRunsTo} can copy from this storage into `target`
   * (both local files, with the native helper).
   */
  canCopyRunsTo?(target: Storage): boolean;
  /**
   * Optional: copies a batch of runs, `runs` being (source position,
   * target position, length) triples, into `target` without a round trip
   * through the caller per request; zero runs are skipped (the target must
   * read as zeros there) unless `minZeroRun` is 0. Bytes past this
   * storage's end read as zeros.
   */
  copyRunsTo?(target: Storage, runs: Float64Array, options: RunCopyOptions): Promise<RunCopyResult>;
  /**
   * Optional: reads a batch of runs ((position, destination offset, length)
   * triples; the destination offset only aligns chunks and granules) into
   * `buffer` one after another, and says where the data is.
   */
  readRuns?(runs: Float64Array, buffer: Uint8Array, options: RunCopyOptions): Promise<RunReadResult>;
}
