/**
 * The img command's start, called by its executable (img.ts; built, a
 * launcher that loads the bundle of this module with V8's code cache, see
 * scripts/bundle-bins.mjs).
 */
export async function main(): Promise<void> {
  // First of all: no error, wherever it comes from, may end this process with Node's report (a stack and a line of the bundle's source).
  const { exitWhenWritten, guardProcess, imageOutputFailed, processIo } = await import('../cli/process-io.js');
  const argv = process.argv.slice(2);
  guardProcess({
    prog: 'img',
    // compare says 2 for "could not compare"; the others 1.
    internalErrorStatus: argv[0] === 'compare' ? 2 : 1,
    // convert may write an image to stdout: a stdout error ends it. The others run on and decide their status (img.ts).
    ...(argv[0] === 'convert' ? { onStdoutError: imageOutputFailed('img convert') } : {}),
  });
  // See img-convert-main.ts: the libuv pool size must be set before the first I/O.
  process.env.UV_THREADPOOL_SIZE ??= '8';
  // Built, the bundle holds every module the command uses (scripts/bundle-bins.mjs); the formats are set up when a command needs them.
  const { imgMain } = await import('../cli/img.js');
  process.exitCode = await imgMain(argv, processIo);
  exitWhenWritten();
}
