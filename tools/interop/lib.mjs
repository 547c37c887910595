// Helpers of the interoperability campaign: a seeded generator, bounded
// child processes, byte patterns and file comparison.
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
export const REPO = join(here, '../..');
export const IMG = join(REPO, 'packages/convert/dist/bin/img.js');

// The seeded generator and per-case seeds are the hostile-input campaign's: one definition for both campaigns.
export { caseSeed, rng } from '../hostile/lib.mjs';

/**
 * A time budget shared by every process of one case: each process gets what
 * is left of it, and a process that runs past it is killed and reported.
 */
export class Budget {
  constructor(ms) {
    this.end = Date.now() + ms;
  }
  left() {
    return Math.max(1, this.end - Date.now());
  }
}

export class CaseTimeout extends Error {}

/** Runs a command with what is left of the case's budget; returns { status, stdout, stderr }. */
export function run(budget, cmd, argv, options = {}) {
  const r = spawnSync(cmd, argv, { encoding: options.encoding ?? 'utf8', timeout: budget.left(), killSignal: 'SIGKILL', maxBuffer: 64 << 20, cwd: options.cwd });
  if (r.error?.code === 'ETIMEDOUT' || (r.signal === 'SIGKILL' && budget.left() <= 1)) throw new CaseTimeout(`${cmd} ${argv.join(' ')}: past the case time limit`);
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command that must succeed (a preparation step); throws with its stderr otherwise. */
export function must(budget, cmd, argv, options) {
  const r = run(budget, cmd, argv, options);
  if (r.status !== 0) throw new PrepError(`${cmd} ${argv.join(' ')}: exit ${r.status}: ${`${r.stderr}${r.stdout}`.trim().split('\n')[0]}`);
  return r.stdout;
}

export class PrepError extends Error {}

/** The img bin under a heap limit. */
export function img(budget, heapMib, argv, options) {
  return run(budget, process.execPath, [`--max-old-space-size=${heapMib}`, IMG, ...argv], options);
}

/** The first offset where two files differ, -1 when equal, or 'size a != b' (with `prefix`: over the shorter length only). */
export function firstDifference(a, b, prefix = false) {
  let sa = statSync(a).size;
  const sb = statSync(b).size;
  if (sa !== sb && !prefix) return `size ${sa} != ${sb}`;
  sa = Math.min(sa, sb);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (let at = 0; at < sa; at += ba.length) {
      const n = readSync(fa, ba, 0, Math.min(ba.length, sa - at), at);
      readSync(fb, bb, 0, ba.length, at);
      if (ba.compare(bb, 0, n, 0, n) !== 0) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return at + i;
      }
    }
    return -1;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Parses JSON output, or undefined when there is none. */
export function json(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export const hex = (n) => `0x${n.toString(16)}`;
