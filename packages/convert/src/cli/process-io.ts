/**
 * The commands' hold on their process: stdout and stderr as an `Io`, what
 * happens when stdout fails, and the last-resort handler that keeps an
 * uncaught error from printing a stack and a line of bundled source.
 *
 * A failed stdout never crashes a command. Writing stops at the first
 * error; the command's verdict is decided as usual and `stdoutFailure()`
 * tells the caller what went wrong, so it can choose the exit status
 * (see `statusAfterOutput` in common.ts).
 */
import { fstatSync, writeSync } from 'node:fs';
import { describeErrno, type Io } from './common.js';
import { endProgressLine } from './progress.js';
import { wasInterrupted } from './interrupt.js';

let failure: NodeJS.ErrnoException | undefined;

function recordFailure(e: unknown): void {
  failure ??= (e ?? new Error('unknown error')) as NodeJS.ErrnoException;
}

/**
 * Bytes queued on stdout past which `stdoutRoom` asks the command to wait:
 * writes to a pipe are not synchronous, and a reader slower than the
 * command (or a command that never lets the event loop run) otherwise
 * queues the whole output in memory.
 */
const STDOUT_QUEUE_MAX = 4 * 1024 * 1024;

type StdName = 'stdout' | 'stderr';

/**
 * The standard streams guardProcess set up that nothing has used since. Node
 * creates each on first use, and for a pipe or a terminal loads node:net and
 * its streams (about a millisecond): a command that prints nothing does not pay for that.
 */
const unused = new Set<StdName>();

/**
 * Writes to descriptor 2 itself while nothing has made stderr's stream: a
 * command's last line need not make a pipe's stream (and load node:net) on
 * its way out. What a non-blocking descriptor cannot take now goes to the
 * stream; another error drops the text, as the stream's handler would.
 */
function stderrDirect(text: string): void {
  const bytes = Buffer.from(text);
  let done = 0;
  try {
    while (done < bytes.length) done += writeSync(2, bytes, done);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') process.stderr.write(bytes.subarray(done));
  }
}

let stderrTTY: boolean | undefined;

/** Whether stderr is a terminal, without making its stream where it is a pipe or a file (not a character device). */
function stderrIsTTY(): boolean {
  if (stderrTTY === undefined) {
    let device = false;
    try {
      device = fstatSync(2).isCharacterDevice();
    } catch {
      // fd 2 closed: not a terminal.
    }
    stderrTTY = device && Boolean(process.stderr.isTTY);
  }
  return stderrTTY;
}

/** The process's stdout and stderr. Stdout writes stop, silently, after the first failure. */
export const processIo: Io = {
  stdout: (text) => {
    // On a terminal both streams share the screen: a result starts after the progress bar, not on its line.
    endProgressLine();
    if (failure !== undefined || process.stdout.destroyed) return;
    try {
      process.stdout.write(text);
    } catch (e) {
      recordFailure(e);
    }
  },
  stderr: (text) => {
    endProgressLine();
    if (unused.has('stderr')) {
      stderrDirect(text);
      return;
    }
    try {
      process.stderr.write(text);
    } catch {
      // Nowhere left to say it.
    }
  },
  get isTTY() {
    return stderrIsTTY();
  },
  get stdoutTTY() {
    try {
      return fstatSync(1).isCharacterDevice() && Boolean(process.stdout.isTTY);
    } catch {
      return false;
    }
  },
  stdoutRoom: () => {
    if (unused.has('stdout')) return undefined;
    const out = process.stdout;
    if (failure !== undefined || out.destroyed || out.writableLength < STDOUT_QUEUE_MAX) return undefined;
    return new Promise<void>((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('close', done);
        out.off('error', done);
        resolve();
      };
      out.on('drain', done);
      out.on('close', done);
      out.on('error', done);
    });
  },
  stdoutFailure: async () => {
    // Writes in flight finish (or fail) before the verdict is given; after a Ctrl-C, what is left of an output cut short
    // is not waited for (a reader that has stopped reading would hold the command as long as it does).
    if (failure === undefined && !wasInterrupted() && !unused.has('stdout') && !process.stdout.destroyed && process.stdout.writableLength > 0) {
      await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
    return failure;
  },
};

