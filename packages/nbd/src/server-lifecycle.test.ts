// serveNbd's connections over their life, judged by libnbd (python3 `nbd`, nbdinfo, nbdcopy): close() with clients that
// never leave, -e N queueing and multi-conn, and what is told of a dropped client.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, createRaw, type Disk } from '@img/block';
import { describeWith, tempDir } from '@img/testkit';
import { afterAll, afterEach, expect, it } from 'vitest';
import * as P from './protocol.js';
import { serveNbd, type NbdServer } from './index.js';
import { RawClient } from './test-raw-client.js';

const tmp = tempDir('img-nbd-life-');
afterAll(() => tmp.cleanup());
const at = (n: string) => join(tmp.path, n);
const uri = (sock: string) => `nbd+unix:///?socket=${sock}`;

// Debian's python3-libnbd installs the module for the system python3.
const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import nbd']).status === 0);
if (!python && process.env.CI) throw new Error('python3-libnbd is required in CI (.ci/run installs it)');

const children: ChildProcess[] = [];
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const f of cleanups.splice(0)) await f();
});

/** A libnbd client that connects, prints "connected", then holds its connection `seconds` without a word. */
function holder(sock: string, seconds: number): { child: ChildProcess; connected: Promise<number>; exited: Promise<{ code: number; out: string }> } {
  const child = spawn(python!, ['-c', `import nbd,sys,time\nh=nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint("connected", flush=True)\ntime.sleep(${seconds})\nh.shutdown()`, uri(sock)], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  const connected = new Promise<number>((resolve) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('connected')) resolve(Date.now());
    });
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<{ code: number; out: string }>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, out })));
  return { child, connected, exited };
}

function run(cmd: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

async function served(name: string, options: Parameters<typeof serveNbd>[1] = {}, disk?: Disk): Promise<{ server: NbdServer; sock: string; disk: Disk }> {
  const d = disk ?? (await createRaw(new MemoryStorage(), { size: 4 << 20 }));
  const sock = at(name);
  const server = await serveNbd({ name: '', disk: d, writable: !d.readOnly }, { socket: sock, ...options });
  cleanups.push(async () => {
    await server.close({ graceMs: 0 });
    await d.close();
  });
  return { server, sock, disk: d };
}

/** Resolves how long `work` took, or rejects when it takes over `ms`. */
async function within(work: Promise<unknown>, ms: number): Promise<number> {
  const started = Date.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([work, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`still running after ${ms} ms`)), ms)))]);
  clearTimeout(timer);
  return Date.now() - started;
}

