/*
 * zstdClusters: compresses runs of whole clusters (qcow2 `-c` with
 * compression_type=zstd) with the system's libzstd, on one of libuv's pool
 * threads per call, each cluster straight into its place in an output
 * buffer.
 *
 * Why here: the JavaScript encoders make one output buffer per cluster and
 * run in worker threads that the data has to be copied to and whose
 * garbage has to be collected; at 64 KiB a cluster, that costs a third
 * again of what libzstd itself spends. One call per batch, one compression
 * context per pool thread (reused, as qemu reuses its own), no allocation
 * per cluster.
 *
 * libzstd is found at run time (uv_dlopen of libzstd.so.1, which every
 * common Linux system has: qemu, systemd and apt use it), never linked, so
 * the helper loads where it is missing; zstdVersion() then answers 0 and
 * callers keep their JavaScript encoders. The one-shot ZSTD_compressCCtx
 * writes the frame qemu writes: single segment, with the content size, no
 * checksum.
 *
 * zstdVersion(): number
 *   libzstd's version (10504 for 1.5.4), or 0 where it is not available.
 * zstdClusters(input: Uint8Array, clusterSize: number, level: number,
 *              output: Uint8Array, sizes: Int32Array): Promise<number>
 *   Cuts input into clusters of clusterSize bytes (a short last one is
 *   compressed as if padded with zeros to a whole cluster) and compresses
 *   each as one frame at `level`. Frames smaller than a cluster are packed
 *   one after another from the start of output and sizes[i] says how long
 *   cluster i's is; a cluster whose frame would not be smaller gets -1 and
 *   nothing in output. Resolves to the bytes written. output must hold
 *   sizes.length whole clusters; sizes.length is the number of clusters.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "napi-work.h"

/* The few libzstd entry points used, by their stable ABI (zstd.h, "stable API"). */
typedef struct zstd_cctx zstd_cctx;
static struct {
  unsigned (*version_number)(void);
  zstd_cctx *(*create_cctx)(void);
  size_t (*compress_cctx)(zstd_cctx *, void *, size_t, const void *, size_t, int);
  size_t (*compress_bound)(size_t);
  unsigned (*is_error)(size_t);
  const char *(*error_name)(size_t);
} Z;

static uv_once_t load_once = UV_ONCE_INIT;
static uv_lib_t zstd_lib;
static unsigned zstd_version;

/* qemu needs libzstd 1.4.0 for its zstd clusters: nothing older is used. */
#define ZSTD_OLDEST 10400

static void load_zstd(void) {
  static const char *names[] = {"libzstd.so.1", "libzstd.1.dylib", "libzstd.so", "libzstd.dylib"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (uv_dlopen(names[i], &zstd_lib) != 0) {
      uv_dlclose(&zstd_lib); /* frees the error message */
      continue;
    }
    bool ok = uv_dlsym(&zstd_lib, "ZSTD_versionNumber", (void **)&Z.version_number) == 0 &&
              uv_dlsym(&zstd_lib, "ZSTD_createCCtx", (void **)&Z.create_cctx) == 0 &&
              uv_dlsym(&zstd_lib, "ZSTD_compressCCtx", (void **)&Z.compress_cctx) == 0 &&
              uv_dlsym(&zstd_lib, "ZSTD_compressBound", (void **)&Z.compress_bound) == 0 &&
              uv_dlsym(&zstd_lib, "ZSTD_isError", (void **)&Z.is_error) == 0 &&
              uv_dlsym(&zstd_lib, "ZSTD_getErrorName", (void **)&Z.error_name) == 0;
    if (ok && Z.version_number() >= ZSTD_OLDEST) {
      zstd_version = Z.version_number();
      return; /* kept open for the life of the process */
    }
    uv_dlclose(&zstd_lib);
  }
}

static unsigned zstd_ready(void) {
  uv_once(&load_once, load_zstd);
  return zstd_version;
}

/*
 * Per pool thread, made on first use and kept (the pool's threads live as
 * long as the process): a context, a buffer that holds any frame of one
 * cluster, and a zeroed cluster for a short last one.
 */
static _Thread_local zstd_cctx *thread_cctx;
static _Thread_local uint8_t *thread_frame;
static _Thread_local size_t thread_frame_size;
static _Thread_local uint8_t *thread_pad;
static _Thread_local size_t thread_pad_size;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref, output_ref, sizes_ref;
  const uint8_t *input;
  size_t input_len;
  uint8_t *output;
  int32_t *sizes;
  size_t clusters;
  size_t cluster_size;
  int level;
  size_t written;
  char error[96]; /* empty: no error */
} zstd_job;