export interface GuardOptions {
  /** Name used in messages: "img", "img-convert". */
  prog: string;
  /** Exit status after an internal error (an uncaught exception). */
  internalErrorStatus: number;
  /**
   * Called at the first stdout error, after it is recorded. Without it the
   * command runs on and its caller decides the status from `stdoutFailure()`.
   */
  onStdoutError?: (e: NodeJS.ErrnoException) => void;
}

/**
 * Installs the process-wide handlers a command needs: stdout errors are
 * recorded instead of thrown, stderr errors are ignored, and an uncaught
 * exception or rejection prints one line (`img: internal error: ...`), with a
 * stack only under --debug, instead of Node's report with a line of source
 * (which, for a bundle, is the whole bundle).
 */
export function guardProcess(options: GuardOptions): void {
  const debug = process.argv.includes('--debug');
  whenUsed('stdout', (out) =>
    out.on('error', (e: NodeJS.ErrnoException) => {
      const first = failure === undefined;
      recordFailure(e);
      if (first) options.onStdoutError?.(e);
    }),
  );
  whenUsed('stderr', (err) => err.on('error', () => undefined));
  const fatal = (e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    processIo.stderr(`${options.prog}: internal error: ${message}\n`);
    if (debug && e instanceof Error && e.stack) processIo.stderr(e.stack + '\n');
    else processIo.stderr(`${options.prog}: run with --debug for a stack\n`);
    process.exit(options.internalErrorStatus);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}

/**
 * Runs `setup` on the process's stdout or stderr when something first uses
 * it (through Node's own getter, put back then), or now where the stream is
 * not behind a getter that can be replaced.
 */
function whenUsed(name: StdName, setup: (stream: NodeJS.WriteStream) => void): void {
  const own = Object.getOwnPropertyDescriptor(process, name);
  if (!own?.get || !own.configurable) {
    setup(process[name]);
    return;
  }
  unused.add(name);
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: own.enumerable,
    get() {
      Object.defineProperty(process, name, own);
      unused.delete(name);
      const stream = process[name];
      setup(stream);
      return stream;
    },
  });
}

/** Whether a standard stream holds nothing still to be written (one never used holds nothing). */
function drained(name: StdName): boolean {
  return unused.has(name) || process[name].writableLength === 0;
}

/**
 * For a command that writes an image to stdout: an image cut short is not
 * an image, so the first stdout error ends the process with status 1 (as
 * `cat` fails on a write error) and one line on stderr.
 */
export function imageOutputFailed(prog: string): (e: NodeJS.ErrnoException) => void {
  return (e) => {
    processIo.stderr(e.code === 'EPIPE' ? `${prog}: ERR_IMG_IO: the output pipe was closed before the image was complete\n` : `${prog}: error writing to stdout: ${describeErrno(e)}\n`);
    process.exit(1);
  };
}

/**
 * Ends the process with `process.exitCode` once a command has returned,
 * after one turn of the event loop (a write that failed reports it there,
 * and its handler decides the status), when stdout and stderr hold nothing
 * still to be written (where they are asynchronous, a pipe on some
 * systems, the process ends as Node ends it, after them; after a Ctrl-C,
 * without waiting for stdout). Node's own way
 * out takes the heap down page by page first: 3 ms of a conversion's last
 * 6 (B raw->qcow2 on the bench VM).
 */
export function exitWhenWritten(): void {
  setImmediate(() => {
    // An interrupted command's image on stdout is incomplete: what a reader that has stopped reading has not taken
    // yet is not waited for (the process would wait as long as the reader does).
    if ((drained('stdout') || wasInterrupted()) && drained('stderr')) process.exit();
  });
}
