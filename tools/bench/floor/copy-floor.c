/*
 * The floor of a copy on this machine, without img or qemu-img: a cached
 * file copied into a new one in 1 MiB pieces, by pread + pwrite (with the
 * zero scan a converter does, one byte per 4 KiB, which stops at once on
 * random data) or by copy_file_range, on 1 or 2 threads taking pieces in
 * turn. BENCHMARKS.md (session 31) quotes it.
 *
 *   gcc -O2 -pthread -o copy-floor copy-floor.c
 *   head -c 1G /dev/urandom > src.bin && cat src.bin > /dev/null
 *   ./copy-floor rw 2 src.bin dst.bin; rm dst.bin
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int in_fd, out_fd, use_cfr, threads;
static long pieces;
static const long PIECE = 1 << 20;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *work(void *arg) {
  long first = (long)arg;
  unsigned char *buf = aligned_alloc(4096, PIECE);
  for (long i = first; i < pieces; i += threads) {
    off_t at = i * PIECE, to = at;
    if (use_cfr) {
      for (long left = PIECE; left > 0;) {
        ssize_t n = copy_file_range(in_fd, &at, out_fd, &to, left, 0);
        if (n <= 0) { perror("copy_file_range"); exit(1); }
        left -= n;
      }
    } else {
      if (pread(in_fd, buf, PIECE, at) != PIECE) { perror("pread"); exit(1); }
      volatile long nonzero = 0;
      for (long k = 0; k < PIECE; k += 4096) nonzero += buf[k] != 0;
      if (pwrite(out_fd, buf, PIECE, at) != PIECE) { perror("pwrite"); exit(1); }
    }
  }
  free(buf);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5 || (strcmp(argv[1], "rw") && strcmp(argv[1], "cfr"))) {
    fprintf(stderr, "usage: copy-floor rw|cfr THREADS SRC DST\n");
    return 2;
  }
  use_cfr = !strcmp(argv[1], "cfr");
  threads = atoi(argv[2]);
  if (threads < 1 || threads > 8) threads = 1;
  in_fd = open(argv[3], O_RDONLY);
  unlink(argv[4]);
  out_fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in_fd < 0 || out_fd < 0) { perror("open"); return 1; }
  struct stat st;
  fstat(in_fd, &st);
  pieces = st.st_size / PIECE;
  double start = now();
  pthread_t t[8];
  for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)i);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  printf("%s x%d: %.3f s\n", argv[1], threads, now() - start);
  return 0;
}
