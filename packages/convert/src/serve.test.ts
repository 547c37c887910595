// img serve as a user runs it: started in the background, used by nbdinfo and qemu-img, stopped with Ctrl-C.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeWith, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { nbdUri } from './cli/commands/serve.js';
import { run } from './test/cli.js';

const tmp = tempDir('img-serve-');
afterAll(() => tmp.cleanup());
const img = fileURLToPath(new URL('../dist/bin/img.js', import.meta.url));

function client(cmd: string, args: string[]): Promise<{ status: number; stdout: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let stdout = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.on('close', (code) => resolve({ status: code ?? -1, stdout }));
  });
}

it('names its address as nbd URIs', () => {
  expect(nbdUri({ socket: '/tmp/a.sock' }, '')).toBe('nbd+unix:///?socket=/tmp/a.sock');
  expect(nbdUri({ host: '127.0.0.1', port: 10809 }, 'vm disk')).toBe('nbd://127.0.0.1:10809/vm%20disk');
  expect(nbdUri({ host: '::1', port: 1 }, 'a/b')).toBe('nbd://[::1]:1/a/b');
});

describeWith('nbdinfo', 'img serve', () => {
  it('serves until SIGINT, prints its URI, and leaves no socket behind', async () => {
    const file = join(tmp.path, 'vm.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '32M']);
    qemuIo(file, 'qcow2', ['write -P 0x5a 1M 2M']);
    const sock = join(tmp.path, 'vm.sock');
    const server = spawn(process.execPath, [img, 'serve', '-k', sock, '-x', 'vm', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    server.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    for (let i = 0; i < 200 && !stderr.includes('serving'); i++) await new Promise((r) => setTimeout(r, 25));
    expect(stderr).toContain(`at nbd+unix:///vm?socket=${sock}`);
    const map = await client('nbdinfo', ['--map', `nbd+unix:///vm?socket=${sock}`]);
    expect(map.stdout).toMatch(/1048576\s+2097152\s+0\s+data/);
    expect((await client('qemu-img', ['compare', '-f', 'qcow2', file, `nbd+unix:///vm?socket=${sock}`])).status).toBe(0);
    const exited = new Promise<number>((resolve) => server.on('close', (code) => resolve(code ?? -1)));
    server.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(existsSync(sock)).toBe(false);
  });

  it('refuses contradictory options before opening anything', () => {
    const r = run('img', ['serve', '-k', '/tmp/x.sock', '-p', '10809', 'none.qcow2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('exclude each other');
    expect(run('img', ['serve', '-w', '-l', 's', 'none.qcow2']).stderr).toContain('exclude each other');
  });
});
