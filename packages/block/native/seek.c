/*
 * The optional native helper of @img/block (Linux and other systems with
 * SEEK_DATA; Node has neither lseek, preadv2 flags nor fcntl locks).
 *
 * seek_ranges(fd, offset, length[, maxRuns]) -> Float64Array [start0, end0, start1, end1, ...[, reach]]
 *
 * When the last data run goes on past offset+length, its end there is
 * given, and one more number follows: where that run really ends (its
 * SEEK_HOLE). Asking it cost the kernel the walk to it (tmpfs walks page
 * by page), so a caller may keep it instead of asking again.
 *
 * The data runs of [offset, offset+length) of an open file, found with
 * lseek(SEEK_DATA / SEEK_HOLE): holes are never read. Node has no lseek,
 * so this is the one native helper of @img/block; it is optional and the
 * raw driver falls back to reading (and zero-scanning) everything.
 *
 * lseek moves the descriptor's cursor; FileStorage only uses positional
 * I/O (pread/pwrite), so the cursor is never relied on. Runs on the main
 * thread: SEEK_DATA/SEEK_HOLE answer from the file system's extent tree
 * without I/O on the file's data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/uio.h>
#include <node_api.h>
#include "napi-work.h"

#define CHECK(call)                                  \
  do {                                               \
    if ((call) != napi_ok) return NULL;              \
  } while (0)

static napi_value throw_errno(napi_env env, int err, const char *what) {
  char code[32];
  char msg[160];
  snprintf(code, sizeof code, "E%d", err);
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, code, msg);
  return NULL;
}

/*
 * With maxRuns > 0 the walk stops after that many data runs, so a file of
 * millions of runs is asked a bounded piece at a time: the answer then
 * covers [offset, end of its last run), and the caller asks again from
 * there. An older helper ignores the argument and answers the whole
 * window, which callers accept as well.
 *
 * With a unit > 1 (seekRanges(fd, offset, length, maxRuns, unit)), a run
 * is widened to the units it touches (aligned to multiples of unit, cut at
 * offset and at the window's end) and the walk asks on from the end of its
 * last unit: two lseeks per run of units holding data, not per run of the
 * file (a caller that counts clusters needs no more). Runs that meet are
 * joined. An older helper ignores it: the runs are then exact, which such
 * callers accept as well.
 */
static napi_value seek_ranges(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) {
    napi_throw_type_error(env, NULL, "seekRanges(fd, offset, length)");
    return NULL;
  }
  int32_t fd;
  double offset_d, length_d;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[1], &offset_d));
  CHECK(napi_get_value_double(env, argv[2], &length_d));
  double max_runs_d = 0;
  if (argc >= 4) {
    napi_valuetype t;
    CHECK(napi_typeof(env, argv[3], &t));
    if (t == napi_number) CHECK(napi_get_value_double(env, argv[3], &max_runs_d));
  }
  if (!(max_runs_d >= 0)) max_runs_d = 0;
  const size_t max_n = max_runs_d >= 1 && max_runs_d < 1e9 ? 2 * (size_t)max_runs_d : 0;
  double unit_d = 1;
  if (argc >= 5) {
    napi_valuetype t;
    CHECK(napi_typeof(env, argv[4], &t));
    if (t == napi_number) CHECK(napi_get_value_double(env, argv[4], &unit_d));
  }
  /* At most 1 GiB, and a whole number: anything else is taken as 1 (exact runs). */
  const off_t unit = unit_d >= 2 && unit_d <= 1073741824.0 && unit_d == (double)(off_t)unit_d ? (off_t)unit_d : 1;
  if (offset_d < 0 || length_d < 0 || offset_d + length_d > 9007199254740991.0) {
    napi_throw_range_error(env, NULL, "seekRanges: offset/length out of range");
    return NULL;
  }
  off_t pos = (off_t)offset_d;
  off_t end = (off_t)(offset_d + length_d);

  size_t cap = 64, n = 0;
  off_t reach = 0; /* the real end of a last run cut at end */
  double *runs = malloc(cap * sizeof(double));
  if (!runs) return throw_errno(env, ENOMEM, "seekRanges");
  while (pos < end && (max_n == 0 || n < max_n)) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* no data past pos: the rest is a hole */
      int err = errno;
      free(runs);
      return throw_errno(env, err, "lseek(SEEK_DATA)");
    }
    if (data >= end) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      int err = errno;
      free(runs);
      return throw_errno(env, err, "lseek(SEEK_HOLE)");
    }
    if (hole <= data) break; /* cannot happen on a sane file system; never loop forever */
    if (unit > 1) {
      off_t first = data - data % unit;
      data = first < pos ? pos : first;
      if (hole % unit) hole += unit - hole % unit;
    }
    if (hole > end) reach = hole, hole = end;
    if (n + 3 > cap) { /* one to spare for reach */
      cap *= 2;
      double *grown = realloc(runs, cap * sizeof(double));
      if (!grown) {
        free(runs);
        return throw_errno(env, ENOMEM, "seekRanges");
      }
      runs = grown;
    }
    if (n >= 2 && runs[n - 1] >= (double)data) {
      runs[n - 1] = (double)hole; /* units that meet: one run */
    } else {
      runs[n++] = (double)data;
      runs[n++] = (double)hole;
    }
    pos = hole;
  }

  if (reach > 0) runs[n++] = (double)reach;
  napi_value ab, out;
  void *bytes;
  if (napi_create_arraybuffer(env, n * sizeof(double), &bytes, &ab) != napi_ok) {
    free(runs);
    return NULL;
  }
  if (n) memcpy(bytes, runs, n * sizeof(double));
  free(runs);
  CHECK(napi_create_typedarray(env, napi_float64_array, n, ab, 0, &out));
  return out;
}

