/*
 * inflateInto: inflates many compressed blocks (VMDK grains, qcow2
 * clusters) on one of libuv's pool threads, each straight into its place
 * in an output buffer, with one zlib stream state reset between blocks.
 *
 * Why here and not node:zlib: node:zlib's one-shot calls make a new zlib
 * state and a new output buffer per block and run on the calling thread;
 * its asynchronous calls pay a thread hand-off per block, which costs more
 * than inflating a 64 KiB grain. A batch per call lets a reader inflate on
 * every core, with no garbage per block.
 *
 * zlib comes from the running process (Node links it in and exports its
 * symbols, or loads the system's libz) through weak references: where it
 * cannot be found, inflateAvailable() answers false and callers
 * keep node:zlib. The addon itself never links zlib, so it loads anywhere
 * the rest of the helper does.
 *
 * inflateInto(input: Uint8Array, jobs: Float64Array, output: Uint8Array, windowBits: number)
 *   jobs: (input offset, input length, output offset, output limit) quads.
 *   Each block is one stream in windowBits' framing (15: zlib, -15..-8:
 *   raw deflate), inflated into output[offset, offset + limit); bytes after
 *   the stream's end are ignored (as zlib's uncompress() does).
 *   Resolves to a Float64Array of (status, bytes) pairs, one per job:
 *   status 0 (the stream ended), INFLATE_BAD (-1: not a valid stream),
 *   INFLATE_TOO_LARGE (-2: the stream goes on past limit bytes) or
 *   INFLATE_TRUNCATED (-3: the input ends inside the stream); bytes, what
 *   was written to the output either way. Where a job is INFLATE_BAD, the
 *   array's `messages` property (an array with a string at that job's
 *   index) holds zlib's reason ("invalid block type").
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "napi-work.h"

#define INFLATE_BAD (-1)
#define INFLATE_TOO_LARGE (-2)
#define INFLATE_TRUNCATED (-3)

/*
 * Weak references: bound at load to the process's zlib where it exports one
 * (Node does), left NULL where it does not, so the helper loads either way.
 * (dlsym would tie the binary to glibc 2.34's libc, where dlsym moved.)
 */
#pragma weak inflateInit2_
#pragma weak inflate
#pragma weak inflateReset2
#pragma weak inflateEnd

static bool zlib_ready(void) {
  return &inflateInit2_ != NULL && &inflate != NULL && &inflateReset2 != NULL && &inflateEnd != NULL;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref, output_ref;
  const uint8_t *input;
  uint8_t *output;
  double *jobs; /* quads, copied */
  double *results; /* (status, bytes) pairs */
  char (*messages)[64]; /* zlib's reason for each INFLATE_BAD job */
  bool any_message;
  size_t njobs;
  int window_bits;
  int err; /* non-zero: zlib could not start (Z_MEM_ERROR, Z_VERSION_ERROR) */
} inflate_job;

/* One block: its status (0 or a negative INFLATE_* code); *produced says the bytes written. */
static int inflate_one(z_stream *z, const uint8_t *in, size_t in_len, uint8_t *out, size_t limit, size_t *produced) {
  *produced = 0;
  /* zlib counts in uInt: a block past 4 GiB is not one this is for. */
  if (in_len > UINT32_MAX || limit > UINT32_MAX) return INFLATE_BAD;
  z->next_in = (Bytef *)in, z->avail_in = (uInt)in_len;
  z->next_out = out, z->avail_out = (uInt)limit;
  int r = inflate(z, Z_FINISH);
  *produced = limit - z->avail_out;
  if (r == Z_STREAM_END) return 0;
  if (r == Z_NEED_DICT || r == Z_DATA_ERROR || r == Z_STREAM_ERROR || r == Z_MEM_ERROR) return INFLATE_BAD;
  /* Z_BUF_ERROR (or Z_OK): out of input or out of room. */
  if (z->avail_out == 0) {
    /* The output is full: the stream must end here, with not one byte more. */
    uint8_t spare;
    z->next_out = &spare, z->avail_out = 1;
    r = inflate(z, Z_FINISH);
    if (r == Z_STREAM_END && z->avail_out == 1) return 0;
    if (z->avail_out == 0) return INFLATE_TOO_LARGE;
    if (r == Z_NEED_DICT || r == Z_DATA_ERROR || r == Z_STREAM_ERROR || r == Z_MEM_ERROR) return INFLATE_BAD;
  }
  return INFLATE_TRUNCATED;
}

static void execute(napi_env env, void *data) {
  (void)env;
  inflate_job *j = data;
  z_stream z;
  memset(&z, 0, sizeof z);
  int r = inflateInit2_(&z, j->window_bits, ZLIB_VERSION, (int)sizeof(z_stream));
  if (r != Z_OK) {
    j->err = r;
    return;
  }
  for (size_t i = 0; i < j->njobs; i++) {
    if (i > 0 && inflateReset2(&z, j->window_bits) != Z_OK) {
      j->err = Z_STREAM_ERROR;
      break;
    }
    const double *q = j->jobs + 4 * i;
    size_t produced;
    int st = inflate_one(&z, j->input + (size_t)q[0], (size_t)q[1], j->output + (size_t)q[2], (size_t)q[3], &produced);
    j->results[2 * i] = st, j->results[2 * i + 1] = (double)produced;
    if (st == INFLATE_BAD) {
      snprintf(j->messages[i], sizeof j->messages[i], "%s", z.msg ? z.msg : "invalid data");
      j->any_message = true;
    }
  }
  inflateEnd(&z);
}

