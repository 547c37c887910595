/*
 * The floor of a copy on this machine, without img or qemu-img: a cached
 * file copied into a new one in 1 MiB pieces, on 1 or 2 threads taking
 * pieces in turn, by
 *   rw   pread + the zero scan a converter does (one byte per 4 KiB, which
 *        stops at once on random data) + pwrite,
 *   cfr  copy_file_range,
 *   spl  splice through a pipe of 1 MiB per thread (one copy in the kernel,
 *        one write call per piece),
 *   mmw  the piece mapped (mmap of the source), scanned in place and written
 *        from the mapping with pwrite (one copy, by the write).
 *   pipe one thread reads and scans pieces into a ring of buffers, another
 *        writes them (THREADS ignored: the writes never contend for the
 *        output's inode lock).
 *   mmo  the output mapped (its size set first, so no write extends it):
 *        pread from the source straight into the mapping, then the scan
 *        (one copy, by the read; page faults instead of the output's inode
 *        lock).
 * BENCHMARKS.md (sessions 31, 32, 34 and 35) quotes it.
 *
 * Environment:
 *   FLOOR_FALLOC=all  allocate the whole output (fallocate, KEEP_SIZE) before the copy
 *   FLOOR_FALLOC=N    allocate it N MiB at a time, each unit by the thread whose piece starts it
 *   FLOOR_PIECE=N     pieces of N KiB instead of 1 MiB (the buffer each thread reads into and writes from)
 *   FLOOR_WRITE=N     rw: write each piece in pwrites that end on multiples of N KiB (img's 1 MiB cap)
 *   FLOOR_SHIFT=N     place the output N KiB further (a new qcow2's data area starts a few clusters in)
 *   FLOOR_MAP=N       mmw: map N MiB of the source at a time (default 1: each piece alone)
 *   FLOOR_POPULATE=1  mmw: map with MAP_POPULATE (page tables filled at once, not by faults)
 *   FLOOR_SPARSE=1    copy only the source's data (SEEK_DATA/SEEK_HOLE), packed one piece
 *                     after another in the output, as a conversion of a sparse raw into a
 *                     new qcow2 does
 *
 *   gcc -O2 -pthread -o copy-floor copy-floor.c
 *   head -c 1G /dev/urandom > src.bin && cat src.bin > /dev/null
 *   FLOOR_FALLOC=all ./copy-floor rw 2 src.bin dst.bin; rm dst.bin
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { RW, CFR, SPL, MMW, PIPE, MMO };
static unsigned char *out_map;
static int in_fd, out_fd, mode, threads;
static long pieces, unit, map_span = 1 << 20, write_max, shift;
static int map_flags = MAP_SHARED;
static off_t *src_at; /* FLOOR_SPARSE: the source offset of each piece */
static long PIECE = 1 << 20; /* FLOOR_PIECE (KiB) changes it */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *work(void *arg) {
  long first = (long)arg;
  unsigned char *buf = aligned_alloc(4096, PIECE);
  int p[2] = {-1, -1};
  if (mode == SPL && (pipe(p) || fcntl(p[1], F_SETPIPE_SZ, PIECE) < 0)) { perror("pipe"); exit(1); }
  for (long i = first; i < pieces; i += threads) {
    off_t at = src_at ? src_at[i] : i * PIECE, to = shift + i * PIECE;
    if (unit && to % unit == 0) fallocate(out_fd, FALLOC_FL_KEEP_SIZE, to, unit);
    if (mode == CFR) {
      for (long left = PIECE; left > 0;) {
        ssize_t n = copy_file_range(in_fd, &at, out_fd, &to, left, 0);
        if (n <= 0) { perror("copy_file_range"); exit(1); }
        left -= n;
      }
    } else if (mode == SPL) {
      long held = 0;
      while (held < PIECE) {
        ssize_t n = splice(in_fd, &at, p[1], NULL, PIECE - held, SPLICE_F_MOVE);
        if (n <= 0) { perror("splice"); exit(1); }
        held += n;
      }
      while (held > 0) {
        ssize_t n = splice(p[0], NULL, out_fd, &to, held, SPLICE_F_MOVE);
        if (n <= 0) { perror("splice"); exit(1); }
        held -= n;
      }
    } else if (mode == MMW) {
      /* The mapping of the span holding this piece (pieces a thread takes are `threads` apart, so each span is mapped once per thread that copies from it). */
      off_t base = at / map_span * map_span;
      unsigned char *m = mmap(NULL, map_span, PROT_READ, map_flags, in_fd, base);
      if (m == MAP_FAILED) { perror("mmap"); exit(1); }
      const unsigned char *q = m + (at - base);
      volatile long nonzero = 0;
      for (long k = 0; k < PIECE; k += 4096) nonzero += q[k] != 0;
      if (pwrite(out_fd, q, PIECE, to) != PIECE) { perror("pwrite"); exit(1); }
      munmap(m, map_span);
    } else if (mode == MMO) {
      unsigned char *q = out_map + to;
      if (pread(in_fd, q, PIECE, at) != PIECE) { perror("pread"); exit(1); }
      volatile long nonzero = 0;
      for (long k = 0; k < PIECE; k += 4096) nonzero += q[k] != 0;
    } else {
      if (pread(in_fd, buf, PIECE, at) != PIECE) { perror("pread"); exit(1); }
      volatile long nonzero = 0;
      for (long k = 0; k < PIECE; k += 4096) nonzero += buf[k] != 0;
      for (long done = 0; done < PIECE;) {
        long n = write_max ? write_max - (to + done) % write_max : PIECE;
        if (n > PIECE - done) n = PIECE - done;
        if (pwrite(out_fd, buf + done, n, to + done) != n) { perror("pwrite"); exit(1); }
        done += n;
      }
    }
  }
  free(buf);
  return NULL;
}

