/*
 * pbkdf2: PBKDF2 with HMAC (RFC 8018), the key derivation of LUKS key
 * slots, in a tight loop over the platform's SHA block functions, the
 * output blocks of one derivation on threads of their own.
 *
 * Why here: opening an encrypted image costs what its iter-time asked of
 * qemu's PBKDF2 (2 s by default), and node:crypto's PBKDF2 (OpenSSL's
 * EVP HMAC, set up again for every iteration) took about twice that on the
 * same machine; a LUKS key of 64 bytes is two SHA-256 output blocks, which
 * qemu and node:crypto derive one after the other. Here an iteration is
 * two block-function calls on precomputed inner and outer HMAC states,
 * and the blocks run in parallel.
 *
 * The SHA functions are OpenSSL's (assembly, SHA extensions where the CPU
 * has them), found at run time: in the process itself first (Node carries
 * or links OpenSSL for node:crypto), else in a libcrypto on the system;
 * never linked, so the helper loads where there is none and
 * pbkdf2Hashes() answers an empty list (callers keep node:crypto's).
 *
 * pbkdf2Hashes(): string[]
 *   The hashes pbkdf2 takes here: some of "sha1", "sha256", "sha384",
 *   "sha512".
 * pbkdf2(password: Uint8Array, salt: Uint8Array, iterations: number,
 *        length: number, hash: string): Promise<ArrayBuffer>
 *   The derived key, `length` bytes (1 to 1024), iterations 1 to 2^31-1.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "napi-work.h"

/* OpenSSL's SHA contexts start with the state words (SHA_CTX h0..h4, SHA256_CTX h[8], SHA512_CTX h[8] of 64 bits); they are copied whole, as opaque bytes, in a buffer larger than any of them. */
/* The state words are host-endian numbers; digests are big-endian bytes. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TO_BE32(x) (x)
#define TO_BE64(x) (x)
#else
#define TO_BE32(x) __builtin_bswap32(x)
#define TO_BE64(x) __builtin_bswap64(x)
#endif

typedef union {
  uint64_t align;
  uint8_t bytes[512];
} sha_ctx;

typedef int (*sha_init_fn)(sha_ctx *);
typedef int (*sha_update_fn)(sha_ctx *, const void *, size_t);
typedef int (*sha_final_fn)(unsigned char *, sha_ctx *);
typedef void (*sha_transform_fn)(sha_ctx *, const unsigned char *);

typedef struct {
  const char *name;
  const char *symbols[4]; /* Init, Update, Final, Transform */
  size_t block, digest, word;
  sha_init_fn init;
  sha_update_fn update;
  sha_final_fn final;
  sha_transform_fn transform;
} sha_kind;

static sha_kind kinds[] = {
    {"sha1", {"SHA1_Init", "SHA1_Update", "SHA1_Final", "SHA1_Transform"}, 64, 20, 4, NULL, NULL, NULL, NULL},
    {"sha256", {"SHA256_Init", "SHA256_Update", "SHA256_Final", "SHA256_Transform"}, 64, 32, 4, NULL, NULL, NULL, NULL},
    {"sha384", {"SHA384_Init", "SHA384_Update", "SHA384_Final", "SHA512_Transform"}, 128, 48, 8, NULL, NULL, NULL, NULL},
    {"sha512", {"SHA512_Init", "SHA512_Update", "SHA512_Final", "SHA512_Transform"}, 128, 64, 8, NULL, NULL, NULL, NULL},
};
#define KINDS (sizeof kinds / sizeof kinds[0])

static uv_once_t load_once = UV_ONCE_INIT;
static uv_lib_t crypto_lib;

/* Finds the kind's four functions in `lib`. */
static bool resolve(uv_lib_t *lib, sha_kind *k) {
  void *f[4];
  for (int i = 0; i < 4; i++)
    if (uv_dlsym(lib, k->symbols[i], &f[i]) != 0) return false;
  k->init = (sha_init_fn)f[0];
  k->update = (sha_update_fn)f[1];
  k->final = (sha_final_fn)f[2];
  k->transform = (sha_transform_fn)f[3];
  return true;
}

static void derive(const sha_kind *k, const uint8_t *password, size_t plen, const uint8_t *salt, size_t slen, uint32_t iterations, uint32_t index, uint8_t *out);