static void complete(napi_env env, napi_status status, void *data) {
  inflate_job *j = data;
  if (status != napi_ok || j->err) {
    img_reject(env, j->deferred, j->err ? "inflateInto: zlib could not start (out of memory or a zlib of another version)" : "inflateInto: the work was cancelled");
  } else {
    napi_value ab, out;
    void *bytes;
    size_t n = 2 * j->njobs;
    if (napi_create_arraybuffer(env, (n ? n : 1) * sizeof(double), &bytes, &ab) == napi_ok && napi_create_typedarray(env, napi_float64_array, n, ab, 0, &out) == napi_ok) {
      if (n) memcpy(bytes, j->results, n * sizeof(double));
      napi_value list, str;
      if (j->any_message && napi_create_array_with_length(env, j->njobs, &list) == napi_ok) {
        for (size_t i = 0; i < j->njobs; i++) {
          if (j->results[2 * i] == INFLATE_BAD && napi_create_string_utf8(env, j->messages[i], NAPI_AUTO_LENGTH, &str) == napi_ok) napi_set_element(env, list, (uint32_t)i, str);
        }
        napi_set_named_property(env, out, "messages", list);
      }
      napi_resolve_deferred(env, j->deferred, out);
    } else {
      img_reject(env, j->deferred, "inflateInto: out of memory for the result");
    }
  }
  napi_delete_reference(env, j->input_ref);
  napi_delete_reference(env, j->output_ref);
  napi_delete_async_work(env, j->work);
  free(j->jobs);
  free(j->results);
  free(j->messages);
  free(j);
}

napi_value img_inflate_into(napi_env env, napi_callback_info info) {
  static const char *usage = "inflateInto(input: Uint8Array, jobs: Float64Array, output: Uint8Array, windowBits: number)";
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) return img_fail_type(env, usage);
  if (!zlib_ready()) {
    napi_throw_error(env, "ENOSYS", "inflateInto: no zlib in this process");
    return NULL;
  }
  size_t in_len, njobs4, out_len;
  void *in_data, *jobs_data, *out_data;
  if (!img_typed(env, argv[0], napi_uint8_array, &in_len, &in_data)) return img_fail_type(env, usage);
  if (!img_typed(env, argv[1], napi_float64_array, &njobs4, &jobs_data) || njobs4 % 4 != 0) return img_fail_type(env, "inflateInto: jobs must be a Float64Array of (input offset, input length, output offset, output limit) quads");
  if (!img_typed(env, argv[2], napi_uint8_array, &out_len, &out_data)) return img_fail_type(env, usage);
  int32_t wbits;
  if (napi_get_value_int32(env, argv[3], &wbits) != napi_ok || !((wbits >= 8 && wbits <= 15) || (wbits >= -15 && wbits <= -8))) {
    napi_throw_range_error(env, NULL, "inflateInto: windowBits must be 8 to 15 (zlib) or -15 to -8 (raw deflate)");
    return NULL;
  }
  size_t njobs = njobs4 / 4;
  const double *q = jobs_data;
  for (size_t i = 0; i < njobs; i++) {
    double a = q[4 * i], b = q[4 * i + 1], c = q[4 * i + 2], d = q[4 * i + 3];
    bool whole = a == (double)(int64_t)a && b == (double)(int64_t)b && c == (double)(int64_t)c && d == (double)(int64_t)d;
    if (!whole || a < 0 || b < 0 || c < 0 || d < 0 || a + b > (double)in_len || c + d > (double)out_len) {
      napi_throw_range_error(env, NULL, "inflateInto: a job's offsets and lengths must be whole numbers inside the input and output");
      return NULL;
    }
  }
  inflate_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "ENOMEM", "inflateInto: out of memory");
    return NULL;
  }
  j->jobs = malloc((njobs ? njobs : 1) * 4 * sizeof(double));
  j->results = calloc(njobs ? 2 * njobs : 1, sizeof(double));
  j->messages = calloc(njobs ? njobs : 1, sizeof *j->messages);
  if (!j->jobs || !j->results || !j->messages) {
    free(j->jobs), free(j->results), free(j->messages), free(j);
    napi_throw_error(env, "ENOMEM", "inflateInto: out of memory");
    return NULL;
  }
  if (njobs) memcpy(j->jobs, q, njobs * 4 * sizeof(double));
  j->njobs = njobs;
  j->input = in_data, j->output = out_data;
  j->window_bits = wbits;
  napi_value keep[] = {argv[0], argv[2]};
  napi_ref *const refs[] = {&j->input_ref, &j->output_ref};
  return img_start_work(env, "inflateInto", "img.inflateInto", execute, complete, j, &j->work, &j->deferred, keep, refs, 2);
}

napi_value img_inflate_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_get_boolean(env, zlib_ready(), &out);
  return out;
}
