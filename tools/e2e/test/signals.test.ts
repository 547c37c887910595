// SIGINT and SIGTERM in the middle of a conversion, as `kill`, `timeout`,
// systemd or a container runtime send them: the status a shell expects of
// a process a signal ended (130, 143), one line on stderr, the output
// removed (or, on a pipe, said to be incomplete), and the input untouched.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-signals-');
afterAll(() => user.cleanup());
const bin = (name: string) => join(user.dir, '..', '.bin', name);

interface Stopped {
  status: number | null;
  stderr: string;
  stdoutBytes: number;
}

/**
 * Runs a bin, sends `signal` once the run is under way (a JSON progress
 * line on stderr, or `stdoutBytes` bytes read from its stdout, which is a
 * pipe this process drains), and waits for it to end.
 */
function stopWhileRunning(args: string[], signal: NodeJS.Signals, when: { progress: true } | { stdoutBytes: number }): Promise<Stopped> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: user.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdoutBytes = 0;
    let sent = false;
    const send = () => {
      if (sent) return;
      sent = true;
      child.kill(signal);
    };
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      if ('progress' in when && stderr.includes('bytes-done')) send();
    });
    child.stdout.on('data', (d: Buffer) => {
      stdoutBytes += d.length;
      if ('stdoutBytes' in when && stdoutBytes >= when.stdoutBytes) send();
    });
    child.on('error', reject);
    child.on('exit', (status) => {
      if (!sent) reject(new Error(`the command ended before the signal was sent: ${stderr}`));
      else resolve({ status, stderr, stdoutBytes });
    });
  });
}

describeQemu('signals in the middle of a conversion', () => {
  let before: string;
  const sha = () =>
    createHash('sha256')
      .update(readFileSync(user.path('in.qcow2')))
      .digest('hex');
  beforeAll(() => {
    // 4 GiB with -S 0: every byte is written, long enough to be stopped, nothing to prepare.
    user.sh('truncate -s 4G big.raw');
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('in.qcow2'), '4G']);
    before = sha();
  });

  it('SIGTERM: status 143 (not 130), one line, the output removed', async () => {
    const r = await stopWhileRunning([bin('img-convert'), '--json-progress', '-S', '0', 'raw', 'qcow2', 'big.raw', 'out.qcow2'], 'SIGTERM', { progress: true });
    expect(r.status, r.stderr).toBe(143);
    expect(r.stderr).toMatch(/\nimg-convert: interrupted; the partial output was removed\n$/);
    expect(user.sh('test -e out.qcow2').status).not.toBe(0);
  });

  it('SIGINT with img convert: status 130, the output removed', async () => {
    const r = await stopWhileRunning([bin('img'), 'convert', '--json-progress', '-S', '0', '-O', 'vpc', 'big.raw', 'out.vhd'], 'SIGINT', { progress: true });
    expect(r.status, r.stderr).toBe(130);
    expect(user.sh('test -e out.vhd').status).not.toBe(0);
  });

  for (const [signal, status] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    it(`${signal} while the image goes to stdout: status ${status}, said to be incomplete, the input untouched`, async () => {
      // A raw image on a pipe carries every zero: 4 GiB, far more than is read before the signal.
      const r = await stopWhileRunning([bin('img-convert'), 'qcow2', 'raw', 'in.qcow2', '-'], signal, { stdoutBytes: 8 << 20 });
      expect(r.status, r.stderr).toBe(status);
      expect(expectOneLine(r.stderr)).toEqual(['img-convert: interrupted; the image written to standard output is incomplete']);
      expect(r.stdoutBytes).toBeLessThan(4 * 2 ** 30);
      expect(sha()).toBe(before);
      expect(qemuImg(['check', user.path('in.qcow2')]).status).toBe(0);
    });
  }
});
