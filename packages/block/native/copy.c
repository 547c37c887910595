/*
 * The batch copy loop of @img/block's native helper.
 *
 * copyRuns(srcFd, dstFd, runs, options, cancel) -> Promise<Float64Array>
 * readRuns(srcFd, runs, buffer, options, cancel) -> Promise<Float64Array>
 *
 * `runs` is a Float64Array of (source offset, destination offset, length)
 * triples. Both functions do all their I/O on one libuv pool thread
 * (napi async work), so JavaScript pays one thread hand-off per batch
 * instead of one per read and one per write.
 *
 * copyRuns reads each run from srcFd and writes it to dstFd. With zero
 * detection (options.minZeroRun > 0) the bytes are read in chunks, split
 * into data and zero runs (the same rule as findZeroRuns in src/zero.ts:
 * granules aligned to the destination offset, interior zero runs shorter
 * than minZeroRun folded into the data, zero runs at either end of a chunk
 * kept) and only the data runs are written: the destination must already
 * read as zeros there. Without zero detection every byte is written, with
 * copy_file_range where options.copyRange allows and the kernel can (the
 * bytes then never enter user space), else pread/pwrite. options.copyRange
 * 2 (auto, what JavaScript passes by default) allows copy_file_range only
 * into a file system that does the copy itself (see offloads_copy).
 *
 * readRuns reads the runs one after another into `buffer` (the batch must
 * fit) and, with zero detection, reports the data/zero split of each run,
 * so a format writer can write just the data.
 *
 * With zero detection, the file holes of a sparse source (SEEK_DATA probes
 * 128 KiB apart in each chunk) are neither read nor scanned: they are zeros, and
 * count as zero granules of the same rule, so the output is the one a full
 * read would give. A VHD block whose unwritten half is a hole in the file
 * (qemu-img leaves them so), or a raw run over a sparse file, then costs
 * no copy and no scan.
 *
 * copyRuns jobs take one of a few copy slots (one per online CPU) for
 * their work, see slot_take.
 *
 * Bytes past the end of the source read as zeros (the formats' own readers
 * do the same). `cancel` is an Int32Array whose first element JavaScript
 * sets to 1 to stop the loop between chunks (AbortSignal); the promise then
 * resolves with what was done and the cancelled flag set.
 *
 * Result (copyRuns): [bytesRead, bytesWritten, bytesSkipped, cancelled,
 * bytesMapped] (bytesMapped: of bytesWritten, the bytes written through a
 * mapping of a tmpfs destination, see write_shared).
 * Result (readRuns): [bytesRead, cancelled, then per run: count, then
 * count pairs of (buffer start, buffer end) of its data runs].
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <node_api.h>
#include "napi-work.h"

#define MAX_CHUNK (64u * 1024u * 1024u)
#define MAX_SAFE 9007199254740991.0
/* File holes looked for in one chunk; past this many the rest of the chunk is read. */
#define MAX_HOLES 32
/* Distance between the SEEK_DATA probes of one chunk. */
#define HOLE_STEP ((off_t)128 * 1024)

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref cancel_ref;
  napi_ref buffer_ref;
  volatile int32_t *cancel;
  int src_fd, dst_fd;
  int direct_fd; /* the destination opened again with O_DIRECT (options.directFd), or -1: see write_direct */
  off_t direct_align; /* the alignment of direct writes: 512, or DIRECT_ALIGN_MAX once the device refused 512 */
  bool direct_auto; /* options.directAuto: each data piece goes through the cache or around it, whichever is faster now (see auto_pick) */
  dev_t dst_dev; /* direct_auto: the destination's device, the key of its write costs */
  int auto_force; /* direct_auto: 0 measure, 1 always the cache, 2 always direct (IMG_COPY_DIRECT_AUTO) */
  bool read_mode;
  bool write_mode; /* writeAt: the caller's buffer (user, user_len) to position, see execute_write */
  const uint8_t *user;
  size_t user_len;
  double position;
  size_t nruns;
  double *runs;
  uint8_t *buffer; /* readRuns: the caller's buffer; copyRuns: our own chunk buffer */
  size_t buffer_len;
  size_t chunk_size, granule, min_zero_run;
  bool copy_range;
  bool copy_auto; /* copyRange 2: copy_range only where offloads_copy says so */
  /* copyRuns with zero detection: source chunks scanned through a mapping (see map_chunk) while this holds. */
  bool map_scan;
  off_t src_size; /* the source's size when the job started: only chunks inside it are mapped */
  /* results */
  double bytes_read, bytes_written, bytes_skipped;
  double bytes_mapped; /* of bytes_written: through a mapping of the destination (write_shared) */
  bool cancelled;
  size_t chunk_at; /* readRuns: buffer position of the chunk being split */
  /* File holes of the chunk being split, as (start, end) pairs relative to its first byte. */
  size_t holes[2 * MAX_HOLES];
  size_t nholes;
  bool seek_holes; /* false once the file system has said it cannot tell */
  bool holds_slot; /* a copyRuns job holding one of the copy slots (see slot_take) */
  bool nowait; /* reads try RWF_NOWAIT first, to give the slot back for reads that wait on the disk */
  bool prealloc; /* data pieces are allocated (fallocate) just before they are written: see prealloc_piece */
  bool prealloc_span; /* the job's whole destination was allocated at its start */
  int preallocate; /* 0 never, 1 skipped runs stay holes (given back inside an allocated span), 2 skipped runs may keep blocks */
  bool shm_map; /* tmpfs destination: a data piece finding another copy thread writing is written through a mapping (see write_shared) */
  off_t dst_size; /* shm_map: the destination's size when last looked at */
  off_t span_end; /* shm_map: the end of the job's last destination byte */
  bool punch_zeros; /* zero_piece still tries fallocate's punch (false once the destination has refused it) */
  bool zero_target; /* the destination may hold data (convert -n): zero runs the scan finds are zeroed there, not skipped (see zero_piece) */
  size_t block; /* the destination's block size, for giving blocks back */
  double *pieces; /* readRuns: per run, count then pairs */
  size_t npieces, cap_pieces;
  int err;
  const char *err_what;
  double err_offset;
} copy_job;

/*
 * Chunk buffers of copyRuns, kept between jobs: a fresh buffer per job is
 * a fresh mapping, and the kernel faults in and zeroes every page of it
 * again (with 2 MiB batches, as much memory zeroed as data copied).
 */
#define POOL_MAX 8
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  uint8_t *bytes;
  size_t len;
} pool[POOL_MAX];
static int pool_n;

static uint8_t *buffer_get(size_t len, size_t *got) {
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < pool_n; i++) {
    if (pool[i].len >= len) {
      uint8_t *b = pool[i].bytes;
      *got = pool[i].len;
      pool[i] = pool[--pool_n];
      pthread_mutex_unlock(&pool_lock);
      return b;
    }
  }
  pthread_mutex_unlock(&pool_lock);
  void *b = NULL;
  if (posix_memalign(&b, 4096, len) != 0) return NULL;
  *got = len;
  return b;
}

static void buffer_put(uint8_t *b, size_t len) {
  if (!b) return;
  pthread_mutex_lock(&pool_lock);
  if (pool_n < POOL_MAX) {
    pool[pool_n].bytes = b, pool[pool_n].len = len;
    pool_n++;
    b = NULL;
  }
  pthread_mutex_unlock(&pool_lock);
  free(b);
}

/*
 * Copy slots: at most one copyRuns job per online CPU moves bytes at a
 * time, however many JavaScript keeps in flight. Data in the page cache
 * makes a copy CPU-bound (the kernel's copies in and out of it), and more
 * threads than CPUs only take turns on them and spin on the destination's
 * inode lock: B raw->qcow2 (1 GiB in 1 MiB runs, tmpfs, 2 vCPUs) took
 * 0.34-0.36 s with 4 jobs at once against 0.31-0.33 s with 2 and 0.28 s
 * for a bare C loop on 2 threads. A read that would wait on the disk
 * (RWF_NOWAIT says EAGAIN) gives its slot back while it waits, so copies
 * from cold files still keep several reads in flight. The jobs queued
 * behind a slot keep their pool thread, so the next one starts the moment
 * a slot is free, without a round trip through JavaScript.
 * IMG_COPY_SLOTS sets the number (1 to 64); 0 turns the limit off.
 */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slot_cond = PTHREAD_COND_INITIALIZER;
static int slots_free = -1; /* -1: not sized yet; sized on first use */
static bool slots_on = true;

static void slots_size(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  const char *env = getenv("IMG_COPY_SLOTS");
  if (env && *env) {
    char *end;
    long v = strtol(env, &end, 10);
    if (*end == 0 && v >= 0 && v <= 64) n = v;
  }
  if (n == 0) slots_on = false;
  slots_free = n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

static void slot_take(copy_job *j) {
  pthread_mutex_lock(&slot_lock);
  if (slots_free < 0) slots_size();
  if (slots_on) {
    while (slots_free == 0) pthread_cond_wait(&slot_cond, &slot_lock);
    slots_free--;
    j->holds_slot = true;
  }
  pthread_mutex_unlock(&slot_lock);
}

static void slot_give(copy_job *j) {
  if (!j->holds_slot) return;
  pthread_mutex_lock(&slot_lock);
  slots_free++;
  j->holds_slot = false;
  pthread_cond_signal(&slot_cond);
  pthread_mutex_unlock(&slot_lock);
}

static bool cancelled(copy_job *j) {
  return j->cancel && __atomic_load_n(j->cancel, __ATOMIC_RELAXED) != 0;
}

static void fail(copy_job *j, int err, const char *what, double offset) {
  if (j->err) return;
  j->err = err;
  j->err_what = what;
  j->err_offset = offset;
}

/* Reads len bytes at off; what the file does not have (end of file) reads as zeros. */
static bool read_full(copy_job *j, uint8_t *buf, size_t len, off_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t n;
#ifdef RWF_NOWAIT
    if (j->holds_slot && j->nowait) {
      struct iovec iov = {buf + done, len - done};
      n = preadv2(j->src_fd, &iov, 1, off + (off_t)done, RWF_NOWAIT);
      if (n < 0 && errno == EAGAIN) {
        /* Not in the page cache: wait for the disk without holding a slot. */
        slot_give(j);
        n = pread(j->src_fd, buf + done, len - done, off + (off_t)done);
        int saved = errno;
        slot_take(j);
        errno = saved;
      } else if (n < 0 && errno != EINTR) {
        /* RWF_NOWAIT not supported here (an old kernel, a file system without it): plain reads from now on. */
        j->nowait = false;
        continue;
      }
    } else
#endif
      n = pread(j->src_fd, buf + done, len - done, off + (off_t)done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(j, errno, "read", (double)(off + (off_t)done));
      return false;
    }
    if (n == 0) {
      memset(buf + done, 0, len - done);
      break;
    }
    done += (size_t)n;
  }
  j->bytes_read += (double)len;
  return true;
}

