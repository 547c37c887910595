/** What a caller can ask of FileStorage.open and FileStorage.create. */

/** Options of FileStorage.open. */
export interface FileStorageOptions {
  readOnly?: boolean;
  /**
   * `writeback` (default): flush() is fdatasync. `unsafe`: flush() returns
   * at once and the page cache writes the file back in its own time, as
   * qemu-img's cache=unsafe (what `qemu-img convert` uses for its output).
   * Only for files that are thrown away if the process dies, such as a
   * conversion's output: every flush barrier of a format writer (one or two
   * per allocation) otherwise forces the data written so far to disk.
   */
  cache?: 'writeback' | 'unsafe';
  /**
   * Take qemu's image locks (default true): a read-only open takes a shared
   * lock that refuses writers, a read-write open one that refuses every
   * other reader and writer (qemu-img info, qemu-io, a VM, another img).
   * An open that another holder excludes fails with ERR_IMG_LOCKED.
   * `false` takes no locks and checks nothing (qemu's `locking=off`), in
   * either mode: for file systems without byte-range locks, or a caller
   * that coordinates access itself.
   */
  lock?: boolean;
  /**
   * qemu-img's -U (`force-share`): open an image another process holds,
   * even one a running VM writes, without locks or checks. Only for
   * read-only opens (ERR_IMG_INVALID_ARG otherwise); what is read may be
   * inconsistent while the other process writes.
   */
  forceShare?: boolean;
  /**
   * Data that {@link FileStorage.copyRunsTo} writes into this file goes
   * around the page cache (O_DIRECT, qemu's cache=none for the data), in
   * whole sectors; other writes, and the unaligned ends of a piece, go
   * through it as usual. For big outputs on machines where page-cache
   * memory is dear (a VM whose host takes back freed memory): the copy then
   * runs at the disk's speed and leaves the cache alone. Only on Linux, for
   * writable opens, where the file system takes O_DIRECT; elsewhere it is
   * ignored ({@link FileStorage.direct} says which).
   *
   * `'auto'` (what `convert()` uses for its output by default): each data
   * piece goes through the page cache or around it, whichever has cost
   * less per byte lately on this device: the loop times both as it writes.
   * Where fresh page-cache pages are cheap that is the cache; where they
   * are slow (a VM whose host took its free memory back, memory pressure)
   * it is the disk. The bytes written are the same either way. Not in
   * tmpfs; `IMG_COPY_DIRECT_AUTO=0` in the environment turns it off.
   */
  direct?: boolean | 'auto';
}

/** Options of FileStorage.create. */
export interface FileStorageCreateOptions {
  /** Fail if the file exists (O_EXCL) instead of emptying it. */
  exclusive?: boolean;
  cache?: FileStorageOptions['cache'];
  /** Take qemu's read-write image locks before the file is emptied (default true); see FileStorageOptions.lock. */
  lock?: boolean;
  /** See FileStorageOptions.direct. */
  direct?: boolean | 'auto';
}
