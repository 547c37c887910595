/**
 * Child processes: run a command, or run it under GNU time (Debian's
 * `time` package) to get wall time, CPU time and peak RSS of the child.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The environment the measured commands run in: this one, less
 * NODE_EXTRA_CA_CERTS unless IMG_BENCH_KEEP_CA=1. Node reads and parses that
 * CA bundle when it starts, before any script runs: 40 ms for every process
 * on the machine of the first runs, where it is set for a proxy. img never
 * opens a TLS connection and qemu-img does not read it, so it would only
 * measure the machine's settings.
 */
export const childEnv = (() => {
  if (process.env.IMG_BENCH_KEEP_CA === '1' || process.env.NODE_EXTRA_CA_CERTS === undefined) return { env: process.env, dropped: [] };
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  return { env, dropped: ['NODE_EXTRA_CA_CERTS'] };
})();

/** Runs a command; resolves with its stdout, rejects with its stderr on failure. */
export function run(cmd, args, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? childEnv.env });
    const out = [];
    const err = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => {
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      if (code === 0 || options.allowFail) resolve({ code, stdout, stderr });
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${stderr.trim()}`));
    });
  });
}

const REPORTED = '/sys/module/page_reporting/parameters/reported_kib';

/**
 * KiB of free memory this VM's kernel has handed back to its host so far
 * (virtio-balloon free page reporting), or undefined where the kernel does
 * not count it. Pages handed back are the host's again: the next time the
 * guest uses them (for the page cache of an output, say) each one is a fault
 * taken by the host, several microseconds per 4 KiB page, paid by whichever
 * process touches it.
 */
/**
 * Free memory, page cache and tmpfs (shmem) in MiB from /proc/meminfo, or
 * undefined where there is none. Memory held by tmpfs files cannot be
 * reclaimed without swap; a page cache near the machine's size makes every
 * new page a reclaim first.
 */
export function memoryMiB() {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const field = (name) => {
      const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(info);
      return m ? Number(m[1]) / 1024 : undefined;
    };
    const free = field('MemFree');
    if (free === undefined) return undefined;
    return { free, available: field('MemAvailable'), cached: field('Cached'), shmem: field('Shmem') };
  } catch {
    return undefined;
  }
}

/** Below this much free memory at the start, the report says the run is suspect (session 38: 4 GB free cost img's rows 0.06-0.5 in ratio). */
export const LOW_FREE_MIB = 8 * 1024;

export function reportedKiB() {
  try {
    return Number(readFileSync(REPORTED, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Waits until the kernel has stopped handing free memory back to the host
 * (no change for `quiet` ms, at most `limit` ms): every run then starts with
 * the memory it will take unbacked, as a conversion after the machine sat
 * idle does. Returns the seconds waited; at once where nothing is reported.
 */
export async function settleHostMemory({ quiet = 2500, limit = 15_000 } = {}) {
  let last = reportedKiB();
  if (last === undefined) return 0;
  const t0 = performance.now();
  let since = t0;
  while (performance.now() - since < quiet && performance.now() - t0 < limit) {
    await new Promise((r) => setTimeout(r, 100));
    const now = reportedKiB();
    if (now !== last) {
      last = now;
      since = performance.now();
    }
  }
  return (performance.now() - t0) / 1000;
}

export const GNU_TIME = '/usr/bin/time';

export function haveGnuTime() {
  return existsSync(GNU_TIME);
}

let counter = 0;

/**
 * Runs a command under GNU time. Returns { wall, user, sys, cpu, rssMiB }
 * (seconds, MiB). Without GNU time, falls back to wall time only.
 */
export async function timed(cmd, args, options = {}) {
  const r0 = reportedKiB();
  /** MiB the host took back while the command ran (see reportedKiB). */
  const reclaim = () => (r0 === undefined ? NaN : (reportedKiB() - r0) / 1024);
  if (!haveGnuTime()) {
    const t0 = performance.now();
    const { stdout, stderr } = await run(cmd, args, options);
    const wall = (performance.now() - t0) / 1000;
    return { wall, user: NaN, sys: NaN, cpu: NaN, rssMiB: NaN, reclaimMiB: reclaim(), stdout, stderr };
  }
  const out = join(tmpdir(), `img-bench-time-${process.pid}-${counter++}.txt`);
  try {
    // GNU time's %e has 10 ms resolution: wall time is taken here instead.
    const t0 = performance.now();
    const { stdout, stderr } = await run(GNU_TIME, ['-o', out, '-f', '%e %U %S %M', cmd, ...args], options);
    const wall = (performance.now() - t0) / 1000;
    const [, user, sys, rss] = readFileSync(out, 'utf8').trim().split('\n').pop().split(/\s+/).map(Number);
    return { wall, user, sys, cpu: user + sys, rssMiB: rss / 1024, reclaimMiB: reclaim(), stdout, stderr };
  } finally {
    await rm(out, { force: true });
  }
}

const RESIDENT = fileURLToPath(new URL('./resident.py', import.meta.url));

/**
 * MiB of `path` in the page cache right after a run, or NaN where it cannot
 * be told: how much of an output went through the cache. Counted over the
 * file's data ranges only (resident.py: SEEK_DATA and mincore), not with
 * util-linux fincore, which asks about every page of the length: ten
 * seconds of system time on a 1 TiB sparse output, after which the next
 * timed run started on a machine whose freed memory the host had taken back
 * (the rows into 1 TiB raw, and no other, ran cold that way).
 */
export function cachedMiB(path) {
  try {
    return Number(execFileSync('python3', [RESIDENT, path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()) / 1024 / 1024;
  } catch {
    return NaN;
  }
}

export function median(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/**
 * Before a timed run: removes the outputs of both tools, then writes back
 * whatever else is dirty. The other tool's output, left in the page cache
 * (2 GiB for input D), would otherwise be written back, or throttle the
 * writer, while this run is timed, and charge that to whichever tool runs
 * next. In that order (not sync first): this disk is mounted with
 * `discard`, and blocks freed by a removal are discarded at the next journal
 * commit, which the sync makes happen here rather than during the run (with
 * sync first, D qcow2->qcow2 and vhd->vhd came out 1.16x and 1.86x in one
 * full run). With IMG_BENCH_SETTLE=1 it then waits until the VM has handed
 * the freed memory back to its host (settleHostMemory), so that every run
 * finds its memory cold.
 */
export async function clearOutputs(...paths) {
  await Promise.all(paths.map((p) => rm(p, { force: true })));
  await run('sync', []);
  if (process.env.IMG_BENCH_SETTLE === '1') await settleHostMemory();
}