/*
 * Destination blocks allocated before the bytes are written. On ext4 a
 * buffered write into a range with no blocks takes the delayed-allocation
 * path for every 4 KiB block (a reservation, a quota charge and an extent
 * status entry each), all under the inode lock that serializes the writers
 * of one file; into blocks fallocate has just allocated (unwritten, so they
 * read as zeros until written), the write only copies. Measured on ext4
 * with 1 GiB of data in 1 MiB runs, 2 threads (pread, zero scan, pwrite),
 * 6-8 alternating runs each: 0.27-0.37 s median without, 0.19-0.26 s with,
 * CPU 0.38-0.41 s against 0.28-0.30 s.
 *
 * A job whose destination is dense (see prealloc_job) allocates it in one
 * call, so it lands in one extent: allocated piece by piece by two threads
 * at once, the pieces of a 1 GiB qcow2 went to 989 extents where delayed
 * allocation made 39 (piece by piece, a VHD's 1,359 against 19). Zero
 * runs the scan skips inside such a range give their blocks back (punched),
 * so a raw output is as sparse as without; a placing writer (preallocate
 * 2: a new qcow2, which finds the skipped clusters with SEEK_DATA, to which
 * unwritten blocks are holes, then moves data into them or cuts them off)
 * keeps them, as punched holes filled again later scattered its file (948
 * extents against 2). Other jobs of a raw output (sparse) allocate each
 * data piece of 64 KiB or more just before writing it. The caller says
 * which of these a target allows (preallocate: 0 none, as for a VHD writer
 * whose bitmaps, written between the blocks later, would scatter the file;
 * 1 skipped runs as holes; 2 skipped runs may keep blocks).
 *
 * Only on ext4 (tmpfs: no difference measured; other file systems: not
 * measured). The allocation keeps the file's size (the writes grow it as
 * before). Any refusal turns it off for the job; the writes then
 * report their own errors (ENOSPC and the like). IMG_COPY_PREALLOC=0 turns
 * it off, 1 on for every file system (for measuring).
 */
#define PREALLOC_MIN ((size_t)64 * 1024)

static int stat_fd(int fd, struct stat *st);

static bool prealloc_wanted(int fd) {
  const char *env = getenv("IMG_COPY_PREALLOC");
  if (env && *env) return strcmp(env, "0") != 0;
  struct statfs fs;
  return fstatfs(fd, &fs) == 0 && ((unsigned long)fs.f_type & 0xffffffffUL) == 0xef53UL; /* ext2/3/4 */
}

static pthread_mutex_t *write_lock(int fd);

/*
 * fallocate takes the destination's inode lock as a buffered write does: it
 * waits on the copy loop's own lock (write_lock) first, so that it sleeps
 * while the other copy thread writes instead of spinning on the kernel's
 * lock. Where fresh page-cache pages were slow (host faults), perf of B
 * qcow2->raw showed a third of a 6 s run in rwsem_spin_on_owner under
 * ext4_fallocate, the other copy thread's pwrite holding the lock.
 */
static bool allocate(copy_job *j, int mode, off_t off, off_t len) {
  pthread_mutex_t *lock = write_lock(j->dst_fd);
  if (lock) pthread_mutex_lock(lock);
  bool ok = true;
  while (fallocate(j->dst_fd, mode, off, len) != 0) {
    if (errno == EINTR) continue;
    ok = false;
    break;
  }
  if (lock) pthread_mutex_unlock(lock);
  return ok;
}

/* A zero piece the scan skipped inside an allocated span (inside this job's own runs): its whole blocks go back (it reads as zeros either way). */
static void release_piece(copy_job *j, size_t len, off_t off) {
  if (!j->prealloc_span || j->preallocate != 1) return;
  off_t b = (off_t)j->block, from = (off + b - 1) / b * b, to = (off + (off_t)len) / b * b;
  if (to > from && !allocate(j, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, from, to - from)) j->prealloc_span = false;
}

/*
 * A placing writer's file (preallocate 2) is allocated ahead of its jobs:
 * its runs come batch after batch, each just past the one before, and one
 * fallocate per batch (32 MiB) made 32 calls for 1 GiB, each taking the
 * file's lock from the other copy thread's writes, and on ext4 one of them
 * waiting 23-42 ms in half the runs measured (a journal commit). A job whose
 * span is past what was allocated for its file allocates to the end of its
 * span and AHEAD more (blocks it never writes go back with the writer's
 * final truncation, as for a span past the end). The allocated range of the
 * last few files is kept here, keyed by device and inode; a span not
 * following it starts a new range. IMG_COPY_PREALLOC_AHEAD (MiB) changes
 * the distance, 0 turns it off (for measuring).
 */
#define AHEAD_FILES 4
static pthread_mutex_t ahead_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  dev_t dev;
  ino_t ino;
  double lo, hi;
} ahead[AHEAD_FILES];
static int ahead_next;

static double ahead_bytes(void) {
  static double bytes = -1;
  if (bytes < 0) {
    const char *env = getenv("IMG_COPY_PREALLOC_AHEAD");
    bytes = env && *env ? strtod(env, NULL) * 1024 * 1024 : 128.0 * 1024 * 1024;
    if (!(bytes >= 0)) bytes = 0;
  }
  return bytes;
}

static bool allocate_ahead(copy_job *j, const struct stat *st, double first, double end) {
  double more = ahead_bytes();
  pthread_mutex_lock(&ahead_lock);
  int at = -1;
  for (int i = 0; i < AHEAD_FILES; i++)
    if (ahead[i].hi > 0 && ahead[i].dev == st->st_dev && ahead[i].ino == st->st_ino) at = i;
  /* A range the file no longer has blocks for is stale: a truncation gave them back, or the inode is a new file's. */
  if (at >= 0 && (double)st->st_blocks * 512 < ahead[at].hi - ahead[at].lo) ahead[at].lo = ahead[at].hi = 0;
  if (at >= 0 && ahead[at].hi > 0 && first >= ahead[at].lo && end <= ahead[at].hi) {
    pthread_mutex_unlock(&ahead_lock);
    return true;
  }
  bool follows = at >= 0 && ahead[at].hi > 0 && first >= ahead[at].lo && first <= ahead[at].hi;
  double from = follows ? ahead[at].hi : first, to = end + more;
  bool ok = allocate(j, FALLOC_FL_KEEP_SIZE, (off_t)from, (off_t)(to - from));
  if (!ok) j->prealloc = false;
  if (at < 0) {
    at = ahead_next;
    ahead_next = (ahead_next + 1) % AHEAD_FILES;
  }
  ahead[at].dev = st->st_dev;
  ahead[at].ino = st->st_ino;
  ahead[at].lo = ok ? (follows ? ahead[at].lo : first) : 0;
  ahead[at].hi = ok ? to : 0;
  pthread_mutex_unlock(&ahead_lock);
  return ok;
}

/*
 * At the start of a job: one allocation for a dense destination, runs in
 * ascending order from the first to the end of the last (a new qcow2's data
 * area, a dense raw file). A placing writer (preallocate 2) may leave gaps
 * of up to 1/16 between its runs (places it fills itself: allocating them
 * changes no byte). Where skipped runs must end as holes (preallocate 1) the
 * runs must follow each other without a gap (a gap may be another writer's:
 * a compressed cluster written through the format meanwhile) and lie inside
 * the file's size: ext4 punches no hole past the end of a file, and
 * truncating there could cut another job's write; such jobs go piece by
 * piece. A placing writer's span may reach past the end (KEEP_SIZE: the
 * writes grow the file); what it leaves unwritten there, the writer's final
 * truncation gives back (as does removing the output of a failed
 * conversion).
 */
static void prealloc_job(copy_job *j) {
  j->prealloc_span = false;
  if (!j->prealloc || j->nruns == 0) return;
  double first = j->runs[1], end = first, covered = 0;
  for (size_t r = 0; r < j->nruns; r++) {
    if (j->runs[3 * r + 1] < end) return;
    covered += j->runs[3 * r + 2];
    end = j->runs[3 * r + 1] + j->runs[3 * r + 2];
  }
  if (end - first < (double)PREALLOC_MIN || covered < (j->preallocate == 1 ? end - first : (end - first) / 16 * 15)) return;
  struct stat st;
  if (stat_fd(j->dst_fd, &st) != 0 || st.st_blksize <= 0) {
    j->prealloc = false;
    return;
  }
  if (j->preallocate == 1 && end > (double)st.st_size) return;
  j->block = (size_t)st.st_blksize;
  if (j->preallocate == 2) {
    j->prealloc_span = allocate_ahead(j, &st, first, end);
    return;
  }
  if (!allocate(j, FALLOC_FL_KEEP_SIZE, (off_t)first, (off_t)(end - first))) {
    j->prealloc = false;
    return;
  }
  j->prealloc_span = true;
}

/* Before a data piece is written: its blocks, unless the job's span has them. */
static void prealloc_piece(copy_job *j, size_t len, off_t off) {
  if (!j->prealloc || j->prealloc_span || j->preallocate != 1 || len < PREALLOC_MIN) return;
  if (!allocate(j, FALLOC_FL_KEEP_SIZE, off, (off_t)len)) j->prealloc = false;
}

static bool write_full(copy_job *j, const uint8_t *buf, size_t len, off_t off);
static bool write_auto(copy_job *j, const uint8_t *buf, size_t len, off_t off);

/*
 * copyRuns with options.directFd (qemu's cache=none for the destination):
 * the whole sectors of a data piece are written through the O_DIRECT
 * descriptor, from the chunk buffer, so they never enter the page cache; a
 * piece's unaligned head and tail, and a piece whose bytes do not line up
 * with the buffer, go through dst_fd as usual. Sectors are 512 bytes until
 * the device refuses (EINVAL), then 4 KiB for the rest of the job: a VHD's
 * data blocks start one 512-byte bitmap after a page boundary, and with
 * 4 KiB all of them went through the page cache. The
 * kernel keeps the two coherent (a direct write first writes back and drops
 * cached pages of its range). Where a file system refuses O_DIRECT writes
 * (EINVAL) the job goes on without it.
 *
 * Why: a buffered copy needs a fresh page-cache page for every 4 KiB it
 * writes. On a VM whose kernel hands free memory back to the host (free page
 * reporting), each of those pages is a host fault, and a 2 GiB output took
 * 5-7 s of system time where the disk writes it in 1 s.
 */
