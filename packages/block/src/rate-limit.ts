/**
 * The pace of a rate-limited copy (qemu-img convert and commit -r): data
 * leaves at no more than a given number of bytes per second, averaged from
 * the start of the copy. What needs no I/O (holes, zeros skipped) costs
 * nothing.
 */
import { invalidArg } from './errors.js';

/** Waits until `bytes` more may be sent: the first request goes at once, each later one when the bytes before it are due. */
export interface Pace {
  (bytes: number): Promise<void>;
  /** The most bytes to send in one piece: a tenth of a second of the rate, at least 64 KiB. */
  readonly burst: number;
}

/** The longest burst a limited copy sends at once, in seconds of its rate: a tenth of a second, as qemu's block jobs slice time. */
const BURST_SECONDS = 0.1;

/**
 * A pace for `bytesPerSecond`, or undefined for no limit (undefined or 0,
 * as qemu-img's -r 0). `signal` cuts a wait short (the caller then sees its
 * abort); `now` is the clock in milliseconds (a test's own).
 */
export function ratePace(bytesPerSecond: number | undefined, signal?: AbortSignal, now: () => number = () => performance.now()): Pace | undefined {
  if (bytesPerSecond === undefined || bytesPerSecond === 0) return undefined;
  if (typeof bytesPerSecond !== 'number' || !Number.isFinite(bytesPerSecond) || bytesPerSecond < 0) {
    throw invalidArg('copy', `invalid rate limit ${String(bytesPerSecond)}: a number of bytes per second above 0 (0 for none)`, { field: 'rateLimit' });
  }
  let started: number | undefined;
  let sent = 0;
  const pace = async (bytes: number) => {
    started ??= now();
    const due = started + (sent / bytesPerSecond) * 1000;
    sent += bytes;
    const wait = due - now();
    if (wait > 0 && !signal?.aborted) await sleep(wait, signal);
  };
  return Object.assign(pace, { burst: Math.max(64 * 1024, Math.floor(bytesPerSecond * BURST_SECONDS)) });
}

/**
 * The largest piece a copy at `bytesPerSecond` should move at once: `chunkSize` halved while it holds
 * more than a burst (see BURST_SECONDS), never below 64 KiB or below `unit` (the copy's alignment), and
 * always a whole number of `unit`s.
 */
export function pacedChunkSize(chunkSize: number, unit: number, bytesPerSecond: number): number {
  let chunk = chunkSize;
  const floor = Math.max(64 * 1024, unit);
  while (chunk > bytesPerSecond * BURST_SECONDS && chunk / 2 >= floor && (chunk / 2) % unit === 0) chunk /= 2;
  return chunk;
}

/** The most bytes a batch of runs holds at `bytesPerSecond` (one burst), but at least one chunk. */
export function pacedBatchBytes(batchBytes: number, chunkSize: number, bytesPerSecond: number): number {
  return Math.max(chunkSize, Math.min(batchBytes, Math.floor(bytesPerSecond * BURST_SECONDS)));
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
