// Ctrl-C during a conversion: a clean stop, status 130, no half-written output.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '@img/testkit';

const tmp = tempDir('img-sigint-');
afterAll(() => tmp.cleanup());
const bin = new URL('../dist/bin/img-convert.js', import.meta.url).pathname;

function interrupted(args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // The first progress line means the copy is under way: interrupt it, once.
      if (!sent && stderr.includes('bytesDone')) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.on('exit', (status) => resolve({ status, stderr }));
  });
}

describe('img-convert on SIGINT', () => {
  const input = join(tmp.path, 'big.img');
  const fd = openSync(input, 'w');
  ftruncateSync(fd, 4 * 2 ** 30);
  closeSync(fd);

  it('stops with status 130 and removes the partial output', async () => {
    const out = join(tmp.path, 'out.qcow2');
    const r = await interrupted(['--json-progress', '-S', '0', 'raw', 'qcow2', input, out]);
    expect(r.status).toBe(130);
    expect(r.stderr).toMatch(/interrupted; the partial output was removed/);
    expect(existsSync(out)).toBe(false);
  });

  it('keeps it with --keep-partial', async () => {
    const out = join(tmp.path, 'kept.qcow2');
    const r = await interrupted(['--keep-partial', '--json-progress', '-S', '0', 'raw', 'qcow2', input, out]);
    expect(r.status).toBe(130);
    expect(existsSync(out)).toBe(true);
  });
});