static bool thread_buffers(size_t cluster_size, char *error, size_t error_size) {
  if (!thread_cctx) thread_cctx = Z.create_cctx();
  size_t bound = Z.compress_bound(cluster_size);
  if (thread_frame_size < bound) {
    free(thread_frame);
    thread_frame = malloc(bound);
    thread_frame_size = thread_frame ? bound : 0;
  }
  if (!thread_cctx || !thread_frame) {
    snprintf(error, error_size, "zstdClusters: out of memory for a compression context");
    return false;
  }
  return true;
}

static void execute(napi_env env, void *data) {
  (void)env;
  zstd_job *j = data;
  if (!thread_buffers(j->cluster_size, j->error, sizeof j->error)) return;
  size_t cs = j->cluster_size, at = 0;
  for (size_t i = 0; i < j->clusters; i++) {
    const uint8_t *src = j->input + i * cs;
    size_t len = j->input_len - i * cs < cs ? j->input_len - i * cs : cs;
    if (len < cs) {
      if (thread_pad_size < cs) {
        free(thread_pad);
        thread_pad = malloc(cs);
        thread_pad_size = thread_pad ? cs : 0;
        if (!thread_pad) {
          snprintf(j->error, sizeof j->error, "zstdClusters: out of memory for a cluster");
          return;
        }
      }
      memcpy(thread_pad, src, len);
      memset(thread_pad + len, 0, cs - len);
      src = thread_pad;
    }
    size_t n = Z.compress_cctx(thread_cctx, thread_frame, thread_frame_size, src, cs, j->level);
    if (Z.is_error(n)) {
      snprintf(j->error, sizeof j->error, "zstdClusters: libzstd: %s", Z.error_name(n));
      return;
    }
    if (n >= cs) {
      j->sizes[i] = -1;
      continue;
    }
    memcpy(j->output + at, thread_frame, n);
    j->sizes[i] = (int32_t)n;
    at += n;
  }
  j->written = at;
}

static void complete(napi_env env, napi_status status, void *data) {
  zstd_job *j = data;
  if (status != napi_ok) img_reject(env, j->deferred, "zstdClusters: the work was cancelled");
  else if (j->error[0]) img_reject(env, j->deferred, j->error);
  else {
    napi_value n;
    napi_create_double(env, (double)j->written, &n);
    napi_resolve_deferred(env, j->deferred, n);
  }
  napi_delete_reference(env, j->input_ref);
  napi_delete_reference(env, j->output_ref);
  napi_delete_reference(env, j->sizes_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

napi_value img_zstd_clusters(napi_env env, napi_callback_info info) {
  static const char *usage = "zstdClusters(input: Uint8Array, clusterSize: number, level: number, output: Uint8Array, sizes: Int32Array)";
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) return img_fail_type(env, usage);
  if (!zstd_ready()) {
    napi_throw_error(env, "ENOSYS", "zstdClusters: no libzstd on this system");
    return NULL;
  }
  size_t in_len, out_len, nsizes;
  void *in_data, *out_data, *sizes_data;
  int32_t cs, level;
  if (!img_typed(env, argv[0], napi_uint8_array, &in_len, &in_data)) return img_fail_type(env, usage);
  if (napi_get_value_int32(env, argv[1], &cs) != napi_ok || napi_get_value_int32(env, argv[2], &level) != napi_ok) return img_fail_type(env, usage);
  if (!img_typed(env, argv[3], napi_uint8_array, &out_len, &out_data)) return img_fail_type(env, usage);
  if (!img_typed(env, argv[4], napi_int32_array, &nsizes, &sizes_data)) return img_fail_type(env, usage);
  /* qcow2's clusters are 512 B to 2 MiB; a frame's size must fit the Int32Array. */
  if (cs < 512 || cs > (1 << 30)) {
    napi_throw_range_error(env, NULL, "zstdClusters: clusterSize must be 512 bytes to 1 GiB");
    return NULL;
  }
  size_t clusters = (in_len + (size_t)cs - 1) / (size_t)cs;
  if (nsizes != clusters || out_len / (size_t)cs < clusters) {
    napi_throw_range_error(env, NULL, "zstdClusters: sizes needs one entry per cluster of the input, and output room for as many whole clusters");
    return NULL;
  }
  zstd_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "ENOMEM", "zstdClusters: out of memory");
    return NULL;
  }
  j->input = in_data, j->input_len = in_len;
  j->output = out_data, j->sizes = sizes_data;
  j->clusters = clusters, j->cluster_size = (size_t)cs, j->level = level;
  napi_value keep[] = {argv[0], argv[3], argv[4]};
  napi_ref *const refs[] = {&j->input_ref, &j->output_ref, &j->sizes_ref};
  return img_start_work(env, "zstdClusters", "img.zstdClusters", execute, complete, j, &j->work, &j->deferred, keep, refs, 3);
}

napi_value img_zstd_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_uint32(env, zstd_ready(), &out);
  return out;
}
