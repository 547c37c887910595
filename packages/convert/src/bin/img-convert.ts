#!/usr/bin/env node
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
const [{ onClosedStdout, processIo }, { convertMain }] = await Promise.all([import('../cli/common.js'), import('../cli/img-convert.js')]);

// An image cut short by a closed pipe is not an image: fail.
onClosedStdout(1, 'img-convert: ERR_IMG_IO: the output pipe was closed before the image was complete');
process.exitCode = await convertMain('img-convert', process.argv.slice(2), processIo);
