/**
 * qemu-img as the oracle. In CI (CI=true) a missing qemu-img is a test
 * failure; on a developer's machine the suites are skipped with a notice.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { describe, it } from 'vitest';

function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export const inCI = process.env.CI === 'true' || process.env.CI === '1';
export const hasQemuImg = which('qemu-img');
export const hasQemuIo = which('qemu-io');
export const hasVhdimount = which('vhdimount');

const warned = new Set<string>();
function notice(tool: string): void {
  if (warned.has(tool)) return;
  warned.add(tool);
  process.stderr.write(`\n[img tests] NOTICE: ${tool} not found; tests that need it are SKIPPED (install qemu-utils / libvhdi-utils / libnbd-bin / libvmdk-utils). In CI this is a failure.\n`);
}

/**
 * describe() for suites that need a tool. Missing tool: in CI, one failing
 * test that says so; elsewhere, a visible skip.
 */
export function describeWith(tool: string, name: string, fn: () => void): void {
  const present = tool === 'qemu-img' ? hasQemuImg : tool === 'qemu-io' ? hasQemuIo : tool === 'vhdimount' ? hasVhdimount : hasTool(tool);
  if (present) {
    describe(name, fn);
  } else if (inCI) {
    describe(name, () => {
      it(`requires ${tool}`, () => {
        throw new Error(`${tool} is required in CI but was not found on PATH`);
      });
    });
  } else {
    notice(tool);
    describe.skip(`${name} (skipped: ${tool} missing)`, fn);
  }
}

const known = new Map<string, boolean>();
/** Is a command on PATH (looked up once)? */
export function hasTool(cmd: string): boolean {
  let v = known.get(cmd);
  if (v === undefined) {
    v = which(cmd);
    known.set(cmd, v);
  }
  return v;
}

/** describe() for suites that use qemu-img. */
export function describeQemu(name: string, fn: () => void): void {
  describeWith('qemu-img', name, fn);
}

/** Runs qemu-img and returns stdout (throws with stderr on failure). */
export function qemuImg(args: string[], options: { allowFail?: boolean; cwd?: string } = {}): { stdout: string; stderr: string; status: number } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, ...(options.cwd ? { cwd: options.cwd } : {}) });
  if (r.error) throw r.error;
  const status = r.status ?? -1;
  if (status !== 0 && !options.allowFail) {
    throw new Error(`qemu-img ${args.join(' ')} exited ${status}: ${r.stderr}`);
  }
  return { stdout: r.stdout, stderr: r.stderr, status };
}

/**
 * qemu-img with LUKS options (`qemu-img create -f luks -o ...`, `-o encrypt.format=luks,...`, amend): it times
 * PBKDF2 for the iter-time, and on a loaded machine now and then fails "Unable to get accurate CPU usage". Each try
 * appends `,<timeKey>=<ms>` to the argument after `-o` with the next of `times`, after a pause that grows with each
 * failure; another failure, or the last one, throws with qemu-img's stderr.
 */
export function qemuImgLuks(args: string[], options: { timeKey?: string; times?: readonly number[] } = {}): { stdout: string; stderr: string; status: number } {
  const timeKey = options.timeKey ?? 'iter-time';
  let last = '';
  let tries = 0;
  for (const ms of options.times ?? [10, 20, 50, 10, 100, 20, 200, 50]) {
    const r = qemuImg(
      args.map((a, i) => (args[i - 1] === '-o' ? `${a},${timeKey}=${ms}` : a)),
      { allowFail: true },
    );
    if (r.status === 0) return r;
    last = r.stderr;
    if (!/accurate CPU usage/.test(r.stderr)) break;
    // The failures come in bursts while the machine is busy: wait a little longer after each one.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100 * ++tries);
  }
  throw new Error(`qemu-img ${args.join(' ')}: ${last}`);
}

/** Runs qemu-io with -c commands on a file. */
export function qemuIo(file: string, format: string, commands: string[]): string {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  return execFileSync('qemu-io', args, { encoding: 'utf8' });
}

/** An entry of `qemu-img map --output=json`. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export function qemuMap(file: string, format?: string): QemuMapEntry[] {
  const args = ['map', '--output=json'];
  if (format) args.push('-f', format);
  args.push(file);
  return JSON.parse(qemuImg(args).stdout) as QemuMapEntry[];
}

export function qemuInfo(file: string, format?: string, cwd?: string): Record<string, unknown> {
  const args = ['info', '--output=json'];
  if (format) args.push('-f', format);
  args.push(file);
  return JSON.parse(qemuImg(args, cwd ? { cwd } : {}).stdout) as Record<string, unknown>;
}

/** qemu-img check; returns exit status and parsed JSON where qemu printed it. */
export function qemuCheck(file: string, format?: string, cwd?: string): { status: number; result: Record<string, unknown> | undefined; stderr: string } {
  const args = ['check', '--output=json'];
  if (format) args.push('-f', format);
  args.push(file);
  const r = qemuImg(args, { allowFail: true, ...(cwd ? { cwd } : {}) });
  let result: Record<string, unknown> | undefined;
  try {
    result = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    result = undefined;
  }
  return { status: r.status, result, stderr: r.stderr };
}

/** qemu-img compare; true when identical. */
export function qemuCompare(a: string, b: string, fa?: string, fb?: string): boolean {
  const args = ['compare'];
  if (fa) args.push('-f', fa);
  if (fb) args.push('-F', fb);
  args.push(a, b);
  const r = qemuImg(args, { allowFail: true });
  if (r.status === 0) return true;
  if (r.status === 1) return false;
  throw new Error(`qemu-img compare failed (${r.status}): ${r.stderr}`);
}
