/**
 * The img-convert command's start, called by its executable
 * (img-convert.ts; built, a launcher that loads the bundle of this module
 * with V8's code cache, see scripts/bundle-bins.mjs).
 */
export async function main(): Promise<void> {
  // First of all: no error, wherever it comes from, may end this process with Node's report (a stack and a line of the bundle's source).
  const { exitWhenWritten, guardProcess, imageOutputFailed, processIo } = await import('../cli/process-io.js');
  guardProcess({ prog: 'img-convert', internalErrorStatus: 1, onStdoutError: imageOutputFailed('img-convert') });
  // libuv's pool runs every file read and write; its default of 4 threads is
  // shared by reads, writes and flushes of both images, so a copy with
  // several requests in flight queues behind it. The size is read once, when
  // the pool starts (first I/O), so it is set before anything is imported.
  process.env.UV_THREADPOOL_SIZE ??= '8';
  // Built, the bundle holds every module the command uses (scripts/bundle-bins.mjs).
  const { convertMain } = await import('../cli/img-convert.js');
  process.exitCode = await convertMain('img-convert', process.argv.slice(2), processIo);
  exitWhenWritten();
}