/* The largest direct-write alignment tried; the first is 512 (see copy_job.direct_align). */
#define DIRECT_ALIGN_MAX ((off_t)4096)
static bool write_direct(copy_job *j, const uint8_t *buf, size_t len, off_t off) {
  if (j->direct_auto) return write_auto(j, buf, len, off);
  const off_t al = j->direct_align;
  off_t end = off + (off_t)len;
  off_t a = (off + al - 1) / al * al, b = end / al * al;
  if (j->direct_fd < 0 || b <= a || ((uintptr_t)(buf + (a - off)) & (uintptr_t)(al - 1))) return write_full(j, buf, len, off);
  const uint8_t *p = buf + (a - off);
  size_t mid = (size_t)(b - a), done = 0;
  while (done < mid) {
    ssize_t n = pwrite(j->direct_fd, p + done, mid - done, a + (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && done == 0 && al < DIRECT_ALIGN_MAX) {
      /* The device's sectors are bigger than this: try again at the page size. */
      j->direct_align = DIRECT_ALIGN_MAX;
      return write_direct(j, buf, len, off);
    }
    if (n < 0 && errno == EINVAL) {
      /* Not on this file system (or not at this alignment): the rest of the job goes through the page cache. */
      j->direct_fd = -1;
      j->bytes_written += (double)done;
      return write_full(j, p + done, (size_t)(b - a) - done, a + (off_t)done) && (a == off || write_full(j, buf, (size_t)(a - off), off)) &&
             (end == b || write_full(j, buf + (b - off), (size_t)(end - b), b));
    }
    if (n <= 0) {
      fail(j, n < 0 ? errno : EIO, "write", (double)(a + (off_t)done));
      return false;
    }
    done += (size_t)n;
  }
  j->bytes_written += (double)mid;
  /* The unaligned head and tail after the middle, so that a retry at a bigger alignment above has written nothing yet. */
  return (a == off || write_full(j, buf, (size_t)(a - off), off)) && (end == b || write_full(j, buf + (b - off), (size_t)(end - b), b));
}

/*
 * Buffered writes into one file take turns on its inode lock in the kernel
 * (ext4, tmpfs), and a copy thread that finds it taken spins on it while
 * the holder runs. Where fresh page-cache pages are slow to get (a VM whose
 * host took the memory back: a host fault per 4 KiB), the spinner doubled
 * the system time and made runs 2-4x slower (tmpfs qcow2->qcow2 of 1 GiB:
 * 0.47-2.28 s against 0.51-1.05 s with one copy thread, session 19). So the
 * copy threads take a lock of their own around each buffered write, keyed
 * by the destination descriptor: the one that waits sleeps, and the reads
 * and zero scans still overlap with the other's write. O_DIRECT writes do
 * not take it (the kernel runs them side by side).
 *
 * Where fresh pages are cheap (warm memory), the spin is short and the
 * sleep costs more than it saves: the waiter's read of its next piece no
 * longer overlaps the holder's write once it sleeps, and the wake-up is a
 * trip through the scheduler. B raw->qcow2 (1 GiB in 1 MiB runs, ext4, 2
 * vCPUs, warm) in a running process, 10 alternating runs: 0.183-0.190 s
 * with the lock around every write, 0.169-0.176 s without. So buffered
 * writes take it only while they are slow (slow_writes): their cost per
 * byte, a moving average of the system calls' time, above
 * LOCK_SLOW_NS_PER_BYTE turns it on, below LOCK_FAST_NS_PER_BYTE off again.
 * Warm writes into ext4 cost about 0.07-0.15 ns per byte (a spin on the
 * other writer included), writes that take host faults 0.7-6. Allocation,
 * punching and O_DIRECT writes take the lock always.
 * IMG_COPY_WRITE_LOCK=0 turns it off, =1 on for every write (for measuring).
 */
#define WRITE_LOCKS 16
static pthread_mutex_t write_locks[WRITE_LOCKS] = {[0 ... WRITE_LOCKS - 1] = PTHREAD_MUTEX_INITIALIZER};
#define LOCK_SLOW_NS_PER_BYTE 0.5
#define LOCK_FAST_NS_PER_BYTE 0.3

/* A switch from the environment: 0 for "0", 1 for "1", 2 (the default) for anything else or unset. */
static int env_mode(const char *name) {
  const char *env = getenv(name);
  return env && strcmp(env, "0") == 0 ? 0 : env && strcmp(env, "1") == 0 ? 1 : 2;
}

/* IMG_COPY_WRITE_LOCK: 0 never, 1 always, 2 (unset) while writes are slow. */
static int write_lock_mode(void) {
  static int mode = -1;
  if (mode < 0) mode = env_mode("IMG_COPY_WRITE_LOCK");
  return mode;
}

static pthread_mutex_t *write_lock(int fd) {
  return write_lock_mode() ? &write_locks[(unsigned)fd % WRITE_LOCKS] : NULL;
}

/*
 * Buffered writes' cost per byte (ns), shared by the copy threads of every
 * job: a moving average kept as the bits of a double, updated without a
 * lock (two threads racing lose one sample, which an average can spare).
 */
static uint64_t cache_cost_bits;
static bool cache_slow;

static bool slow_writes(void) {
  return write_lock_mode() == 1 || (write_lock_mode() == 2 && __atomic_load_n(&cache_slow, __ATOMIC_RELAXED));
}

static void record_cache_write(double ns, size_t bytes) {
  if (bytes < 64 * 1024) return; /* small writes cost their system call more than their bytes */
  uint64_t bits = __atomic_load_n(&cache_cost_bits, __ATOMIC_RELAXED);
  double avg, per = ns / (double)bytes;
  memcpy(&avg, &bits, sizeof avg);
  avg = avg == 0 ? per : avg * 0.8 + per * 0.2;
  memcpy(&bits, &avg, sizeof avg);
  __atomic_store_n(&cache_cost_bits, bits, __ATOMIC_RELAXED);
  if (avg > LOCK_SLOW_NS_PER_BYTE) __atomic_store_n(&cache_slow, true, __ATOMIC_RELAXED);
  else if (avg < LOCK_FAST_NS_PER_BYTE) __atomic_store_n(&cache_slow, false, __ATOMIC_RELAXED);
}

/* directAuto: nanoseconds the last write_full or write_direct_fixed spent writing, the wait for the writers' lock left out (see write_auto); a buffered write taken without that lock counts its spin on the kernel's. */
static __thread double io_ns;
static double now_ns(void);

/*
 * Buffered writes go to the kernel in pieces of at most CACHE_WRITE_MAX
 * bytes, each ending on a multiple of it. The page cache sizes a new folio
 * by the write that asks for it (ext4 has large folios on 6.x kernels), and
 * on a VM whose kernel hands free memory back to the host (free page
 * reporting, here of 2 MiB blocks and up) the large free blocks are the
 * ones handed back: every page of them is a host fault when it is used
 * again. A big folio comes from a big free block, and a file of big folios,
 * once deleted, leaves big free blocks behind to be handed back. Measured
 * on the bench VM: 64 MiB written 8 s after the last conversion freed its
 * memory, `dd bs=4M` 0.16-0.18 s of system time, `bs=1M` 0.02-0.03 s; and
 * D (2 GiB of data) into qcow2, alternating with qemu-img (2 MiB writes at
 * offsets a few 64 KiB into a 2 MiB block: mostly small folios): with 1 MiB
 * pieces one img run in two took 1.26-1.76 s against 0.47-0.68 s, each
 * slow one after the kernel had handed back 300-400 MiB; with 512 KiB
 * pieces every run 0.38-0.46 s and with 64-256 KiB 0.37-0.57 s (qemu-img
 * 0.52-0.71), and after the first round no memory was handed back at all.
 * With warm memory the sizes cost the same (B, 1 GiB: 512 KiB and 256 KiB
 * within 0.03 s). IMG_COPY_CACHE_WRITE_MAX (bytes, 0 for no limit)
 * overrides it, for measuring.
 */
#define CACHE_WRITE_MAX ((size_t)512 * 1024)
static size_t cache_write_max(void) {
  static long long max = -1;
  if (max < 0) {
    const char *env = getenv("IMG_COPY_CACHE_WRITE_MAX");
    max = env && *env ? (long long)strtoull(env, NULL, 10) : (long long)CACHE_WRITE_MAX;
    if (max < 0) max = 0;
  }
  return (size_t)max;
}

static bool install_guard(void);
/* The jump of the guarded access this thread is in (see on_sigbus); volatile: a store the compiler sees overwritten before any read it knows of would otherwise be dropped. */
static __thread sigjmp_buf *volatile guard_jump;

/*
 * A tmpfs destination (shm_map). Every 4 KiB a buffered write puts into a
 * tmpfs file is a new page the kernel allocates, charges and adds to the
 * file's page cache while the write holds the file's inode lock, so two
 * copy threads writing one file take turns: 1 GiB cost one writer
 * 0.37-0.47 s however it was written (session 38). A page fault on a
 * shared mapping of the file allocates its page without that lock. So a
 * data piece that finds the other copy thread writing the file
 * (tmpfs_writing) does not wait: it is written through a mapping of its range
 * (MADV_POPULATE_WRITE allocates the pages, then a memcpy), while the
 * other thread's pwrite goes on. A mapped page costs more than a written
 * one (the fault zeroes it first), so a piece that finds no other writer
 * is written with pwrite as before. A bare loop copying 1 GiB from a qcow2's
 * data in tmpfs into a new tmpfs file on 2 threads: 0.37-0.42 s against
 * 0.47-0.53 s for pwrite alone; img-convert of B (16 GiB, 1 GiB of data in
 * 1 MiB runs) from tmpfs into tmpfs, 7 paired rounds: 40-100 ms less on
 * each of the five bench rows.
 *
 * Only inside the file's size (a mapping past the end is SIGBUS), except
 * for a placing writer's runs (preallocate 2, a new qcow2 whose data is
 * placed at its end): the file is grown to the end of the job's runs first
 * (fallocate of its last byte: a grow that never shrinks what another
 * writer put further, and a page SEEK_DATA still counts as a hole until
 * written), and the writer's final truncation cuts what stays unwritten.
 * A piece that cannot be mapped (no MADV_POPULATE_WRITE before Linux 5.14,
 * a full file system: the populate fails, and the pwrite then reports
 * ENOSPC) is written with pwrite. A SIGBUS in the memcpy (the file cut
 * short by another process meanwhile) jumps back here and the piece goes
 * through pwrite. IMG_COPY_SHM_MAP=0 turns it off, =1 maps every piece it
 * can, other writer or not (for measuring and tests).
 */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define SHM_MAP_MIN ((size_t)64 * 1024)

/* IMG_COPY_SHM_MAP: 0 off, 1 every piece it can, 2 (unset) pieces that find another copy thread writing. */
static int shm_map_mode(void) {
  static int mode = -1;
  if (mode < 0) mode = env_mode("IMG_COPY_SHM_MAP");
  return mode;
}

/* 1 if the piece was written through a shared mapping of the destination, 0 if it must go through pwrite. */
static int write_shared(copy_job *j, const uint8_t *buf, size_t len, off_t off) {
  static long page;
  if (!page) page = sysconf(_SC_PAGESIZE);
  const off_t end = off + (off_t)len;
  if (end > j->dst_size) {
    struct stat st;
    if (stat_fd(j->dst_fd, &st) != 0) return 0;
    j->dst_size = st.st_size;
    if (end > j->dst_size) {
      if (j->preallocate != 2 || j->span_end < end) return 0;
      pthread_mutex_t *l = &write_locks[(unsigned)j->dst_fd % WRITE_LOCKS];
      pthread_mutex_lock(l);
      int r = fallocate(j->dst_fd, 0, j->span_end - 1, 1);
      pthread_mutex_unlock(l);
      if (r != 0) return 0;
      j->dst_size = j->span_end;
    }
  }
  const off_t first = off - off % page;
  size_t span = (size_t)(end - first);
  span = (span + (size_t)page - 1) / (size_t)page * (size_t)page;
  void *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_SHARED, j->dst_fd, first);
  if (m == MAP_FAILED) {
    j->shm_map = false;
    return 0;
  }
  int result = 0;
  if (madvise(m, span, MADV_POPULATE_WRITE) != 0) {
    if (errno == EINVAL) j->shm_map = false; /* a kernel without it */
  } else {
    /* The scan of a mapped source may be guarding its own jump (map_chunk): put it back after. */
    sigjmp_buf *volatile outer = guard_jump;
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0) == 0) {
      guard_jump = &jump;
      memcpy((uint8_t *)m + (off - first), buf, len);
      result = 1;
    } else {
      j->dst_size = 0; /* cut short meanwhile: look again next time */
    }
    guard_jump = outer;
  }
  munmap(m, span);
  if (result) j->bytes_written += (double)len, j->bytes_mapped += (double)len;
  return result;
}