/*
 * nowait(write, fd, bytes, position) -> bytes transferred (>= 0), -1 if the
 * request would block (data not in the page cache, dirty throttling), -2 if
 * the kernel or file system does not support RWF_NOWAIT here.
 *
 * preadv2/pwritev2 with RWF_NOWAIT on the main thread: a page-cache hit
 * costs a memcpy, where a libuv pool round trip costs two thread handoffs
 * (tens of microseconds on a busy machine, more than a 4 KiB copy). It
 * never waits for the disk: anything that would is answered -1 and the
 * caller goes through the pool as before. Any other error is also -1: the
 * pool's attempt reports it with Node's usual error.
 */
static napi_value nowait_io(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "nowait(write, fd, bytes, position)");
    return NULL;
  }
  bool write;
  int32_t fd;
  double position_d;
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value ab;
  size_t byte_offset;
  CHECK(napi_get_value_bool(env, argv[0], &write));
  CHECK(napi_get_value_int32(env, argv[1], &fd));
  if (napi_get_typedarray_info(env, argv[2], &type, &length, &data, &ab, &byte_offset) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "nowait: bytes must be a Uint8Array");
    return NULL;
  }
  CHECK(napi_get_value_double(env, argv[3], &position_d));
  double result = -2;
#ifdef RWF_NOWAIT
  if (position_d < 0 || position_d > 9007199254740991.0) {
    napi_throw_range_error(env, NULL, "nowait: position out of range");
    return NULL;
  }
  struct iovec iov = {data, length};
  ssize_t n = write ? pwritev2(fd, &iov, 1, (off_t)position_d, RWF_NOWAIT) : preadv2(fd, &iov, 1, (off_t)position_d, RWF_NOWAIT);
  if (n >= 0) result = (double)n;
  else if (errno == EOPNOTSUPP || errno == ENOSYS || (errno == EINVAL && !write)) result = -2;
  else result = -1;
#endif
  napi_value out;
  CHECK(napi_create_double(env, result, &out));
  return out;
}

/*
 * Byte-range locks as qemu's file-posix driver takes them: shared (read)
 * locks on single bytes, one byte per permission an image user takes or
 * refuses to share (see src/node/image-lock.ts for the meaning of the
 * bytes). Open-file-description locks (F_OFD_*, Linux 3.15+) belong to the
 * descriptor: two opens in one process see each other, and closing one
 * descriptor releases only its own locks. Where the kernel lacks them, the
 * classic process-wide F_SETLK/F_GETLK are used, as qemu does; those cannot
 * see the same process's other opens and are dropped when the process
 * closes any descriptor of the file.
 */
static int ofd_locks = -1; /* -1: not probed yet, 1: F_OFD_* work, 0: classic locks */

static int lock_cmd(int fd, bool test) {
#ifdef F_OFD_SETLK
  if (ofd_locks < 0) {
    struct flock probe = {0};
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    ofd_locks = (fcntl(fd, F_OFD_GETLK, &probe) == 0 || errno != EINVAL) ? 1 : 0;
  }
  if (ofd_locks == 1) return test ? F_OFD_GETLK : F_OFD_SETLK;
#else
  (void)fd;
  ofd_locks = 0;
#endif
  return test ? F_GETLK : F_SETLK;
}