/* PBKDF2 of "password" and "salt", 2 iterations, 20 bytes (RFC 6070's second vector for sha1; the same derivation's known outputs for the others): a check that the functions and the context layout are what this file assumes. */
static bool self_test(const sha_kind *k) {
  static const struct {
    const char *name;
    uint8_t expect[20];
  } vectors[] = {
      {"sha1", {0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d, 0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57}},
      {"sha256", {0xae, 0x4d, 0x0c, 0x95, 0xaf, 0x6b, 0x46, 0xd3, 0x2d, 0x0a, 0xdf, 0xf9, 0x28, 0xf0, 0x6d, 0xd0, 0x2a, 0x30, 0x3f, 0x8e}},
      {"sha384", {0x54, 0xf7, 0x75, 0xc6, 0xd7, 0x90, 0xf2, 0x19, 0x30, 0x45, 0x91, 0x62, 0xfc, 0x53, 0x5d, 0xbf, 0x04, 0xa9, 0x39, 0x18}},
      {"sha512", {0xe1, 0xd9, 0xc1, 0x6a, 0xa6, 0x81, 0x70, 0x8a, 0x45, 0xf5, 0xc7, 0xc4, 0xe2, 0x15, 0xce, 0xb6, 0x6e, 0x01, 0x1a, 0x2e}},
  };
  uint8_t out[64];
  derive(k, (const uint8_t *)"password", 8, (const uint8_t *)"salt", 4, 2, 1, out);
  for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++)
    if (strcmp(vectors[i].name, k->name) == 0) return memcmp(out, vectors[i].expect, 20) == 0;
  return false;
}

static void load(void) {
  static const char *names[] = {NULL, "libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.3.dylib", "libcrypto.1.1.dylib"};
  for (size_t n = 0; n < sizeof names / sizeof names[0]; n++) {
    if (uv_dlopen(names[n], &crypto_lib) != 0) {
      uv_dlclose(&crypto_lib); /* frees the error message */
      continue;
    }
    bool any = false;
    for (size_t i = 0; i < KINDS; i++) {
      if (!resolve(&crypto_lib, &kinds[i]) || !self_test(&kinds[i])) kinds[i].transform = NULL;
      else any = true;
    }
    if (any) return; /* kept open for the life of the process */
    uv_dlclose(&crypto_lib);
  }
}

static const sha_kind *kind_named(const char *name) {
  uv_once(&load_once, load);
  for (size_t i = 0; i < KINDS; i++)
    if (kinds[i].transform && strcmp(kinds[i].name, name) == 0) return &kinds[i];
  return NULL;
}

/* The first `digest` bytes of the state, big-endian, as the digest of a message ending exactly at a block boundary. */
static inline void state_bytes(const sha_kind *k, const sha_ctx *c, uint8_t *out) {
  if (k->word == 4) {
    uint32_t w[8];
    memcpy(w, c->bytes, 32);
    for (size_t i = 0; i < k->digest / 4; i++) w[i] = TO_BE32(w[i]);
    memcpy(out, w, k->digest);
  } else {
    uint64_t w[8];
    memcpy(w, c->bytes, 64);
    for (size_t i = 0; i < k->digest / 8; i++) w[i] = TO_BE64(w[i]);
    memcpy(out, w, k->digest);
  }
}

/* One output block (index from 1) of PBKDF2-HMAC: U1 = HMAC(salt || index), Un = HMAC(Un-1), XORed. */
static void derive(const sha_kind *k, const uint8_t *password, size_t plen, const uint8_t *salt, size_t slen, uint32_t iterations, uint32_t index, uint8_t *out) {
  uint8_t key[128] = {0}, pad[128];
  sha_ctx inner, outer, c;
  if (plen > k->block) {
    k->init(&c);
    k->update(&c, password, plen);
    k->final(key, &c);
  } else {
    memcpy(key, password, plen);
  }
  for (size_t i = 0; i < k->block; i++) pad[i] = key[i] ^ 0x36;
  k->init(&inner);
  k->update(&inner, pad, k->block);
  for (size_t i = 0; i < k->block; i++) pad[i] = key[i] ^ 0x5c;
  k->init(&outer);
  k->update(&outer, pad, k->block);
  uint8_t u[64], acc[64], be[4] = {(uint8_t)(index >> 24), (uint8_t)(index >> 16), (uint8_t)(index >> 8), (uint8_t)index};
  c = inner;
  k->update(&c, salt, slen);
  k->update(&c, be, 4);
  k->final(u, &c);
  c = outer;
  k->update(&c, u, k->digest);
  k->final(u, &c);
  memcpy(acc, u, k->digest);
  /* The one block each later hash reads: the previous digest, then SHA padding for (block + digest) bytes in all. */
  uint8_t blk[128] = {0};
  blk[k->digest] = 0x80;
  uint64_t bits = (uint64_t)(k->block + k->digest) * 8;
  for (int b = 0; b < 8; b++) blk[k->block - 1 - b] = (uint8_t)(bits >> (8 * b));
  /* A block function touches only the state words (8 at most, of 64 bits at most): only they are copied in the loop. */
  for (uint32_t n = 1; n < iterations; n++) {
    memcpy(blk, u, k->digest);
    memcpy(c.bytes, inner.bytes, 64);
    k->transform(&c, blk);
    state_bytes(k, &c, blk);
    memcpy(c.bytes, outer.bytes, 64);
    k->transform(&c, blk);
    state_bytes(k, &c, u);
    for (size_t i = 0; i < k->digest; i++) acc[i] ^= u[i];
  }
  memcpy(out, acc, k->digest);
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  const sha_kind *kind;
  uint8_t *password, *salt, *out;
  size_t plen, slen, length, blocks;
  uint32_t iterations;
  /* Threads take blocks in turn: block i goes to thread i % threads. */
  size_t threads;
} pbkdf2_job;

