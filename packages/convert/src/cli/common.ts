/** What both commands share: error printing, exit codes, version, progress. */
import { readFileSync } from 'node:fs';
import { ImageError, formatSize } from '@img/block';

export class UsageError extends Error {}

/** An error with an exit status of its own (compare and check use 1, 2, 3). */
export class ExitCode extends Error {
  constructor(readonly status: number, message = '') {
    super(message);
  }
}

export interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  isTTY: boolean;
}

/**
 * A reader that stops listening (`img map x | head`) closes the pipe: end
 * quietly with `status` instead of crashing on EPIPE.
 */
export function onClosedStdout(status: number, message?: string): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    if (message) process.stderr.write(message + '\n');
    process.exit(status);
  });
}

export const processIo: Io = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: Boolean(process.stderr.isTTY),
};

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
  try {
    return await body();
  } catch (e) {
    if (e instanceof ExitCode) {
      if (e.message) io.stderr(`${prog}: ${e.message}\n`);
      return e.status;
    }
    if (e instanceof UsageError) {
      io.stderr(`${prog}: ${e.message}\n${prog}: try '${prog} --help'\n`);
      return 1;
    }
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') {
      io.stderr(`\n${prog}: interrupted; ${argv.includes('--keep-partial') ? 'the partial output was kept' : 'the partial output was removed'}\n`);
      return 130;
    }
    if (ImageError.isInstance(e)) {
      io.stderr(`${prog}: ${e.code}: ${e.message}\n`);
    } else if (e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr(`${prog}: ${e.message}\n${prog}: try '${prog} --help'\n`);
      return 1;
    } else {
      io.stderr(`${prog}: ${(e as Error)?.message ?? String(e)}\n`);
    }
    if (debug && e instanceof Error && e.stack) io.stderr(e.stack + '\n');
    return 1;
  }
}

/** A progress line on stderr: bytes done, percent, rate and ETA. */
export function progressPrinter(io: Io, json: boolean, delayMs = 0): (p: { bytesDone: number; bytesTotal: number }) => void {
  const started = Date.now();
  let last = 0;
  let shown = false;
  return (p) => {
    const now = Date.now();
    const done = p.bytesDone >= p.bytesTotal;
    if (!shown && now - started < delayMs) return;
    shown = true;
    if (!done && now - last < 200) return;
    last = now;
    const secs = Math.max(0.001, (now - started) / 1000);
    const rate = p.bytesDone / secs;
    const pct = p.bytesTotal === 0 ? 100 : (100 * p.bytesDone) / p.bytesTotal;
    const eta = rate > 0 ? (p.bytesTotal - p.bytesDone) / rate : 0;
    if (json) {
      io.stderr(JSON.stringify({ bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, percent: Number(pct.toFixed(2)), rate: Math.round(rate), etaSeconds: Number(eta.toFixed(1)) }) + '\n');
      return;
    }
    const width = 30;
    const filled = Math.round((width * pct) / 100);
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
    io.stderr(`\r[${bar}] ${pct.toFixed(1).padStart(5)}% ${formatSize(p.bytesDone)}/${formatSize(p.bytesTotal)} ${formatSize(rate)}/s ETA ${eta.toFixed(0)}s  ${done ? '\n' : ''}`);
  };
}
