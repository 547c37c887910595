#!/usr/bin/env node
// See img-convert.ts: the libuv pool size must be set before the first I/O.
process.env.UV_THREADPOOL_SIZE ??= '8';
// V8's code cache for our modules (Node >= 22.1; a no-op where it is missing): start-up is most of a small conversion.
{
  const mod = (await import('node:module')) as { enableCompileCache?: () => unknown };
  mod.enableCompileCache?.();
}
const { onClosedStdout, processIo } = await import('../cli/common.js');
const { imgMain } = await import('../cli/img.js');

onClosedStdout(0);
process.exitCode = await imgMain(process.argv.slice(2), processIo);
