#!/usr/bin/env node
// First of all: no error, wherever it comes from, may end this process with Node's report (a stack and a line of the bundle's source).
const { guardProcess, imageOutputFailed, processIo } = await import('../cli/process-io.js');
guardProcess({ prog: 'img-convert', internalErrorStatus: 1, onStdoutError: imageOutputFailed('img-convert') });
// libuv's pool runs every file read and write; its default of 4 threads is
// shared by reads, writes and flushes of both images, so a copy with
// several requests in flight queues behind it. The size is read once, when
// the pool starts (first I/O), so it is set before anything is imported.
process.env.UV_THREADPOOL_SIZE ??= '8';
// V8's code cache for our modules (Node >= 22.1; a no-op where it is missing): start-up is most of a small conversion.
{
  const mod = (await import('node:module')) as { enableCompileCache?: () => unknown };
  mod.enableCompileCache?.();
}
// Built, this file is one bundle of every module the command uses (scripts/bundle-bins.mjs); the formats are set up when a command needs them.
const { convertMain } = await import('../cli/img-convert.js');

process.exitCode = await convertMain('img-convert', process.argv.slice(2), processIo);