/* pipe: a ring of RING pieces, filled by the reader, emptied by the writer. */
#define RING 8
static unsigned char *ring[RING];
static long filled, emptied; /* pieces read, pieces written */
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_cond = PTHREAD_COND_INITIALIZER;

static void *pipe_reader(void *arg) {
  (void)arg;
  for (long i = 0; i < pieces; i++) {
    pthread_mutex_lock(&ring_lock);
    while (i - emptied >= RING) pthread_cond_wait(&ring_cond, &ring_lock);
    pthread_mutex_unlock(&ring_lock);
    unsigned char *buf = ring[i % RING];
    off_t at = src_at ? src_at[i] : i * PIECE;
    if (pread(in_fd, buf, PIECE, at) != PIECE) { perror("pread"); exit(1); }
    volatile long nonzero = 0;
    for (long k = 0; k < PIECE; k += 4096) nonzero += buf[k] != 0;
    pthread_mutex_lock(&ring_lock);
    filled = i + 1;
    pthread_cond_broadcast(&ring_cond);
    pthread_mutex_unlock(&ring_lock);
  }
  return NULL;
}

static void *pipe_writer(void *arg) {
  (void)arg;
  for (long i = 0; i < pieces; i++) {
    pthread_mutex_lock(&ring_lock);
    while (filled <= i) pthread_cond_wait(&ring_cond, &ring_lock);
    pthread_mutex_unlock(&ring_lock);
    off_t to = shift + i * PIECE;
    if (unit && to % unit == 0) fallocate(out_fd, FALLOC_FL_KEEP_SIZE, to, unit);
    if (pwrite(out_fd, ring[i % RING], PIECE, to) != PIECE) { perror("pwrite"); exit(1); }
    pthread_mutex_lock(&ring_lock);
    emptied = i + 1;
    pthread_cond_broadcast(&ring_cond);
    pthread_mutex_unlock(&ring_lock);
  }
  return NULL;
}

int main(int argc, char **argv) {
  mode = argc == 5 && !strcmp(argv[1], "rw") ? RW : argc == 5 && !strcmp(argv[1], "cfr") ? CFR : argc == 5 && !strcmp(argv[1], "spl") ? SPL : argc == 5 && !strcmp(argv[1], "mmw") ? MMW : argc == 5 && !strcmp(argv[1], "pipe") ? PIPE : argc == 5 && !strcmp(argv[1], "mmo") ? MMO : -1;
  if (mode < 0) {
    fprintf(stderr, "usage: [FLOOR_FALLOC=all|MiB] [FLOOR_SPARSE=1] copy-floor rw|cfr|spl|mmw|pipe|mmo THREADS SRC DST\n");
    return 2;
  }
  threads = atoi(argv[2]);
  if (threads < 1 || threads > 8) threads = 1;
  in_fd = open(argv[3], O_RDONLY);
  unlink(argv[4]);
  out_fd = open(argv[4], (mode == MMO ? O_RDWR : O_WRONLY) | O_CREAT | O_TRUNC, 0644);
  if (in_fd < 0 || out_fd < 0) { perror("open"); return 1; }
  struct stat st;
  fstat(in_fd, &st);
  const char *piece = getenv("FLOOR_PIECE"), *wmax = getenv("FLOOR_WRITE"), *sh = getenv("FLOOR_SHIFT");
  if (wmax) write_max = atol(wmax) * 1024;
  if (sh) shift = atol(sh) * 1024;
  if (piece && atol(piece) >= 4) PIECE = atol(piece) * 1024;
  pieces = st.st_size / PIECE;
  const char *sparse = getenv("FLOOR_SPARSE"), *falloc = getenv("FLOOR_FALLOC");
  if (sparse && !strcmp(sparse, "1")) {
    src_at = malloc(sizeof *src_at * (size_t)pieces);
    long n = 0;
    for (off_t pos = 0;;) {
      off_t d = lseek(in_fd, pos, SEEK_DATA);
      if (d < 0) break;
      off_t h = lseek(in_fd, d, SEEK_HOLE);
      for (off_t x = d; x + PIECE <= h && n < pieces; x += PIECE) src_at[n++] = x;
      pos = h;
    }
    pieces = n;
  }
  const char *map = getenv("FLOOR_MAP"), *populate = getenv("FLOOR_POPULATE");
  if (map && atol(map) > 0) map_span = atol(map) * PIECE;
  if (populate && !strcmp(populate, "1")) map_flags |= MAP_POPULATE;
  double start = now();
  if (falloc && !strcmp(falloc, "all")) fallocate(out_fd, FALLOC_FL_KEEP_SIZE, shift, pieces * PIECE);
  else if (falloc) unit = atol(falloc) * PIECE;
  if (mode == MMO) {
    size_t len = (size_t)(shift + pieces * PIECE);
    if (ftruncate(out_fd, (off_t)len) != 0) { perror("ftruncate"); return 1; }
    out_map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, out_fd, 0);
    if (out_map == MAP_FAILED) { perror("mmap"); return 1; }
  }
  pthread_t t[8];
  if (mode == PIPE) {
    for (int i = 0; i < RING; i++) ring[i] = aligned_alloc(4096, PIECE);
    pthread_create(&t[0], NULL, pipe_reader, NULL);
    pthread_create(&t[1], NULL, pipe_writer, NULL);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    printf("pipe: %.3f s\n", now() - start);
    return 0;
  }
  for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)i);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  if (out_map) munmap(out_map, (size_t)(shift + pieces * PIECE));
  printf("%s x%d: %.3f s\n", argv[1], threads, now() - start);
  return 0;
}
