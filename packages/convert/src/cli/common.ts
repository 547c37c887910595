/** What both commands share: error printing, exit codes, version, progress. */
import { readFileSync } from 'node:fs';
import { ImageError, parseSize } from '@img/block';
import { interruptedStatus, lateSignalLine, lateSignalStatus, setCommandName } from './interrupt.js';
import { endProgressLine } from './progress.js';
import { isCacheMode } from '../cache-mode.js';
import { asCommandError } from '../node/same-file.js';

/** A command line that cannot be run (unknown option, missing argument): printed with a pointer to --help, exit status 1. */
export class UsageError extends Error {}

/** An error with an exit status of its own (compare and check use 1, 2, 3). */
export class ExitCode extends Error {
  constructor(
    readonly status: number,
    message = '',
  ) {
    super(message);
  }
}

export interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  isTTY: boolean;
  /** Whether stdout is a terminal (where no image is written: `img convert ... -` refuses it). */
  readonly stdoutTTY?: boolean;
  /**
   * Waits for stdout writes in flight and returns the error that stopped
   * them, if one did (EPIPE when the reader went away, ENOSPC, EIO...).
   */
  stdoutFailure?: () => Promise<NodeJS.ErrnoException | undefined>;
  /**
   * Undefined while stdout has room; else a promise that resolves once the
   * writes queued on it have gone out (or failed). A command that prints a
   * lot waits on it, so a slow reader (`img map ... | less`) holds the
   * command back instead of the output piling up in memory.
   */
  stdoutRoom?: () => Promise<void> | undefined;
}

/**
 * The exit status of a command whose body returned `status`, once its
 * output is settled. A reader that went away (EPIPE: `img check x | true`)
 * changes nothing: the command's own status stands. Any other failure to
 * write stdout is said in one line on stderr, and the status becomes 1,
 * except that a status worse than 1 stands: a verdict (check's 2 or 3,
 * compare's 2, inspect's 2) does not depend on the output.
 */
export async function statusAfterOutput(prog: string, io: Io, status: number): Promise<number> {
  const failure = await io.stdoutFailure?.();
  if (failure === undefined || failure.code === 'EPIPE') return status;
  io.stderr(`${prog}: error writing to stdout: ${describeErrno(failure)}\n`);
  return status > 1 ? status : 1;
}

/** The C library's wording for the errors a write to stdout can meet (libuv's own is lower case and terse). */
const STRERROR: Record<string, string> = {
  ENOSPC: 'No space left on device',
  EIO: 'Input/output error',
  EPIPE: 'Broken pipe',
  EBADF: 'Bad file descriptor',
  EFBIG: 'File too large',
  EDQUOT: 'Disk quota exceeded',
  EAGAIN: 'Resource temporarily unavailable',
  EINVAL: 'Invalid argument',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  ECONNRESET: 'Connection reset by peer',
};

/** "No space left on device" for an ENOSPC error, as strerror(3) says it. */
export function describeErrno(e: unknown): string {
  const err = e as NodeJS.ErrnoException | undefined;
  if (err?.code && STRERROR[err.code]) return STRERROR[err.code]!;
  // "ENOSPC: no space left on device, write" -> "No space left on device"
  const text = String(err?.message ?? e)
    .replace(/^[A-Z0-9_]+: /, '')
    .replace(/, \w+$/, '');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** The version the CLIs print (`--version`). */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/**
 * Runs a command body and turns what it throws into one line on stderr and
 * an exit status: `prog: CODE: message`, status 1 (stack only with --debug).
 */
export async function runCommand(prog: string, argv: string[], io: Io, body: () => Promise<number>): Promise<number> {
  const debug = argv.includes('--debug');
  setCommandName(prog);
  try {
    const status = await body();
    const late = lateSignalStatus();
    if (late !== undefined && status === 0) {
      io.stderr(lateSignalLine());
      return late;
    }
    return status;
  } catch (thrown) {
    // What is said next starts on a line of its own, not after a progress bar the error cut short.
    endProgressLine();
    const e = asCommandError(thrown);
    if (e instanceof ExitCode) {
      if (e.message) io.stderr(`${prog}: ${e.message}\n`);
      return e.status;
    }
    if (e instanceof UsageError) {
      io.stderr(`${prog}: ${e.message}\n${prog}: try '${prog} --help'\n`);
      return 1;
    }
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') {
      io.stderr(`${prog}: interrupted; ${argv.includes('--keep-partial') ? 'the partial output was kept' : 'the partial output was removed'}\n`);
      return interruptedStatus();
    }
    if (ImageError.isInstance(e)) {
      io.stderr(`${prog}: ${e.code}: ${e.message}\n`);
    } else if (e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      // Node's advice about '--' for an unknown option is noise here: the name alone is the clear line.
      const unknown = /^Unknown option '[^']*'/.exec(e.message)?.[0];
      // A one-letter option is declared under its letter, and Node names it '--c <value>': qemu-img's words instead.
      const letter = /^Option '--(\w) <value>' argument missing/.exec(e.message)?.[1];
      const missing = letter === undefined ? undefined : `missing argument for option '-${letter}'`;
      io.stderr(`${prog}: ${unknown ?? missing ?? e.message}\n${prog}: try '${prog} --help'\n`);
      return 1;
    } else {
      io.stderr(`${prog}: ${(e as Error)?.message ?? String(e)}\n`);
    }
    if (debug && e instanceof Error && e.stack) io.stderr(e.stack + '\n');
    return 1;
  } finally {
    endProgressLine();
  }
}

/**
 * qemu-img's cache mode options (-t, and -T for the source), which change how qemu does its
 * I/O but not what it writes: checked in qemu-img's words. convert's -t
 * then sets the output's cache mode (ConvertFileOptions.cache); elsewhere
 * img picks its own caching (the image written is the same).
 */
export function checkCacheModes(cache: string | undefined, sourceCache?: string): void {
  if (cache !== undefined && !isCacheMode(cache)) throw new UsageError(`Invalid cache option: ${cache}`);
  if (sourceCache !== undefined && !isCacheMode(sourceCache)) throw new UsageError(`Invalid source cache option: ${sourceCache}`);
}

/**
 * qemu-img's -r (convert and commit): a rate limit in bytes per second, with
 * the size suffixes (`-r 10M`); 0 is no limit. Refused in qemu-img's words.
 */
export function rateLimitOption(text: string): number {
  try {
    return parseSize(text, '-r');
  } catch {
    throw new UsageError('Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
}