/*
 * Whether a copy thread is writing a tmpfs destination with pwrite, keyed as write_locks. A flag, not
 * pthread_mutex_trylock: that symbol is GLIBC_2.34 (libpthread merged into libc), past the prebuild's floor.
 */
static int tmpfs_writing[WRITE_LOCKS];

static bool write_full(copy_job *j, const uint8_t *buf, size_t len, off_t off) {
  size_t done = 0;
  /* A tmpfs destination: written below when no other copy thread is writing the file, else through a mapping if it can. */
  int *writing = NULL;
  if (j->shm_map && len >= SHM_MAP_MIN) {
    writing = &tmpfs_writing[(unsigned)j->dst_fd % WRITE_LOCKS];
    if (shm_map_mode() == 1 || __atomic_exchange_n(writing, 1, __ATOMIC_ACQUIRE) != 0) {
      writing = NULL;
      if (write_shared(j, buf, len, off)) return true;
    }
  }
  bool ok = true;
  const size_t cap = cache_write_max();
  pthread_mutex_t *lock = slow_writes() ? write_lock(j->dst_fd) : NULL;
  if (lock) pthread_mutex_lock(lock);
  double t0 = now_ns();
  while (done < len) {
    size_t want = len - done;
    if (cap > 0) {
      const size_t to_boundary = cap - (size_t)((uint64_t)(off + (off_t)done) % cap);
      if (want > to_boundary) want = to_boundary;
    }
    ssize_t n = pwrite(j->dst_fd, buf + done, want, off + (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fail(j, n < 0 ? errno : EIO, "write", (double)(off + (off_t)done));
      ok = false;
      break;
    }
    done += (size_t)n;
  }
  const double spent = now_ns() - t0;
  if (j->direct_auto) io_ns = spent;
  if (lock) pthread_mutex_unlock(lock);
  if (writing) __atomic_store_n(writing, 0, __ATOMIC_RELEASE);
  if (write_lock_mode() == 2) record_cache_write(spent, done);
  if (ok) j->bytes_written += (double)len;
  return ok;
}

/*
 * options.directAuto (convert's default cache mode): the copy loop writes
 * each data piece through the page cache or around it (O_DIRECT, whole
 * pages), whichever has cost less per byte lately on this device. Through
 * the cache a write costs a memory copy and a fresh page per 4 KiB; on a VM
 * whose host has taken the guest's free memory back (free page reporting,
 * ballooning) every such page is a host fault, and 1 GiB took 0.7-6 s
 * against 0.5 s for the disk itself, with the same file and the same code
 * a minute apart. Around the cache it costs the disk's time and no CPU.
 * Neither is known in advance, and it changes within a run (freed memory
 * comes back warm), so the loop measures both: each write is timed (the
 * system call only, not the wait for the writers' lock: that wait is the
 * other thread's write, whichever path it took), an average per device and
 * path is kept, and the slower path is tried now and then on a slice of
 * AUTO_PROBE bytes (auto_pick), so that a path that got faster is found
 * again. Direct writes here are whole pages only (4 KiB
 * alignment, not 512): no page is then shared between a direct write and a
 * buffered one of another piece, which the kernel cannot keep coherent when
 * both run at once. The data is the same either way; only where it sits
 * afterwards (the page cache, or the disk) differs. Not on tmpfs or ramfs
 * (no disk under the cache). IMG_COPY_DIRECT_AUTO=0 turns it off, =cache
 * or =direct makes every piece take that path (for measuring).
 */
#define AUTO_DEVS 4
#define AUTO_MIN ((size_t)64 * 1024)
#define AUTO_PROBE ((size_t)256 * 1024)
/* The share of the writing time that probes of the slower path may take. */
#define AUTO_PROBE_SHARE 0.03
enum { PATH_CACHE = 0, PATH_DIRECT = 1 };
static pthread_mutex_t auto_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  dev_t dev;
  bool used;
  double cost[2]; /* nanoseconds per byte, a moving average; 0 until measured */
  double at[2];   /* when each was last measured (CLOCK_MONOTONIC, ns) */
  double spent, probed; /* nanoseconds spent writing, and in probes of the slower path */
} auto_devs[AUTO_DEVS];
/* An average older than this is measured again before it is trusted (the host's state changes between conversions). */
#define AUTO_STALE_NS 1e9
static int auto_next;

/* IMG_COPY_DIRECT_AUTO: 0 off; "cache" or "direct" always that path (for measuring, and tests of both). */
static int direct_auto_env(void) {
  const char *env = getenv("IMG_COPY_DIRECT_AUTO");
  return !env || !*env ? -1 : strcmp(env, "0") == 0 ? 0 : strcmp(env, "cache") == 0 ? 1 : strcmp(env, "direct") == 0 ? 2 : -1;
}

static int auto_slot(dev_t dev) {
  for (int i = 0; i < AUTO_DEVS; i++)
    if (auto_devs[i].used && auto_devs[i].dev == dev) return i;
  int i = auto_next;
  auto_next = (auto_next + 1) % AUTO_DEVS;
  memset(&auto_devs[i], 0, sizeof auto_devs[i]);
  auto_devs[i].used = true, auto_devs[i].dev = dev;
  return i;
}

/*
 * The path for the next piece, and (through *probe) whether it is a probe
 * of the slower one: the first piece goes through the cache, the second
 * probes the disk, and after that the slower path is probed whenever the
 * probes have taken less than AUTO_PROBE_SHARE of the time spent writing
 * (so a slow disk, 50 times the cache's cost, is probed once in hundreds
 * of MiB, and costs a few percent). An average not renewed for a second is
 * forgotten: the next conversion in a long-running process starts by
 * measuring again.
 */
static int auto_pick(copy_job *j, bool *probe) {
  *probe = false;
  if (j->auto_force) return j->auto_force == 2 ? PATH_DIRECT : PATH_CACHE;
  pthread_mutex_lock(&auto_lock);
  int i = auto_slot(j->dst_dev);
  double *c = auto_devs[i].cost;
  const double now = now_ns();
  for (int k = 0; k < 2; k++)
    if (c[k] != 0 && now - auto_devs[i].at[k] > AUTO_STALE_NS) c[k] = 0;
  int path;
  if (c[PATH_CACHE] == 0) path = PATH_CACHE;
  else if (c[PATH_DIRECT] == 0) path = PATH_DIRECT, *probe = true;
  else {
    path = c[PATH_DIRECT] < c[PATH_CACHE] ? PATH_DIRECT : PATH_CACHE;
    if (auto_devs[i].probed < auto_devs[i].spent * AUTO_PROBE_SHARE) path = 1 - path, *probe = true;
  }
  pthread_mutex_unlock(&auto_lock);
  return path;
}

/*
 * A write's cost into the path's average. One sample moves it at most 4
 * times its value: a single slow write (a journal commit, a burst of host
 * faults) does not turn the loop around, a run of them does within a few
 * pieces.
 */