describeWith('nbdinfo', 'serveNbd connections', () => {
  it.skipIf(!python)('close() ends at once while a libnbd client keeps an idle connection, and removes the socket', async () => {
    const { server, sock } = await served('hold.sock');
    const client = holder(sock, 30);
    await client.connected;
    expect(server.connections).toBe(1);
    expect(await within(server.close(), 5000)).toBeLessThan(500);
    expect(existsSync(sock)).toBe(false);
    expect(server.connections).toBe(0);
  });

  it('close() cuts a client stuck in a request off after the grace period; a second close() cuts it at once', async () => {
    for (const [first, second] of [
      [300, undefined],
      [30_000, 0],
    ] as const) {
      const { server, sock } = await served(`stuck-${first}.sock`);
      const c = await RawClient.connect(sock);
      await c.go();
      // A write whose payload never comes: the server waits for it, so the connection is never idle between requests.
      c.request(P.CMD_WRITE, 0, 65536, 0, new Uint8Array(100));
      await new Promise((r) => setTimeout(r, 50));
      const closing = server.close({ graceMs: first });
      const took = await within(second === undefined ? closing : server.close({ graceMs: second }), 5000);
      if (second === undefined) expect(took).toBeGreaterThanOrEqual(250);
      expect(took).toBeLessThan(1500);
      await within(closing, 100);
      expect(await c.closed()).toBe(true);
    }
  });

  it('close() answers the requests in flight before it ends their connection', async () => {
    const base = await createRaw(new MemoryStorage(), { size: 1 << 20 });
    await base.write(0, new Uint8Array(4096).fill(0x5a));
    let started!: () => void;
    const reading = new Promise<void>((r) => (started = r));
    // A disk whose reads take 300 ms: the read is in flight when close() is called.
    const slow = new Proxy(base, {
      get(target, key) {
        if (key === 'readInto')
          return async (offset: number, into: Uint8Array) => {
            started();
            await new Promise((r) => setTimeout(r, 300));
            return target.readInto(offset, into);
          };
        const v: unknown = Reflect.get(target, key);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const { server, sock } = await served('inflight.sock', {}, slow);
    const c = await RawClient.connect(sock);
    await c.go();
    c.request(P.CMD_READ, 0, 4096);
    await reading;
    const closed = server.close({ graceMs: 2000 });
    const reply = await c.reply();
    expect(reply.errno).toBe(0);
    expect(reply.data!.every((b) => b === 0x5a)).toBe(true);
    expect(await c.closed()).toBe(true);
    expect(await within(closed, 1000)).toBeLessThan(1000);
  });

  it('-e 1 (maxConnections 1) does not advertise multi-conn, and nbdcopy copies from it', async () => {
    const one = await served('e1.sock', { maxConnections: 1 });
    const two = await served('e2.sock', { maxConnections: 2 });
    const multi = async (sock: string) => (JSON.parse((await run('nbdinfo', ['--json', uri(sock)])).stdout) as { exports: Array<{ can_multi_conn: boolean }> }).exports[0]!.can_multi_conn;
    expect(await multi(one.sock)).toBe(false);
    expect(await multi(two.sock)).toBe(true);
    const copy = await run('nbdcopy', [uri(one.sock), 'null:']);
    expect(copy.status, copy.stderr).toBe(0);
  });

  it.skipIf(!python)('a client past the limit waits for a slot instead of being closed before the greeting', async () => {
    const { sock } = await served('queue.sock', { maxConnections: 1 });
    const first = holder(sock, 1.5);
    const firstAt = await first.connected;
    const second = holder(sock, 0);
    const secondAt = await second.connected;
    expect((await first.exited).code).toBe(0);
    const done = await second.exited;
    expect(done.code, done.out).toBe(0);
    // Served once the first client left, not before.
    expect(secondAt - firstAt).toBeGreaterThanOrEqual(1200);
  });

  it.skipIf(!python)('tells of a client dropped for idleness once, saying so', async () => {
    const errors: string[] = [];
    const { server, sock } = await served('idle.sock', { idleTimeoutMs: 300, onConnectionError: (e) => errors.push(e.message) });
    const client = holder(sock, 1);
    await client.connected;
    await client.exited;
    for (let i = 0; i < 100 && server.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(errors).toEqual(['the client was idle for 0.3 s and was dropped']);
  });
});

it('listens on a Unix socket path only where nothing or an old socket is: a file or directory there is refused and left as it was', async () => {
  const disk = await createRaw(new MemoryStorage(), { size: 1 << 20 });
  try {
    const file = at('not-a-socket.qcow2');
    writeFileSync(file, 'an image, say');
    await expect(serveNbd([{ name: '', disk }], { socket: file })).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      message: expect.stringContaining(`${file}: refusing to listen there: it exists and is a regular file, and binding the socket would delete it`),
    });
    expect(readFileSync(file, 'utf8')).toBe('an image, say');
    mkdirSync(at('a-dir'));
    await expect(serveNbd([{ name: '', disk }], { socket: at('a-dir') })).rejects.toMatchObject({ message: expect.stringContaining('it exists and is a directory') });
    expect(statSync(at('a-dir')).isDirectory()).toBe(true);
    // A socket left behind by an earlier server (killed: no close) is replaced; close removes it.
    const sock = at('stale.sock');
    const first = await serveNbd([{ name: '', disk }], { socket: sock });
    expect(statSync(sock).isSocket()).toBe(true);
    const second = await serveNbd([{ name: '', disk }], { socket: sock });
    await second.close();
    expect(existsSync(sock)).toBe(false);
    await first.close();
  } finally {
    await disk.close();
  }
});
