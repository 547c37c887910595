// scripts/robustness.py (python3-libnbd, the module nbdsh runs on) against img's server: malformed options and
// requests, oversized ones, reads past the end, abrupt disconnects; then the server must still serve the right bytes.
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileStorage, fileResolver } from '@img/block/node';
import { openQcow2 } from '@img/qcow2';
import { qemuImg, qemuIo, tempDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { serveNbd } from './index.js';

const script = fileURLToPath(new URL('../scripts/robustness.py', import.meta.url));
// nbdsh's python: Debian's python3-libnbd installs the module for the system python3.
const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import nbd']).status === 0);
if (!python && process.env.CI) throw new Error('python3-libnbd is required in CI (.ci/run installs it)');

const tmp = tempDir('img-nbd-robust-');
afterAll(() => tmp.cleanup());

describe.skipIf(!python)('robustness against a python3-libnbd script', () => {
  it('answers every malformed client as the protocol asks, and then serves correctly', async () => {
    const file = join(tmp.path, 'r.qcow2');
    const ref = join(tmp.path, 'r.raw');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
    qemuIo(file, 'qcow2', ['write -P 0x17 0 5M', 'write -P 0x18 40M 1M', 'write -z 50M 1M']);
    qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', file, ref]);
    const disk = await openQcow2(await FileStorage.open(file), { resolver: fileResolver });
    const errors: string[] = [];
    const server = await serveNbd({ name: '', disk }, { socket: join(tmp.path, 'r.sock'), onConnectionError: (e) => errors.push(e.message) });
    try {
      const result = await new Promise<{ status: number; out: string }>((resolve) => {
        const child = spawn(python!, [script, join(tmp.path, 'r.sock'), ref], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
        const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
        child.on('close', (code) => {
          clearTimeout(timer);
          resolve({ status: code ?? -1, out });
        });
      });
      expect(result.status, result.out).toBe(0);
      expect(result.out.match(/^ok /gm)?.length).toBe(15);
      // The violations were told to the caller, one connection each, and every connection is gone.
      expect(errors.some((e) => e.includes('request magic'))).toBe(true);
      expect(errors.some((e) => e.includes('over the 33554432-byte limit'))).toBe(true);
      for (let i = 0; i < 100 && server.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(server.connections).toBe(0);
    } finally {
      await server.close();
      await disk.close();
    }
  });
});