static void auto_record(copy_job *j, int path, bool probe, double ns, size_t bytes) {
  if (bytes == 0 || j->auto_force) return;
  double per = ns / (double)bytes;
  if (per <= 0) per = 1e-6;
  pthread_mutex_lock(&auto_lock);
  int i = auto_slot(j->dst_dev);
  double *c = &auto_devs[i].cost[path];
  const double other = auto_devs[i].cost[1 - path];
  /* A probe that finds the slower path now the cheaper one takes it at once (small conversions cannot wait for an average to catch up). */
  if (*c == 0 || (probe && other > 0 && per < other)) *c = per;
  else *c = *c * 0.7 + (per > 4 * *c ? 4 * *c : per) * 0.3;
  auto_devs[i].at[path] = now_ns();
  auto_devs[i].spent += ns;
  if (probe) auto_devs[i].probed += ns;
  pthread_mutex_unlock(&auto_lock);
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static bool write_direct_fixed(copy_job *j, const uint8_t *buf, size_t len, off_t off);

/* write_direct in auto mode: see above. */
static bool write_auto(copy_job *j, const uint8_t *buf, size_t len, off_t off) {
  const off_t al = DIRECT_ALIGN_MAX;
  off_t end = off + (off_t)len;
  off_t a = (off + al - 1) / al * al, b = end / al * al;
  if (j->direct_fd < 0 || b - a < (off_t)AUTO_MIN || ((uintptr_t)(buf + (a - off)) & (uintptr_t)(al - 1))) return write_full(j, buf, len, off);
  /* The unaligned head and tail through the cache (their pages are never written directly). */
  if (a > off && !write_full(j, buf, (size_t)(a - off), off)) return false;
  const uint8_t *p = buf + (a - off);
  size_t mid = (size_t)(b - a), done = 0;
  while (done < mid) {
    bool probe;
    int path = auto_pick(j, &probe);
    size_t n = mid - done;
    if (probe && n > AUTO_PROBE) n = AUTO_PROBE;
    io_ns = 0;
    bool ok;
    if (path == PATH_DIRECT) {
      ok = write_direct_fixed(j, p + done, n, a + (off_t)done);
      if (!ok) return false;
      if (j->direct_fd < 0) return write_full(j, p + done + n, mid - done - n, a + (off_t)(done + n)) && (end == b || write_full(j, buf + (b - off), (size_t)(end - b), b));
    } else {
      ok = write_full(j, p + done, n, a + (off_t)done);
      if (!ok) return false;
    }
    auto_record(j, path, probe, io_ns, n);
    done += n;
  }
  return end == b || write_full(j, buf + (b - off), (size_t)(end - b), b);
}

/* Whole pages [off, off + len) (aligned, from an aligned buffer) through the O_DIRECT descriptor; where it refuses, through the cache and direct_fd = -1. */
static bool write_direct_fixed(copy_job *j, const uint8_t *buf, size_t len, off_t off) {
  size_t done = 0;
  /*
   * Under the buffered writers' lock too: a direct write into a hole or an
   * unallocated (fallocated) extent takes ext4's inode lock exclusively, and
   * would spin on it behind a slow buffered write.
   */
  pthread_mutex_t *lock = write_lock(j->dst_fd);
  if (lock) pthread_mutex_lock(lock);
  double t0 = now_ns();
  bool ok = true;
  while (done < len) {
    ssize_t n = pwrite(j->direct_fd, buf + done, len - done, off + (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) {
      j->direct_fd = -1;
      break;
    }
    if (n <= 0) {
      fail(j, n < 0 ? errno : EIO, "write", (double)(off + (off_t)done));
      ok = false;
      break;
    }
    done += (size_t)n;
  }
  io_ns = now_ns() - t0;
  if (lock) pthread_mutex_unlock(lock);
  j->bytes_written += (double)done;
  if (!ok) return false;
  return done == len || write_full(j, buf + done, len - done, off + (off_t)done);
}

static bool is_zero(const uint8_t *p, size_t n) {
  size_t i = 0;
  /* Word at a time once aligned; most data granules stop at their first word. */
  while (i < n && ((uintptr_t)(p + i) & 7)) {
    if (p[i]) return false;
    i++;
  }
  const uint64_t *w = (const uint64_t *)(p + i);
  size_t words = (n - i) / 8;
  if (words && w[0]) return false;
  size_t k = 0;
  for (; k + 4 <= words; k += 4)
    if (w[k] | w[k + 1] | w[k + 2] | w[k + 3]) return false;
  for (; k < words; k++)
    if (w[k]) return false;
  for (i += words * 8; i < n; i++)
    if (p[i]) return false;
  return true;
}

/*
 * Splits buf[0, len) (destination offset base) into runs and calls emit for
 * each, with findZeroRuns' rule. Returns false if emit failed.
 */
typedef bool (*emit_fn)(copy_job *j, const uint8_t *buf, size_t start, size_t end, bool zero, double base);

static bool split_zero_runs(copy_job *j, const uint8_t *buf, size_t len, double base, emit_fn emit) {
  size_t g = j->granule;
  uint64_t b = (uint64_t)base;
  /* First pass: maximal runs of one kind, granules aligned to base. */
  size_t run_start = 0;
  bool run_zero = false;
  bool have = false;
  /* The pending output run, after folding. */
  size_t out_start = 0, out_end = 0;
  bool out_zero = false, out_have = false;
  bool first_run = true;
  size_t pos = 0;
#define FLUSH_OUT()                                                        \
  do {                                                                     \
    if (out_have && !emit(j, buf, out_start, out_end, out_zero, base)) return false; \
  } while (0)
#define PUSH_OUT(s, e, z)                                                  \
  do {                                                                     \
    if (out_have && out_zero == (z)) out_end = (e);                        \
    else {                                                                 \
      FLUSH_OUT();                                                         \
      out_start = (s), out_end = (e), out_zero = (z), out_have = true;     \
    }                                                                      \
  } while (0)
  size_t hole = 0;
  /* The first granule ends on the first multiple of g past base; every later one g further (no division per granule: at 512 bytes, a 64-bit division each was most of the scan's time). */
  size_t boundary = (size_t)((b / g + 1) * g - b);
  while (pos < len) {
    size_t next = boundary > len ? len : boundary;
    boundary += g;
    while (hole < j->nholes && j->holes[2 * hole + 1] <= pos) hole++;
    /* A granule inside a file hole is zeros without looking. */
    bool z = (hole < j->nholes && j->holes[2 * hole] <= pos && j->holes[2 * hole + 1] >= next) || is_zero(buf + pos, next - pos);
    if (!have) {
      run_start = pos, run_zero = z, have = true;
    } else if (z != run_zero) {
      /* The run [run_start, pos) is complete and not the last one. */
      bool keep_zero = run_zero && (first_run || pos - run_start >= j->min_zero_run);
      PUSH_OUT(run_start, pos, keep_zero);
      first_run = false;
      run_start = pos, run_zero = z;
    }
    pos = next;
  }
  if (have) PUSH_OUT(run_start, len, run_zero); /* the last run: a zero one is kept whatever its length */
  FLUSH_OUT();
#undef PUSH_OUT
#undef FLUSH_OUT
  return true;
}

/*
 * A zero run over a destination that may hold data (options.zeroTarget):
 * punched (the file system zeroes partial blocks at either end; a block
 * device discards where that reads back as zeros), as qemu-img's
 * write-zeroes with unmap allowed; where the destination cannot punch,
 * zeros are written. Still counted as skipped: nothing was copied.
 */
int img_punch(int fd, off_t off, off_t len); /* space.c */

static bool zero_piece(copy_job *j, size_t len, off_t off) {
  static uint8_t zeros[64 * 1024]; /* never written: in .bss, not 64 KiB of the binary */
  if (len == 0) return true;
  if (j->punch_zeros) {
    pthread_mutex_t *lock = write_lock(j->dst_fd);
    if (lock) pthread_mutex_lock(lock);
    int r = img_punch(j->dst_fd, off, (off_t)len);
    if (lock) pthread_mutex_unlock(lock);
    if (r == 0) return true;
    if (r > 0) {
      fail(j, r, "fallocate", (double)off);
      return false;
    }
    j->punch_zeros = false;
  }
  /* Counted as skipped, not as written data. */
  double written = j->bytes_written;
  for (size_t done = 0; done < len;) {
    size_t n = len - done < sizeof zeros ? len - done : sizeof zeros;
    if (!write_full(j, zeros, n, off + (off_t)done)) return false;
    done += n;
  }
  j->bytes_written = written;
  return true;
}

static bool emit_copy(copy_job *j, const uint8_t *buf, size_t start, size_t end, bool zero, double base) {
  if (zero) {
    j->bytes_skipped += (double)(end - start);
    if (j->zero_target) return zero_piece(j, end - start, (off_t)base + (off_t)start);
    release_piece(j, end - start, (off_t)base + (off_t)start);
    return true;
  }
  prealloc_piece(j, end - start, (off_t)base + (off_t)start);
  return write_direct(j, buf + start, end - start, (off_t)base + (off_t)start);
}

static bool push_piece(copy_job *j, double v) {
  if (j->npieces == j->cap_pieces) {
    size_t cap = j->cap_pieces ? j->cap_pieces * 2 : 256;
    double *grown = realloc(j->pieces, cap * sizeof(double));
    if (!grown) {
      fail(j, ENOMEM, "readRuns", 0);
      return false;
    }
    j->pieces = grown, j->cap_pieces = cap;
  }
  j->pieces[j->npieces++] = v;
  return true;
}

static bool emit_read(copy_job *j, const uint8_t *buf, size_t start, size_t end, bool zero, double base) {
  (void)buf, (void)base;
  if (zero) return true;
  size_t a = j->chunk_at + start, e = j->chunk_at + end;
  return push_piece(j, (double)a) && push_piece(j, (double)e);
}

/*
 * Finds file holes of source bytes [off, off + n) (relative pairs in
 * j->holes) with SEEK_DATA probes HOLE_STEP apart: a probe in data answers
 * at once on every file system, where SEEK_HOLE from inside data walks to
 * the next hole (on tmpfs page by page: asked for each chunk of a dense
 * file, that made copies quadratic). A hole that starts between two probes
 * is found from the next one; what is not found is read, which is never
 * wrong. Bytes at or past the end of the file count as a hole (they read
 * as zeros). A file system that cannot answer turns the search off.
 */
static void find_holes(copy_job *j, off_t off, size_t n) {
  j->nholes = 0;
  if (!j->seek_holes) return;
  off_t pos = off, end = off + (off_t)n;
  while (pos < end && j->nholes < MAX_HOLES) {
    off_t d = lseek(j->src_fd, pos, SEEK_DATA);
    if (d < 0 && errno != ENXIO) {
      j->seek_holes = false;
      j->nholes = 0;
      return;
    }
    if (d < 0 || d > pos) {
      /* A hole from pos to the next data (ENXIO: none, or past the end of the file). */
      off_t stop = d < 0 || d > end ? end : d;
      j->holes[2 * j->nholes] = (size_t)(pos - off);
      j->holes[2 * j->nholes + 1] = (size_t)(stop - off);
      j->nholes++;
      pos = stop;
      continue;
    }
    pos = (pos / HOLE_STEP + 1) * HOLE_STEP;
  }
}

/*
 * Reads source bytes [off, off + n) into buf for a zero scan: the file
 * holes are zero-filled instead of read, and recorded for the scan.
 */
static bool read_chunk(copy_job *j, uint8_t *buf, size_t n, off_t off) {
  find_holes(j, off, n);
  if (j->nholes == 0) return read_full(j, buf, n, off);
  size_t at = 0;
  for (size_t k = 0; k < j->nholes; k++) {
    size_t hs = j->holes[2 * k], he = j->holes[2 * k + 1];
    if (hs > at && !read_full(j, buf + at, hs - at, off + (off_t)at)) return false;
    memset(buf + hs, 0, he - hs);
    j->bytes_read += (double)(he - hs);
    at = he;
  }
  return at >= n || read_full(j, buf + at, n - at, off + (off_t)at);
}

/*
 * Whether copy_file_range into fd's file system is more than a copy through
 * the page cache: a reflink or a server-side copy (XFS, Btrfs, bcachefs,
 * ZFS 2.2's block cloning, NFS 4.2, SMB, Ceph). Everywhere else (tmpfs,
 * ext4, ...) the kernel splices the bytes over in 64 KiB pieces, each a
 * write that takes the destination's inode lock, and maps the source
 * chunk for the zero scan (an munmap each, with a TLB shootdown on every
 * CPU): measured on tmpfs and ext4 with 1 GiB of data in 1 MiB runs on 2
 * threads, pread + scan + pwrite took 0.32-0.37 s and 0.20 s where the
 * mapped scan + copy_file_range took 0.41-0.46 s and 0.30-0.46 s.
 */
static bool offloads_copy(int fd) {
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) return false;
  switch ((unsigned long)fs.f_type & 0xffffffffUL) {
    case 0x58465342UL: /* XFS */
    case 0x9123683eUL: /* Btrfs */
    case 0xca451a4eUL: /* bcachefs */
    case 0x2fc12fc1UL: /* ZFS */
    case 0x6969UL:     /* NFS */
    case 0xfe534d42UL: /* SMB2 */
    case 0xff534d42UL: /* CIFS */
    case 0x00c36400UL: /* Ceph */
      return true;
    default:
      return false;
  }
}

/*
 * fstat without glibc 2.33's fstat symbol: before 2.33, fstat was an inline
 * wrapper of __fxstat, so a helper built on a newer glibc that calls fstat
 * would not load on the older ones Node 20 supports (prebuild.mjs checks the
 * floor). On x86-64 and arm64 glibc's struct stat is the kernel's, so the
 * system call fills it directly. musl has no symbol versions.
 */
static int stat_fd(int fd, struct stat *st) {
#if defined(__GLIBC__) && defined(SYS_fstat)
  return (int)syscall(SYS_fstat, fd, st);
#else
  return fstat(fd, st);
#endif
}

/* Copies one run with copy_file_range; false with j->err unset means "not here: use read/write". */
static bool copy_range(copy_job *j, off_t src, off_t dst, size_t len, size_t *moved) {
  *moved = 0;
  while (*moved < len) {
    if (cancelled(j)) return true;
    loff_t in = src + (off_t)*moved, out = dst + (off_t)*moved;
    size_t want = len - *moved;
    if (want > j->chunk_size) want = j->chunk_size;
    ssize_t n = copy_file_range(j->src_fd, &in, j->dst_fd, &out, want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF || errno == ETXTBSY) {
        j->copy_range = false;
        return false;
      }
      fail(j, errno, "copy_file_range", (double)in);
      return false;
    }
    if (n == 0) return false; /* end of the source: the rest reads as zeros, written below */
    *moved += (size_t)n;
    j->bytes_read += (double)n;
    j->bytes_written += (double)n;
  }
  return true;
}

