#!/usr/bin/env node
// See img-convert.ts: the libuv pool size must be set before the first I/O.
process.env.UV_THREADPOOL_SIZE ??= '8';
const { onClosedStdout, processIo } = await import('../cli/common.js');
const { imgMain } = await import('../cli/img.js');

onClosedStdout(0);
process.exitCode = await imgMain(process.argv.slice(2), processIo);
