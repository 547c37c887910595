import { closeSync, constants, openSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

/** Makes a FIFO (named pipe) at `path` with mkfifo(1). */
export function makeFifo(path: string): string {
  execFileSync('mkfifo', [path]);
  return path;
}

/**
 * Settles `work` within `ms`, or rejects with "did not end": a test of code
 * that must never block on a FIFO fails instead of hanging. On a timeout the
 * FIFOs are opened for writing and closed again, which releases an open (or
 * a read) blocked on them, so the blocked thread ends and the test process
 * can exit.
 */
export async function settleWithin<T>(work: Promise<T>, ms: number, fifos: readonly string[] = []): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      for (const f of fifos) {
        try {
          closeSync(openSync(f, constants.O_RDWR | constants.O_NONBLOCK));
        } catch {
          // gone already: nothing blocks on it
        }
      }
      reject(new Error(`did not end within ${ms} ms (blocked on a FIFO?)`));
    }, ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