static bool lock_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, int32_t *fd, double *byte) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  if (argc < want) {
    napi_throw_type_error(env, NULL, want == 3 ? "lockByte(fd, byte, set)" : "lockTest(fd, byte)");
    return false;
  }
  if (napi_get_value_int32(env, argv[0], fd) != napi_ok || napi_get_value_double(env, argv[1], byte) != napi_ok) return false;
  if (*byte < 0 || *byte > 1e9) {
    napi_throw_range_error(env, NULL, "lock byte out of range");
    return false;
  }
  return true;
}

/* lockByte(fd, byte, set) -> 0, or the errno of a failed fcntl (never blocks). */
static napi_value lock_byte(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  double byte;
  bool set;
  if (!lock_args(env, info, 3, argv, &fd, &byte)) return NULL;
  CHECK(napi_get_value_bool(env, argv[2], &set));
  struct flock fl = {0};
  fl.l_type = set ? F_RDLCK : F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)byte;
  fl.l_len = 1;
  int result = fcntl(fd, lock_cmd(fd, false), &fl) == 0 ? 0 : errno;
  napi_value out;
  CHECK(napi_create_int32(env, result, &out));
  return out;
}

/*
 * lockTest(fd, byte) -> 0 if no other open file description (other process,
 * for classic locks) holds a lock on the byte, 1 if one does, -errno if the
 * test failed. Asks as a writer would: any lock, shared or not, is reported.
 */
static napi_value lock_test(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  double byte;
  if (!lock_args(env, info, 2, argv, &fd, &byte)) return NULL;
  struct flock fl = {0};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)byte;
  fl.l_len = 1;
  int result = fcntl(fd, lock_cmd(fd, true), &fl) == 0 ? (fl.l_type == F_UNLCK ? 0 : 1) : -errno;
  napi_value out;
  CHECK(napi_create_int32(env, result, &out));
  return out;
}

/* lockStyle(fd) -> "ofd" (per open file description) or "posix" (per process). */
static napi_value lock_style(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) {
    napi_throw_type_error(env, NULL, "lockStyle(fd)");
    return NULL;
  }
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  lock_cmd(fd, true);
  napi_value out;
  CHECK(napi_create_string_utf8(env, ofd_locks == 1 ? "ofd" : "posix", NAPI_AUTO_LENGTH, &out));
  return out;
}

/* The other files' entry points (copy.c, inflate.c, zstd.c, space.c, pbkdf2.c), exported with this file's under these names. */
napi_value img_copy_runs(napi_env env, napi_callback_info info);
napi_value img_read_runs(napi_env env, napi_callback_info info);
napi_value img_zero_target_available(napi_env env, napi_callback_info info);
napi_value img_direct_auto_available(napi_env env, napi_callback_info info);
napi_value img_write_at(napi_env env, napi_callback_info info);
napi_value img_inflate_into(napi_env env, napi_callback_info info);
napi_value img_inflate_available(napi_env env, napi_callback_info info);
napi_value img_zstd_clusters(napi_env env, napi_callback_info info);
napi_value img_zstd_version(napi_env env, napi_callback_info info);
napi_value img_punch_hole(napi_env env, napi_callback_info info);
napi_value img_allocate_range(napi_env env, napi_callback_info info);
napi_value img_pbkdf2(napi_env env, napi_callback_info info);
napi_value img_pbkdf2_hashes(napi_env env, napi_callback_info info);

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  static const struct {
    const char *name;
    napi_callback cb;
  } entries[] = {
      {"copyRuns", img_copy_runs},   {"readRuns", img_read_runs}, {"inflateInto", img_inflate_into}, {"inflateAvailable", img_inflate_available},
      {"zstdClusters", img_zstd_clusters}, {"zstdVersion", img_zstd_version}, {"zeroTargetAvailable", img_zero_target_available}, {"directAutoAvailable", img_direct_auto_available}, {"writeAt", img_write_at}, {"seekRanges", seek_ranges}, {"nowait", nowait_io},
      {"lockByte", lock_byte},       {"lockTest", lock_test},     {"lockStyle", lock_style},     {"punchHole", img_punch_hole}, {"allocateRange", img_allocate_range}, {"pbkdf2", img_pbkdf2}, {"pbkdf2Hashes", img_pbkdf2_hashes},
  };
  for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) CHECK(img_export(env, exports, entries[i].name, entries[i].cb));
  return exports;
}
