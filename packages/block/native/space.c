/*
 * punchHoles(fd, ranges): deallocates (offset, length) pairs of a
 * Float64Array, in order, on a pool thread (fallocate PUNCH_HOLE with
 * KEEP_SIZE: each range reads as zeros, the size stays). Resolves with
 * [pairs done, errno of the first that failed or 0]; the caller decides
 * which errors mean "this file system or device cannot punch".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "napi-work.h"

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  double *pairs;
  size_t npairs;
  double done, err;
} punch_job;

static void execute(napi_env env, void *data) {
  (void)env;
  punch_job *j = data;
  for (size_t i = 0; i < j->npairs; i++) {
    off_t off = (off_t)j->pairs[2 * i], len = (off_t)j->pairs[2 * i + 1];
    if (len > 0) {
      int r;
      while ((r = fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len)) != 0 && errno == EINTR) {
      }
      if (r != 0) {
        j->err = errno;
        return;
      }
    }
    j->done = (double)(i + 1);
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  punch_job *j = data;
  napi_value ab, out;
  void *bytes;
  if (status == napi_ok && napi_create_arraybuffer(env, 2 * sizeof(double), &bytes, &ab) == napi_ok && napi_create_typedarray(env, napi_float64_array, 2, ab, 0, &out) == napi_ok) {
    double r[2] = {j->done, j->err};
    memcpy(bytes, r, sizeof r);
    napi_resolve_deferred(env, j->deferred, out);
  } else {
    img_reject(env, j->deferred, status == napi_ok ? "punchHoles: out of memory for the result" : "punchHoles: the work was cancelled");
  }
  napi_delete_async_work(env, j->work);
  free(j->pairs);
  free(j);
}

napi_value img_punch_holes(napi_env env, napi_callback_info info) {
  static const char *usage = "punchHoles(fd: number, ranges: Float64Array of (offset, length) pairs)";
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return img_fail_type(env, usage);
  int32_t fd;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return img_fail_type(env, usage);
  size_t n;
  void *values;
  if (!img_typed(env, argv[1], napi_float64_array, &n, &values) || n % 2 != 0) return img_fail_type(env, usage);
  const double *p = values;
  for (size_t i = 0; i < n; i++) {
    if (!(p[i] >= 0 && p[i] <= 9007199254740991.0) || p[i] != (double)(int64_t)p[i]) {
      napi_throw_range_error(env, NULL, "punchHoles: offsets and lengths must be whole numbers from 0 to 2^53 - 1");
      return NULL;
    }
  }
  punch_job *j = calloc(1, sizeof *j);
  if (j) j->pairs = malloc((n ? n : 1) * sizeof(double));
  if (!j || !j->pairs) {
    free(j);
    napi_throw_error(env, "ENOMEM", "punchHoles: out of memory");
    return NULL;
  }
  if (n) memcpy(j->pairs, p, n * sizeof(double));
  j->npairs = n / 2;
  j->fd = fd;
  return img_start_work(env, "punchHoles", "img.punchHoles", execute, complete, j, &j->work, &j->deferred, NULL, NULL, 0);
}
