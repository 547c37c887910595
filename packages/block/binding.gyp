{
  "targets": [
    {
      "target_name": "img_seek",
      "sources": ["native/seek.c", "native/copy.c", "native/inflate.c", "native/zstd.c", "native/space.c", "native/pbkdf2.c"],
      "cflags": ["-O2", "-Wall"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