/*
 * The mapped scan of copyRuns. With zero detection the bytes must be seen,
 * but reading them into a buffer and writing the buffer out copies every
 * byte twice. Instead the source chunk is mapped read-only, scanned in
 * place, and its data runs go file to file with copy_file_range (one copy,
 * in the kernel), or pwrite from the mapping where the kernel cannot.
 * Used where copy_file_range is a reflink or a server-side copy (or the
 * caller asks for it, copyRange 1): on tmpfs it saved CPU (0.43 s against
 * 0.51 s for 1 GiB of data in 1 MiB runs) but lost wall time (see
 * offloads_copy).
 *
 * A chunk is only scanned through its mapping when every page of it is
 * resident (mincore): a page that is not is a hole (on tmpfs, touching a
 * hole through a mapping would allocate it in the source file) or would
 * need disk I/O in a page fault; such a chunk is read with pread as before. A source truncated
 * while it is mapped raises SIGBUS when the scan touches a page past the
 * new end: the handler below jumps back to the chunk, which is then read
 * with pread (past the end: zeros, as everywhere else). Other SIGBUS
 * signals go to the handler that was there before.
 */
static struct sigaction previous_bus;
/* 0: not tried yet, 1: installed, 2: sigaction failed (no mapped scan). Not pthread_once: that symbol is GLIBC_2.34, past the prebuild's floor. */
static int guard_state;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
  sigjmp_buf *jump = guard_jump;
  if (jump) {
    guard_jump = NULL;
    siglongjmp(*jump, 1);
  }
  /* Not a fault of the scan: give the signal to whoever had it before. */
  if (previous_bus.sa_flags & SA_SIGINFO) {
    if (previous_bus.sa_sigaction) {
      previous_bus.sa_sigaction(sig, info, context);
      return;
    }
  } else if (previous_bus.sa_handler != SIG_DFL && previous_bus.sa_handler != SIG_IGN) {
    previous_bus.sa_handler(sig);
    return;
  }
  /* Default action: restore it; a fault then recurs and ends the process as it would have, a sent signal is raised again. */
  signal(SIGBUS, SIG_DFL);
  if (info == NULL || info->si_code <= 0) raise(SIGBUS);
}

