// Helpers of the interoperability campaign: a seeded generator, bounded
// child processes, byte patterns, file comparison and the spelling of an
// encrypted image's passphrase.
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

/** The id of the secret object that holds a LUKS image's passphrase (`-o encrypt.key-secret=`). */
export const SECRET_ID = 'sec0';

/** `--object secret,...` holding `pass`, as qemu-img, qemu-io and img take it. */
export const secretObject = (pass, id = SECRET_ID) => ['--object', `secret,id=${id},data=${pass}`];

/**
 * How a command names an image: `{ flags: ['-f', fmt], name: path }`, or
 * for an encrypted one (`pass` given) the secret object and an
 * `--image-opts` string that names it, the spelling qemu-img and qemu-io
 * need to read a LUKS image and img accepts. `[...flags, ...other options,
 * name]` then makes the command line. A qcow2 names its secret
 * `encrypt.key-secret`, the luks driver `key-secret`.
 */
export function imageArgs(fmt, path, pass, id = SECRET_ID) {
  if (pass === undefined) return { flags: ['-f', fmt], name: path };
  const key = fmt === 'luks' ? 'key-secret' : 'encrypt.key-secret';
  return { flags: [...secretObject(pass, id), '--image-opts'], name: `driver=${fmt},file.filename=${path},${key}=${id}` };
}

/**
 * The arguments of `compare` between an image (encrypted when `pass` is
 * given) and a raw file: with a passphrase both are named by
 * `--image-opts` strings, which is how qemu-img compare takes a secret.
 */
export function compareArgs(fmt, path, raw, pass, id = SECRET_ID) {
  if (pass === undefined) return ['-f', fmt, '-F', 'raw', path, raw];
  const a = imageArgs(fmt, path, pass, id);
  return [...a.flags, a.name, `driver=raw,file.filename=${raw}`];
}

/** qemu-img 7.2 times PBKDF2 from the process's CPU time, which on a busy VM sometimes fails: "Unable to get accurate CPU usage". */
export const PBKDF2_TIMING = /Unable to get accurate CPU usage/;

/**
 * Runs a qemu-img command that makes a LUKS image, `argvFor(iterTime)`,
 * again with another `encrypt.iter-time` while qemu-img fails to time
 * PBKDF2 (PBKDF2_TIMING); returns the last try's result and `argv`, a
 * failure of another kind included. When every try hits the timing failure
 * the preparation is skipped (PrepError), not counted as a difference.
 */
export function qemuLuks(budget, argvFor, iterTimes, options) {
  let r;
  for (const t of iterTimes) {
    const argv = argvFor(t);
    r = run(budget, 'qemu-img', argv, options);
    if (r.status === 0 || !PBKDF2_TIMING.test(r.stderr)) return { ...r, argv };
  }
  throw new PrepError(`qemu-img ${argvFor(iterTimes.at(-1)).join(' ')}: ${r?.stderr.trim()} (every encrypt.iter-time tried: ${iterTimes.join(', ')})`);
}
