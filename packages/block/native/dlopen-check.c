/*
 * Used by native/prebuild.mjs only, never shipped in the addon: built for a
 * prebuild's target (cross compiler, musl-gcc) and run there (qemu-aarch64,
 * musl's loader) to show that the target's dynamic linker accepts the
 * binary and finds its N-API entry point. The napi_* functions it calls are
 * bound lazily, so no Node is needed: loading and the symbol are the test.
 */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: dlopen-check <file.node>\n");
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  if (!dlsym(lib, "napi_register_module_v1")) {
    fprintf(stderr, "dlsym(napi_register_module_v1): %s\n", dlerror());
    return 1;
  }
  printf("napi_register_module_v1 found\n");
  return 0;
}
