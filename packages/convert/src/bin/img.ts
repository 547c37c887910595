#!/usr/bin/env node
// See img-convert.ts: the libuv pool size must be set before the first I/O.
process.env.UV_THREADPOOL_SIZE ??= '8';
// V8's code cache for our modules (Node >= 22.1; a no-op where it is missing): start-up is most of a small conversion.
{
  const mod = (await import('node:module')) as { enableCompileCache?: () => unknown };
  mod.enableCompileCache?.();
}
// Built, this file is one bundle of every module the command uses (scripts/bundle-bins.mjs); the formats are set up when a command needs them.
const [{ onClosedStdout, processIo }, { imgMain }] = await Promise.all([import('../cli/common.js'), import('../cli/img.js')]);

onClosedStdout(0);
process.exitCode = await imgMain(process.argv.slice(2), processIo);
