/*
 * Hole punching (fallocate PUNCH_HOLE with KEEP_SIZE: the range reads as
 * zeros, the size stays), for the copy loop's zero runs over a target that
 * may hold data (copy.c's zero_piece) and for FileStorage.punchHole
 * (punchHole(fd, offset, length) on a pool thread). One rule for both of
 * which failures mean "this destination cannot punch" (the caller writes
 * zeros instead).
 *
 * And the reverse, FileStorage.allocate (allocateRange(fd, offset,
 * length)): fallocate mode 0 gives the range blocks that read as zeros,
 * growing the file if it ends before, as qemu's preallocation=falloc does.
 * Where the file system cannot, the caller writes zeros.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include "napi-work.h"

/* 0: punched; -1: this file system, device or kernel cannot punch; else the errno of the failure. */
int img_punch(int fd, off_t off, off_t len) {
  if (len <= 0) return 0;
  while (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0) {
    if (errno == EINTR) continue;
    return errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ENODEV ? -1 : errno;
  }
  return 0;
}

/* 0: allocated; -1: this file system, device or kernel cannot; else the errno of the failure (ENOSPC: full). */
static int img_allocate(int fd, off_t off, off_t len) {
  if (len <= 0) return 0;
  while (fallocate(fd, 0, off, len) != 0) {
    if (errno == EINTR) continue;
    return errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ENODEV ? -1 : errno;
  }
  return 0;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  off_t off, len;
  bool allocate; /* allocateRange, not punchHole */
  int result;
} punch_job;

static void execute(napi_env env, void *data) {
  (void)env;
  punch_job *j = data;
  j->result = j->allocate ? img_allocate(j->fd, j->off, j->len) : img_punch(j->fd, j->off, j->len);
}

static void complete(napi_env env, napi_status status, void *data) {
  punch_job *j = data;
  napi_value out;
  if (status == napi_ok && napi_create_int32(env, j->result, &out) == napi_ok) napi_resolve_deferred(env, j->deferred, out);
  else img_reject(env, j->deferred, j->allocate ? "allocateRange: the work was cancelled" : "punchHole: the work was cancelled");
  napi_delete_async_work(env, j->work);
  free(j);
}

/* punchHole / allocateRange (fd, offset, length) -> Promise of img_punch's / img_allocate's answer. */
static napi_value start_space_job(napi_env env, napi_callback_info info, bool allocate) {
  const char *name = allocate ? "allocateRange" : "punchHole";
  const char *usage = allocate ? "allocateRange(fd: number, offset: number, length: number)" : "punchHole(fd: number, offset: number, length: number)";
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t off, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return img_fail_type(env, usage);
  if (napi_get_value_int64(env, argv[1], &off) != napi_ok || napi_get_value_int64(env, argv[2], &len) != napi_ok || off < 0 || len < 0) {
    napi_throw_range_error(env, NULL, allocate ? "allocateRange: offset and length must be whole numbers from 0 to 2^53 - 1" : "punchHole: offset and length must be whole numbers from 0 to 2^53 - 1");
    return NULL;
  }
  punch_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "ENOMEM", allocate ? "allocateRange: out of memory" : "punchHole: out of memory");
    return NULL;
  }
  j->fd = fd, j->off = (off_t)off, j->len = (off_t)len, j->allocate = allocate;
  return img_start_work(env, name, allocate ? "img.allocateRange" : "img.punchHole", execute, complete, j, &j->work, &j->deferred, NULL, NULL, 0);
}

napi_value img_punch_hole(napi_env env, napi_callback_info info) {
  return start_space_job(env, info, false);
}

napi_value img_allocate_range(napi_env env, napi_callback_info info) {
  return start_space_job(env, info, true);
}