static bool install_guard(void) {
  if (__atomic_load_n(&guard_state, __ATOMIC_ACQUIRE) != 0) return guard_state == 1;
  pthread_mutex_lock(&guard_lock);
  if (guard_state == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    /* SA_NODEFER: the jump leaves the handler without restoring the mask, so SIGBUS must not be blocked in it. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    __atomic_store_n(&guard_state, sigaction(SIGBUS, &sa, &previous_bus) == 0 ? 1 : 2, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&guard_lock);
  return guard_state == 1;
}

/* Writes source bytes [src, src + len) to dst; `mapped` holds the same bytes (the pwrite fallback). */
static bool write_mapped(copy_job *j, const uint8_t *mapped, off_t src, off_t dst, size_t len) {
  size_t done = 0;
  while (done < len && j->copy_range) {
    loff_t in = src + (off_t)done, out = dst + (off_t)done;
    ssize_t n = copy_file_range(j->src_fd, &in, j->dst_fd, &out, len - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF || errno == ETXTBSY) {
        j->copy_range = false;
        break;
      }
      fail(j, errno, "copy_file_range", (double)in);
      return false;
    }
    if (n == 0) break; /* the source ended under us: the rest goes from the mapping (pwrite reports EFAULT past the end) */
    done += (size_t)n;
  }
  j->bytes_written += (double)done;
  return done >= len || write_full(j, mapped + done, len - done, dst + (off_t)done);
}

typedef struct {
  const uint8_t *mapped; /* the chunk's first byte in the mapping */
  off_t src;             /* its source offset */
} mapped_chunk;
static __thread mapped_chunk *scan_chunk;

static bool emit_mapped(copy_job *j, const uint8_t *buf, size_t start, size_t end, bool zero, double base) {
  (void)buf;
  if (zero) {
    j->bytes_skipped += (double)(end - start);
    return !j->zero_target || zero_piece(j, end - start, (off_t)base + (off_t)start);
  }
  mapped_chunk *c = scan_chunk;
  return write_mapped(j, c->mapped + start, c->src + (off_t)start, (off_t)base + (off_t)start, end - start);
}

/*
 * Copies source [off, off + n) to destination d through a mapping, with
 * split_zero_runs' rule. Returns 1 when done, 0 when the chunk must be read
 * with pread instead (not mapped: a page not resident, beyond the source's
 * end, or the mapping failed), -1 on an error (j->err set).
 */
static int map_chunk(copy_job *j, off_t off, size_t n, uint64_t d) {
  if (off + (off_t)n > j->src_size) return 0;
  static long page;
  if (!page) page = sysconf(_SC_PAGESIZE);
  off_t first = off - off % page;
  size_t span = (size_t)(off + (off_t)n - first);
  span = (span + (size_t)page - 1) / (size_t)page * (size_t)page;
  void *m = mmap(NULL, span, PROT_READ, MAP_SHARED, j->src_fd, first);
  if (m == MAP_FAILED) {
    j->map_scan = false;
    return 0;
  }
  /*
   * Every page resident, or the chunk goes to pread. On tmpfs a hole has no
   * page, so this also keeps holes untouched (no SEEK_DATA probes needed
   * here: a chunk with a hole is read, and read_chunk probes it).
   */
  int result = 0;
  unsigned char resident[256];
  size_t pages = span / (size_t)page;
  bool all = true;
  for (size_t p = 0; p < pages && all; p += sizeof resident) {
    size_t count = pages - p < sizeof resident ? pages - p : sizeof resident;
    if (mincore((uint8_t *)m + p * (size_t)page, count * (size_t)page, resident) != 0) {
      j->map_scan = false;
      all = false;
      break;
    }
    for (size_t k = 0; k < count && all; k++) all = (resident[k] & 1) != 0;
  }
  if (all) {
    sigjmp_buf jump;
    mapped_chunk c = { (const uint8_t *)m + (off - first), off };
    scan_chunk = &c;
    j->nholes = 0;
    if (sigsetjmp(jump, 0) == 0) {
      guard_jump = &jump;
      bool ok = split_zero_runs(j, c.mapped, n, (double)d, emit_mapped);
      guard_jump = NULL;
      if (ok) {
        j->bytes_read += (double)n;
        result = 1;
      } else {
        result = -1;
      }
    } else {
      /* SIGBUS: the source shrank under the scan; the read path copies the chunk again (past the new end: zeros). */
      j->src_size = 0;
      result = 0;
    }
    scan_chunk = NULL;
  }
  munmap(m, span);
  return result;
}

static void execute_job(copy_job *j);

/* A regular file on tmpfs, with the SIGBUS guard in place (see write_shared). */
static bool shm_map_wanted(int fd) {
  if (shm_map_mode() == 0) return false;
  struct statfs fs;
  struct stat st;
  if (fstatfs(fd, &fs) != 0 || ((unsigned long)fs.f_type & 0xffffffffUL) != 0x01021994UL) return false;
  if (stat_fd(fd, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  return install_guard();
}

/* directAuto at a job's start: the environment's say, and no direct writes into tmpfs or ramfs (nothing under the cache). */
static void auto_setup(copy_job *j) {
  if (!j->direct_auto) return;
  struct statfs fs;
  struct stat st;
  unsigned long type = fstatfs(j->dst_fd, &fs) == 0 ? ((unsigned long)fs.f_type & 0xffffffffUL) : 0;
  int env = direct_auto_env();
  j->auto_force = env > 0 ? env : 0;
  if (env == 0 || stat_fd(j->dst_fd, &st) != 0) j->direct_fd = -1;
  else if (S_ISBLK(st.st_mode)) j->dst_dev = st.st_rdev; /* its node is in devtmpfs (a tmpfs), its bytes on the device */
  else if (type == 0x01021994UL || type == 0x858458f6UL) j->direct_fd = -1;
  else j->dst_dev = st.st_dev;
}

/*
 * writeAt: the caller's bytes to `position`, in chunks, each by write_direct
 * (directAuto: through the cache or around it). A chunk whose bytes do not
 * lie in memory as they will on the disk (its address and its position in
 * different places of a page) is copied into a buffer where they do first.
 */
static void execute_write(copy_job *j) {
  auto_setup(j);
  if (j->direct_fd < 0) {
    write_full(j, j->user, j->user_len, (off_t)j->position);
    return;
  }
  const size_t page = (size_t)DIRECT_ALIGN_MAX;
  for (size_t done = 0; done < j->user_len && !j->err;) {
    uint64_t d = (uint64_t)j->position + done;
    size_t n = j->user_len - done < j->chunk_size ? j->user_len - done : j->chunk_size;
    const uint8_t *src = j->user + done;
    if ((((uintptr_t)src ^ (uintptr_t)d) & (page - 1)) != 0) {
      if (!j->buffer) {
        j->buffer = buffer_get(j->chunk_size + page, &j->buffer_len);
        if (!j->buffer) {
          fail(j, ENOMEM, "writeAt", 0);
          return;
        }
      }
      uint8_t *to = j->buffer + (size_t)(d % page);
      memcpy(to, src, n);
      src = to;
    }
    if (!write_direct(j, src, n, (off_t)d)) return;
    done += n;
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  copy_job *j = data;
  if (j->write_mode) {
    execute_write(j);
    return;
  }
  if (!j->read_mode) {
    j->nowait = true;
    slot_take(j);
  }
  execute_job(j);
  slot_give(j);
}

static void execute_job(copy_job *j) {
  if (!j->read_mode) {
    /* No bigger than the job needs: a batch of small runs takes a small buffer. */
    size_t need = j->chunk_size, total = 0;
    for (size_t r = 0; r < j->nruns && total < need; r++) total += (size_t)j->runs[3 * r + 2];
    if (total < need) need = total ? total : 1;
    auto_setup(j);
    j->shm_map = shm_map_wanted(j->dst_fd);
    for (size_t r = 0; j->shm_map && r < j->nruns; r++)
      if (j->runs[3 * r + 1] + j->runs[3 * r + 2] > (double)j->span_end) j->span_end = (off_t)(j->runs[3 * r + 1] + j->runs[3 * r + 2]);
    /* Direct writes: room to place each chunk at its destination offset's place in a page (see buf below). */
    if (j->direct_fd >= 0) need += (size_t)DIRECT_ALIGN_MAX;
    j->buffer = buffer_get(need, &j->buffer_len);
    if (!j->buffer) {
      fail(j, ENOMEM, "copyRuns", 0);
      return;
    }
  }
  if (j->seek_holes && j->min_zero_run > 0) {
    /* Only a file with fewer blocks than bytes has holes to look for. */
    struct stat st;
    if (stat_fd(j->src_fd, &st) != 0 || !S_ISREG(st.st_mode) || (off_t)st.st_blocks * 512 >= st.st_size) j->seek_holes = false;
  }
  if (!j->read_mode && j->copy_range && j->copy_auto && !offloads_copy(j->dst_fd)) j->copy_range = false, j->map_scan = false;
  if (!j->read_mode && !j->copy_range && j->preallocate != 0) {
    j->prealloc = prealloc_wanted(j->dst_fd);
    prealloc_job(j);
  }
  if (!j->read_mode && j->min_zero_run > 0 && j->map_scan) {
    struct stat st;
    if (!install_guard() || stat_fd(j->src_fd, &st) != 0 || !S_ISREG(st.st_mode)) j->map_scan = false;
    else j->src_size = st.st_size;
  }
  size_t at = 0; /* readRuns: where the next run goes in the buffer */
  for (size_t r = 0; r < j->nruns && !j->err; r++) {
    double src = j->runs[3 * r], dst = j->runs[3 * r + 1], len_d = j->runs[3 * r + 2];
    size_t len = (size_t)len_d;
    size_t done = 0;
    size_t count_index = 0;
    if (j->read_mode) {
      count_index = j->npieces;
      if (!push_piece(j, 0)) return;
    }
    if (!j->read_mode && j->min_zero_run == 0 && j->copy_range) {
      size_t moved;
      bool ok = copy_range(j, (off_t)src, (off_t)dst, len, &moved);
      if (j->err) return;
      if (cancelled(j)) {
        j->cancelled = true;
        return;
      }
      done = moved;
      (void)ok;
    }
    while (done < len) {
      if (cancelled(j)) {
        j->cancelled = true;
        return;
      }
      /* Chunks end at multiples of chunk_size in destination offsets, as sparseCopy's chunks do. */
      uint64_t d = (uint64_t)dst + done;
      size_t n = (size_t)((d / j->chunk_size + 1) * j->chunk_size - d);
      if (n > len - done) n = len - done;
      /*
       * With direct writes the chunk lies in the buffer as it will on the disk: its first byte as far into a page
       * as d is, so that every whole page of the destination is a whole page of the buffer (a VHD's blocks start
       * one 512-byte bitmap into a page).
       */
      uint8_t *buf = j->read_mode ? j->buffer + at : j->direct_fd >= 0 ? j->buffer + (size_t)(d % (uint64_t)DIRECT_ALIGN_MAX) : j->buffer;
      if (!j->read_mode && j->min_zero_run > 0 && j->map_scan) {
        int mapped = map_chunk(j, (off_t)src + (off_t)done, n, d);
        if (mapped < 0) return;
        if (mapped > 0) {
          done += n;
          continue;
        }
      }
      if (j->min_zero_run == 0) {
        j->nholes = 0;
        if (!read_full(j, buf, n, (off_t)src + (off_t)done)) return;
      } else if (!read_chunk(j, buf, n, (off_t)src + (off_t)done)) {
        return;
      }
      if (j->read_mode) {
        if (j->min_zero_run == 0) {
          if (!push_piece(j, (double)at) || !push_piece(j, (double)(at + n))) return;
        } else {
          j->chunk_at = at;
          if (!split_zero_runs(j, buf, n, (double)d, emit_read)) return;
        }
        at += n;
      } else if (j->min_zero_run == 0) {
        prealloc_piece(j, n, (off_t)d);
        if (!write_direct(j, buf, n, (off_t)d)) return;
      } else if (!split_zero_runs(j, buf, n, (double)d, emit_copy)) {
        return;
      }
      done += n;
    }
    if (j->read_mode) {
      /* Count the pairs of this run, joining pairs that touch (chunk boundaries). */
      size_t first = count_index + 1, w = first;
      for (size_t k = first; k + 1 < j->npieces; k += 2) {
        if (w > first && j->pieces[w - 1] == j->pieces[k]) {
          j->pieces[w - 1] = j->pieces[k + 1];
        } else {
          j->pieces[w] = j->pieces[k], j->pieces[w + 1] = j->pieces[k + 1];
          w += 2;
        }
      }
      j->npieces = w;
      j->pieces[count_index] = (double)((w - first) / 2);
    }
  }
}

static napi_value make_error(napi_env env, copy_job *j) {
  char code[32], msg[200];
  snprintf(code, sizeof code, "E%d", j->err);
  snprintf(msg, sizeof msg, "%s at %.0f: %s", j->err_what, j->err_offset, strerror(j->err));
  napi_value code_v, msg_v, err, errno_v, off_v;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v);
  napi_create_error(env, code_v, msg_v, &err);
  napi_create_int32(env, j->err, &errno_v);
  napi_set_named_property(env, err, "errno", errno_v);
  napi_create_double(env, j->err_offset, &off_v);
  napi_set_named_property(env, err, "offset", off_v);
  napi_value syscall;
  napi_create_string_utf8(env, j->err_what, NAPI_AUTO_LENGTH, &syscall);
  napi_set_named_property(env, err, "syscall", syscall);
  return err;
}

static void complete(napi_env env, napi_status status, void *data) {
  copy_job *j = data;
  if (status != napi_ok && !j->err) fail(j, EINTR, "async work", 0);
  if (j->err) {
    napi_reject_deferred(env, j->deferred, make_error(env, j));
  } else {
    size_t n = j->write_mode ? 2 : j->read_mode ? 2 + j->npieces : 5;
    napi_value ab, out;
    void *bytes;
    if (napi_create_arraybuffer(env, n * sizeof(double), &bytes, &ab) == napi_ok &&
        napi_create_typedarray(env, napi_float64_array, n, ab, 0, &out) == napi_ok) {
      double *d = bytes;
      if (j->write_mode) {
        d[0] = j->bytes_written, d[1] = 0;
      } else if (j->read_mode) {
        d[0] = j->bytes_read, d[1] = j->cancelled ? 1 : 0;
        if (j->npieces) memcpy(d + 2, j->pieces, j->npieces * sizeof(double));
      } else {
        d[0] = j->bytes_read, d[1] = j->bytes_written, d[2] = j->bytes_skipped, d[3] = j->cancelled ? 1 : 0, d[4] = j->bytes_mapped;
      }
      napi_resolve_deferred(env, j->deferred, out);
    } else {
      j->err = ENOMEM, j->err_what = "result";
      napi_reject_deferred(env, j->deferred, make_error(env, j));
    }
  }
  if (j->cancel_ref) napi_delete_reference(env, j->cancel_ref);
  if (j->buffer_ref) napi_delete_reference(env, j->buffer_ref);
  napi_delete_async_work(env, j->work);
  if (!j->read_mode) buffer_put(j->buffer, j->buffer_len); /* writeAt: NULL unless it needed one */
  free(j->runs);
  free(j->pieces);
  free(j);
}

static double get_number(napi_env env, napi_value obj, const char *name, double fallback) {
  napi_value v;
  bool has = false;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return fallback;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return fallback;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return fallback;
  if (t == napi_boolean) {
    bool b;
    napi_get_value_bool(env, v, &b);
    return b ? 1 : 0;
  }
  double d;
  if (t != napi_number || napi_get_value_double(env, v, &d) != napi_ok) return fallback;
  return d;
}

static napi_value start(napi_env env, napi_callback_info info, bool read_mode) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  const char *usage = read_mode ? "readRuns(srcFd, runs, buffer, options, cancel)" : "copyRuns(srcFd, dstFd, runs, options, cancel)";
  if (argc < 5) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  int32_t src_fd, dst_fd = -1;
  if (napi_get_value_int32(env, argv[0], &src_fd) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  napi_value runs_v = read_mode ? argv[1] : argv[2];
  napi_value opts_v = argv[3];
  napi_value cancel_v = argv[4];
  if (!read_mode && napi_get_value_int32(env, argv[1], &dst_fd) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  napi_typedarray_type type;
  size_t len;
  void *runs_data;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, runs_v, &type, &len, &runs_data, &ab, &off) != napi_ok || type != napi_float64_array || len % 3 != 0) {
    napi_throw_type_error(env, NULL, "runs must be a Float64Array of (source, destination, length) triples");
    return NULL;
  }
  int32_t *cancel = NULL;
  size_t cancel_len = 0;
  void *cancel_data;
  if (napi_get_typedarray_info(env, cancel_v, &type, &cancel_len, &cancel_data, &ab, &off) != napi_ok || type != napi_int32_array || cancel_len < 1) {
    napi_throw_type_error(env, NULL, "cancel must be an Int32Array");
    return NULL;
  }
  cancel = cancel_data;
  double chunk = get_number(env, opts_v, "chunkSize", 4 * 1024 * 1024);
  double granule = get_number(env, opts_v, "granule", 512);
  double min_zero = get_number(env, opts_v, "minZeroRun", 4096);
  double copy_range = get_number(env, opts_v, "copyRange", 0);
  double probe_holes = get_number(env, opts_v, "probeHoles", 1);
  double preallocate = get_number(env, opts_v, "preallocate", 0);
  double zero_target = read_mode ? 0 : get_number(env, opts_v, "zeroTarget", 0);
  double direct_fd = read_mode ? -1 : get_number(env, opts_v, "directFd", -1);
  double direct_auto = read_mode ? 0 : get_number(env, opts_v, "directAuto", 0);
  if (!(direct_fd == -1 || (direct_fd >= 0 && direct_fd <= 2147483647 && direct_fd == (double)(int32_t)direct_fd))) {
    napi_throw_range_error(env, NULL, "copyRuns: directFd must be a file descriptor or -1");
    return NULL;
  }
  if (!(chunk >= 512 && chunk <= MAX_CHUNK) || !(granule >= 1 && granule <= chunk) || !(min_zero >= 0 && min_zero <= MAX_SAFE)) {
    napi_throw_range_error(env, NULL, "copyRuns: chunkSize must be 512 bytes to 64 MiB, granule 1 to chunkSize");
    return NULL;
  }
  size_t nruns = len / 3;
  double *runs_in = runs_data;
  double total = 0;
  for (size_t r = 0; r < nruns; r++) {
    double s = runs_in[3 * r], d = runs_in[3 * r + 1], n = runs_in[3 * r + 2];
    if (!(s >= 0 && d >= 0 && n >= 0) || s + n > MAX_SAFE || d + n > MAX_SAFE || s != (double)(int64_t)s || d != (double)(int64_t)d || n != (double)(int64_t)n) {
      napi_throw_range_error(env, NULL, "copyRuns: a run's offsets and length must be whole numbers from 0 to 2^53");
      return NULL;
    }
    total += n;
  }
  uint8_t *buffer = NULL;
  size_t buffer_len = 0;
  if (read_mode) {
    void *bdata;
    if (napi_get_typedarray_info(env, argv[2], &type, &buffer_len, &bdata, &ab, &off) != napi_ok || type != napi_uint8_array) {
      napi_throw_type_error(env, NULL, "readRuns: buffer must be a Uint8Array");
      return NULL;
    }
    if (total > (double)buffer_len) {
      napi_throw_range_error(env, NULL, "readRuns: the runs do not fit in the buffer");
      return NULL;
    }
    buffer = bdata;
  }
  copy_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "ENOMEM", "copyRuns: out of memory");
    return NULL;
  }
  j->runs = malloc((nruns ? nruns : 1) * 3 * sizeof(double));
  if (!j->runs) {
    free(j);
    napi_throw_error(env, "ENOMEM", "copyRuns: out of memory");
    return NULL;
  }
  if (nruns) memcpy(j->runs, runs_in, nruns * 3 * sizeof(double));
  j->nruns = nruns;
  j->src_fd = src_fd, j->dst_fd = dst_fd;
  j->read_mode = read_mode;
  j->buffer = buffer, j->buffer_len = buffer_len;
  j->chunk_size = (size_t)chunk, j->granule = (size_t)granule, j->min_zero_run = (size_t)min_zero;
  j->direct_fd = (int)direct_fd;
  j->direct_align = 512;
  /* Direct writes (cache=none) come from the chunk buffer: no copy_file_range (it copies through the page cache), no mapped scan. */
  j->direct_auto = j->direct_fd >= 0 && direct_auto == 1;
  if (j->direct_auto) j->direct_align = DIRECT_ALIGN_MAX;
  /* A file system that copies itself (reflinks) beats either path of directAuto. */
  j->copy_range = copy_range != 0 && (j->direct_fd < 0 || j->direct_auto);
  j->copy_auto = copy_range == 2;
  /* The mapped scan is the zero-detecting form of the kernel copy: the same option allows both. */
  j->map_scan = j->copy_range;
  /* probeHoles 0: the caller's runs are the data its SEEK_DATA walk found, so probes inside them would find nothing. */
  j->seek_holes = probe_holes != 0;
  /* Over a destination that may hold data nothing is allocated ahead: its blocks may be there already. */
  j->zero_target = zero_target == 1;
  j->punch_zeros = true;
  j->preallocate = j->zero_target ? 0 : preallocate == 1 ? 1 : preallocate == 2 ? 2 : 0;
  j->cancel = cancel;
  napi_value keep[] = {cancel_v, argv[2]};
  napi_ref *const refs[] = {&j->cancel_ref, &j->buffer_ref};
  /* readRuns also holds the caller's buffer (copyRuns reads into a chunk buffer of its own). */
  return img_start_work(env, read_mode ? "readRuns" : "copyRuns", read_mode ? "img.readRuns" : "img.copyRuns", execute, complete, j, &j->work, &j->deferred, keep, refs, read_mode ? 2 : 1);
}