typedef struct {
  pbkdf2_job *job;
  size_t first;
} pbkdf2_part;

static void run_part(pbkdf2_job *j, size_t first) {
  uint8_t block[64];
  for (size_t i = first; i < j->blocks; i += j->threads) {
    derive(j->kind, j->password, j->plen, j->salt, j->slen, j->iterations, (uint32_t)(i + 1), block);
    size_t at = i * j->kind->digest, n = j->length - at < j->kind->digest ? j->length - at : j->kind->digest;
    memcpy(j->out + at, block, n);
  }
}

static void part_thread(void *arg) {
  pbkdf2_part *p = arg;
  run_part(p->job, p->first);
}

static void execute(napi_env env, void *data) {
  (void)env;
  pbkdf2_job *j = data;
  /* libuv's threads (Node's own libuv), not pthread_create: a glibc 2.34 symbol version the prebuilt helper must not need. */
  uv_thread_t t[8];
  pbkdf2_part parts[8];
  bool running[8] = {false};
  /* A thread for each share of the blocks but the first, which this thread takes; a share whose thread did not start is done here too. */
  for (size_t i = 1; i < j->threads; i++) {
    parts[i] = (pbkdf2_part){j, i};
    running[i] = uv_thread_create(&t[i], part_thread, &parts[i]) == 0;
  }
  run_part(j, 0);
  for (size_t i = 1; i < j->threads; i++) {
    if (running[i]) uv_thread_join(&t[i]);
    else run_part(j, i);
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  pbkdf2_job *j = data;
  if (status != napi_ok) {
    img_reject(env, j->deferred, "pbkdf2: the work was cancelled");
  } else {
    void *bytes;
    napi_value buffer;
    if (napi_create_arraybuffer(env, j->length, &bytes, &buffer) != napi_ok) {
      img_reject(env, j->deferred, "pbkdf2: out of memory");
    } else {
      memcpy(bytes, j->out, j->length);
      napi_resolve_deferred(env, j->deferred, buffer);
    }
  }
  napi_delete_async_work(env, j->work);
  free(j->password);
  free(j->salt);
  free(j->out);
  free(j);
}

napi_value img_pbkdf2_hashes(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value list, s;
  uint32_t n = 0;
  if (napi_create_array(env, &list) != napi_ok) return NULL;
  for (size_t i = 0; i < KINDS; i++) {
    if (!kind_named(kinds[i].name)) continue;
    napi_create_string_utf8(env, kinds[i].name, NAPI_AUTO_LENGTH, &s);
    napi_set_element(env, list, n++, s);
  }
  return list;
}

napi_value img_pbkdf2(napi_env env, napi_callback_info info) {
  static const char *usage = "pbkdf2(password: Uint8Array, salt: Uint8Array, iterations: number, length: number, hash: string)";
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) return img_fail_type(env, usage);
  size_t plen, slen;
  void *pdata, *sdata;
  uint32_t iterations, length;
  char name[16];
  size_t name_len;
  if (!img_typed(env, argv[0], napi_uint8_array, &plen, &pdata) || !img_typed(env, argv[1], napi_uint8_array, &slen, &sdata)) return img_fail_type(env, usage);
  if (napi_get_value_uint32(env, argv[2], &iterations) != napi_ok || napi_get_value_uint32(env, argv[3], &length) != napi_ok) return img_fail_type(env, usage);
  if (napi_get_value_string_utf8(env, argv[4], name, sizeof name, &name_len) != napi_ok) return img_fail_type(env, usage);
  if (iterations < 1 || iterations > 0x7fffffffu || length < 1 || length > 1024) {
    napi_throw_range_error(env, NULL, "pbkdf2: iterations must be 1 to 2^31-1 and length 1 to 1024 bytes");
    return NULL;
  }
  const sha_kind *k = kind_named(name);
  if (!k) {
    napi_throw_error(env, "ENOSYS", "pbkdf2: this hash is not available here");
    return NULL;
  }
  pbkdf2_job *j = calloc(1, sizeof *j);
  if (j) {
    j->password = malloc(plen ? plen : 1);
    j->salt = malloc(slen ? slen : 1);
    j->out = malloc(length);
  }
  if (!j || !j->password || !j->salt || !j->out) {
    if (j) {
      free(j->password);
      free(j->salt);
      free(j->out);
    }
    free(j);
    napi_throw_error(env, NULL, "pbkdf2: out of memory");
    return NULL;
  }
  memcpy(j->password, pdata, plen);
  memcpy(j->salt, sdata, slen);
  j->plen = plen, j->slen = slen, j->kind = k, j->iterations = iterations, j->length = length;
  j->blocks = (length + k->digest - 1) / k->digest;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  size_t threads = cpus > 1 ? (size_t)cpus : 1;
  if (threads > j->blocks) threads = j->blocks;
  if (threads > 8) threads = 8;
  j->threads = threads;
  return img_start_work(env, "pbkdf2", "img:pbkdf2", execute, complete, j, &j->work, &j->deferred, NULL, NULL, 0);
}
