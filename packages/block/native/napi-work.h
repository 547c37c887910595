/*
 * What copy.c, inflate.c, zstd.c and space.c share: exporting a
 * function, and starting a job on libuv's pool that settles a promise.
 * Header-only (static inline): the files are compiled apart and linked
 * into one helper.
 */
#ifndef IMG_NAPI_WORK_H
#define IMG_NAPI_WORK_H
#include <node_api.h>
#include <stdbool.h>
#include <stdio.h>

/* Throws a TypeError with `msg` and answers NULL (an argument of the wrong kind). */
static inline napi_value img_fail_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

/* Whether `value` is a typed array of `type`; if so, its element count and bytes. */
static inline bool img_typed(napi_env env, napi_value value, napi_typedarray_type type, size_t *length, void **data) {
  napi_typedarray_type actual;
  napi_value buffer;
  size_t offset;
  return napi_get_typedarray_info(env, value, &actual, length, data, &buffer, &offset) == napi_ok && actual == type;
}

/* Rejects a job's promise with an Error whose message is `text`. */
static inline void img_reject(napi_env env, napi_deferred deferred, const char *text) {
  napi_value msg, err;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &err);
  napi_reject_deferred(env, deferred, err);
}

/* exports[name] = a function that calls cb. */
static inline napi_status img_export(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_status s = napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  if (s == napi_ok) s = napi_set_named_property(env, exports, name, fn);
  return s;
}

/*
 * Holds the `count` values in `keep` for the job (a reference each, into
 * *refs[i], which the job's complete deletes), makes a promise and queues
 * `data` on the pool (execute there, complete back on the JavaScript
 * thread, which settles *deferred). On failure (N-API itself failing) it
 * throws "<what>: could not start the work" and answers NULL; the job is
 * leaked rather than risk a double free.
 */
static inline napi_value img_start_work(napi_env env, const char *what, const char *resource, napi_async_execute_callback execute, napi_async_complete_callback complete, void *data,
                                        napi_async_work *work, napi_deferred *deferred, const napi_value *keep, napi_ref *const *refs, size_t count) {
  napi_value promise, name;
  bool ok = true;
  for (size_t i = 0; i < count && ok; i++) ok = napi_create_reference(env, keep[i], 1, refs[i]) == napi_ok;
  if (!ok || napi_create_promise(env, deferred, &promise) != napi_ok || napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute, complete, data, work) != napi_ok || napi_queue_async_work(env, *work) != napi_ok) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s: could not start the work", what);
    napi_throw_error(env, NULL, msg);
    return NULL;
  }
  return promise;
}

#endif