/* copyRuns(srcFd, dstFd, runs, options, cancel): see the top of this file. */
napi_value img_copy_runs(napi_env env, napi_callback_info info) {
  return start(env, info, false);
}

/* readRuns(srcFd, runs, buffer, options, cancel): see the top of this file. */
napi_value img_read_runs(napi_env env, napi_callback_info info) {
  return start(env, info, true);
}

/*
 * writeAt(dstFd, buffer, position, options) -> Promise<Float64Array [bytesWritten, 0]>:
 * the buffer's bytes at position, on a pool thread, through write_direct
 * (options.directFd, options.directAuto as copyRuns takes them). For big
 * writes of a format's own (an inflated stream, compressed clusters) into
 * a file that copyRuns would write around the cache too.
 */
napi_value img_write_at(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  const char *usage = "writeAt(dstFd, buffer, position, options)";
  int32_t dst_fd;
  size_t len;
  void *data;
  double position;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &dst_fd) != napi_ok || !img_typed(env, argv[1], napi_uint8_array, &len, &data) ||
      napi_get_value_double(env, argv[2], &position) != napi_ok)
    return img_fail_type(env, usage);
  if (!(position >= 0 && position + (double)len <= MAX_SAFE && position == (double)(int64_t)position)) {
    napi_throw_range_error(env, NULL, "writeAt: position must be a whole number from 0 to 2^53");
    return NULL;
  }
  double direct_fd = get_number(env, argv[3], "directFd", -1);
  double direct_auto = get_number(env, argv[3], "directAuto", 0);
  double chunk = get_number(env, argv[3], "chunkSize", 4 * 1024 * 1024);
  if (!(direct_fd == -1 || (direct_fd >= 0 && direct_fd <= 2147483647 && direct_fd == (double)(int32_t)direct_fd)) || !(chunk >= 4096 && chunk <= MAX_CHUNK)) {
    napi_throw_range_error(env, NULL, "writeAt: directFd must be a file descriptor or -1, chunkSize 4 KiB to 64 MiB");
    return NULL;
  }
  copy_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "ENOMEM", "writeAt: out of memory");
    return NULL;
  }
  j->write_mode = true;
  j->src_fd = -1, j->dst_fd = dst_fd;
  j->user = data, j->user_len = len, j->position = position;
  j->chunk_size = (size_t)chunk;
  j->direct_fd = (int)direct_fd;
  j->direct_auto = j->direct_fd >= 0 && direct_auto == 1;
  j->direct_align = j->direct_auto ? DIRECT_ALIGN_MAX : 512;
  napi_value keep[] = {argv[1]};
  napi_ref *const refs[] = {&j->buffer_ref};
  return img_start_work(env, "writeAt", "img.writeAt", execute, complete, j, &j->work, &j->deferred, keep, refs, 1);
}

/* directAutoAvailable(): true. Its presence tells JavaScript that copyRuns takes options.directAuto (a helper without it would write every page directly). */
napi_value img_direct_auto_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_get_boolean(env, true, &out);
  return out;
}

/* zeroTargetAvailable(): true. Its presence tells JavaScript that copyRuns takes options.zeroTarget (a helper without it would skip those zeros). */
napi_value img_zero_target_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_get_boolean(env, true, &out);
  return out;
}
