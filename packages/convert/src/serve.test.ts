// img serve as a user runs it: started in the background, used by nbdinfo and qemu-img, stopped with Ctrl-C.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeWith, hasTool, qemuImg, qemuIo, tempDir, waitForSocket } from '@img/testkit';
import { afterAll, afterEach, expect, it } from 'vitest';
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

// Debian's python3-libnbd installs the module for the system python3.
const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import nbd']).status === 0);
if (!python && process.env.CI) throw new Error('python3-libnbd is required in CI (.ci/run installs it)');
const started: ChildProcess[] = [];
const sockets: Socket[] = [];
afterEach(() => {
  for (const c of started.splice(0)) c.kill('SIGKILL');
  for (const s of sockets.splice(0)) s.destroy();
});

/** Starts img serve with `args`; resolves once it has printed its URI. */
async function startServe(args: string[]): Promise<{ server: ChildProcess; exited: Promise<number>; stderr: () => string }> {
  const server = spawn(process.execPath, [img, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  started.push(server);
  let stderr = '';
  server.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number>((resolve) => server.on('close', (code) => resolve(code ?? -1)));
  for (let i = 0; i < 200 && !stderr.includes('serving'); i++) await new Promise((r) => setTimeout(r, 25));
  return { server, exited, stderr: () => stderr };
}

/** A libnbd client that connects and then keeps its connection open, saying nothing, as nbdsh or a VM does. */
async function idleClient(sock: string): Promise<void> {
  const c = spawn(python!, ['-c', 'import nbd,sys,time\nh=nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint("connected", flush=True)\ntime.sleep(60)', `nbd+unix:///?socket=${sock}`], { stdio: ['ignore', 'pipe', 'ignore'] });
  started.push(c);
  await new Promise<void>((resolve) => c.stdout!.on('data', () => resolve()));
}

/** A raw client that enters transmission and sends a 64 KiB write with 100 bytes of its payload: the server waits on it. */
async function stuckWriter(sock: string): Promise<void> {
  const s = createConnection(sock);
  sockets.push(s);
  s.on('error', () => {});
  let got = Buffer.alloc(0);
  const waiters: Array<() => void> = [];
  s.on('data', (d: Buffer) => {
    got = Buffer.concat([got, d]);
    waiters.splice(0).forEach((w) => w());
  });
  const take = async (n: number) => {
    while (got.length < n) await new Promise<void>((r) => waiters.push(r));
    const out = got.subarray(0, n);
    got = got.subarray(n);
    return out;
  };
  await take(18); // NBDMAGIC, IHAVEOPT, handshake flags
  const u32 = (v: number) => Buffer.from([v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255]);
  s.write(u32(3)); // FIXED_NEWSTYLE | NO_ZEROES
  s.write(Buffer.concat([Buffer.from('IHAVEOPT'), u32(7), u32(6), u32(0), Buffer.alloc(2)])); // NBD_OPT_GO "" with no info requests
  for (;;) {
    const head = await take(20);
    await take(head.readUInt32BE(16));
    if (head.readUInt32BE(12) === 1) break; // NBD_REP_ACK
  }
  s.write(Buffer.concat([u32(0x25609513), Buffer.from([0, 0, 0, 1]), Buffer.alloc(8, 1), Buffer.alloc(8), u32(65536), Buffer.alloc(100, 7)]));
  await new Promise((r) => setTimeout(r, 100));
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

  it.skipIf(!hasTool('qemu-nbd'))('answers base:allocation as qemu-nbd: data over holes of a preallocated file is "zero" (2), in a chain, a fixed VHD and a flat VMDK', async () => {
    const at = (n: string) => join(tmp.path, n);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', at('pre-base.qcow2'), '64M']);
    qemuIo(at('pre-base.qcow2'), 'qcow2', ['write -P 1 1M 1M', 'write -z 4M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', at('pre-base.qcow2'), '-F', 'qcow2', at('pre-top.qcow2')]);
    qemuIo(at('pre-top.qcow2'), 'qcow2', ['write -P 2 1536k 1M', 'write -z 8M 64k']);
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', at('pre-fixed.vhd'), '32M']);
    qemuIo(at('pre-fixed.vhd'), 'vpc', ['write -P 3 2M 64k']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', at('pre-flat.vmdk'), '32M']);
    qemuIo(at('pre-flat.vmdk'), 'vmdk', ['write -P 4 3M 64k']);
    for (const [file, format] of [
      ['pre-top.qcow2', 'qcow2'],
      ['pre-fixed.vhd', 'vpc'],
      ['pre-flat.vmdk', 'vmdk'],
    ] as const) {
      const ours = await startServe(['-k', at(`${file}.img.sock`), at(file)]);
      const qemu = spawn('qemu-nbd', ['-t', '-r', '-f', format, '-k', at(`${file}.qemu.sock`), at(file)], { stdio: 'ignore' });
      started.push(qemu);
      expect(await waitForSocket(at(`${file}.qemu.sock`))).toBe(true);
      const theirs = await client('nbdinfo', ['--map', `nbd+unix:///?socket=${at(`${file}.qemu.sock`)}`]);
      const mine = await client('nbdinfo', ['--map', `nbd+unix:///?socket=${at(`${file}.img.sock`)}`]);
      expect(theirs.stdout, file).toMatch(/\b2\s+zero/);
      expect(mine.stdout, `${file}: ${ours.stderr()}`).toBe(theirs.stdout);
      ours.server.kill('SIGINT');
      expect(await ours.exited).toBe(0);
      qemu.kill();
    }
  });

  it('takes img convert -n into a writable export: zero runs go as WRITE_ZEROES and leave the target sparse', async () => {
    const src = join(tmp.path, 'src.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '64M']);
    qemuIo(src, 'qcow2', ['write -P 0x31 0 4M', 'write -z 8M 4M', 'write -P 0x32 40M 1M']);
    // The target starts fully allocated with other bytes: every zero run of the source must be written.
    const dst = join(tmp.path, 'dst.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', dst, '64M']);
    qemuIo(dst, 'qcow2', ['write -P 0x99 0 64M']);
    const sock = join(tmp.path, 'dst.sock');
    const server = spawn(process.execPath, [img, 'serve', '-w', '-k', sock, dst], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    for (let i = 0; i < 200 && !stderr.includes('serving'); i++) await new Promise((r) => setTimeout(r, 25));
    // img-convert: its summary line says what was written (img convert, as qemu-img convert, prints nothing).
    const conv = run('img-convert', ['-n', '-O', 'raw', src, `nbd+unix:///?socket=${sock}`]);
    expect(conv.status, conv.stderr).toBe(0);
    expect(conv.stderr).toMatch(/, 5 MiB written,/);
    const exited = new Promise<number>((resolve) => server.on('close', (code) => resolve(code ?? -1)));
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(qemuImg(['check', dst], { allowFail: true }).status).toBe(0);
    expect(qemuImg(['compare', src, dst], { allowFail: true }).status).toBe(0);
    // Only the 5 MiB of data stay allocated: the zero runs were deallocated, not written as zero bytes.
    const map = JSON.parse(qemuImg(['map', '--output=json', dst]).stdout) as Array<{ length: number; data: boolean }>;
    expect(map.filter((m) => m.data).reduce((n, m) => n + m.length, 0)).toBe(5 * 2 ** 20);
  });

  it.skipIf(!python)('exits promptly on SIGTERM or SIGINT while clients stay connected, with a -w qcow2 flushed and check clean', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const file = join(tmp.path, `held-${signal}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
      const sock = join(tmp.path, `held-${signal}.sock`);
      const { server, exited, stderr } = await startServe(['-w', '-k', sock, file]);
      expect(stderr()).toContain('serving');
      const src = join(tmp.path, `held-${signal}.raw`);
      qemuImg(['create', '-q', '-f', 'raw', src, '16M']);
      qemuIo(src, 'raw', ['write -P 0x3c 1M 3M']);
      const conv = run('img-convert', ['-n', '-O', 'raw', src, `nbd+unix:///?socket=${sock}`]);
      expect(conv.status, conv.stderr).toBe(0);
      await idleClient(sock);
      await idleClient(sock);
      const t0 = Date.now();
      server.kill(signal);
      expect(await exited).toBe(0);
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(existsSync(sock)).toBe(false);
      expect(stderr()).not.toContain('Premature close');
      expect(qemuImg(['check', file], { allowFail: true }).status).toBe(0);
      expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', file, src], { allowFail: true }).status).toBe(0);
    }
  });

  it('gives a client stuck in a request a grace period, which a second Ctrl-C cuts short; the image is still closed clean', async () => {
    const file = join(tmp.path, 'stuck.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
    qemuIo(file, 'qcow2', ['write -P 0x44 0 1M']);
    for (const twice of [false, true]) {
      const sock = join(tmp.path, `stuck-${twice}.sock`);
      const { server, exited } = await startServe(['-w', '-k', sock, file]);
      await stuckWriter(sock);
      const t0 = Date.now();
      server.kill('SIGINT');
      if (twice) {
        await new Promise((r) => setTimeout(r, 100));
        server.kill('SIGINT');
      }
      expect(await exited).toBe(0);
      const took = Date.now() - t0;
      if (twice) expect(took).toBeLessThan(800);
      else expect(took).toBeGreaterThanOrEqual(900);
      expect(took).toBeLessThan(3000);
      expect(existsSync(sock)).toBe(false);
      expect(qemuImg(['check', file], { allowFail: true }).status).toBe(0);
      expect(qemuIo(file, 'qcow2', ['read -P 0x44 0 1M'])).not.toMatch(/Pattern verification failed/);
    }
  });

  it('offers a qcow2 bitmap with -B and refuses -B for what it cannot serve', () => {
    expect(run('img', ['serve', '-w', '-B', 'b0', '-k', '/tmp/x.sock', 'none.qcow2']).stderr).toContain('read-only exports');
    expect(run('img', ['serve', '-l', 's1', '-B', 'b0', '-k', '/tmp/x.sock', 'none.qcow2']).stderr).toContain('-l and -B exclude each other');
    const raw = join(tmp.path, 'plain.raw');
    qemuImg(['create', '-q', '-f', 'raw', raw, '1M']);
    const r = run('img', ['serve', '-B', 'b0', '-k', join(tmp.path, 'p.sock'), raw]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('-B needs a qcow2 image');
    const q = join(tmp.path, 'nobitmap.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', q, '1M']);
    const n = run('img', ['serve', '-B', 'b0', '-k', join(tmp.path, 'n.sock'), q]);
    expect(n.status).not.toBe(0);
    expect(n.stderr).toContain('no persistent bitmap named "b0"');
  });

  it('refuses contradictory options before opening anything', () => {
    const r = run('img', ['serve', '-k', '/tmp/x.sock', '-p', '10809', 'none.qcow2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('exclude each other');
    expect(run('img', ['serve', '-w', '-l', 's', 'none.qcow2']).stderr).toContain('exclude each other');
  });

  it('never listens where a file of the chain is (-k given the image or its backing file) nor on any other file: refused, the file intact', () => {
    const base = join(tmp.path, 'k-base.qcow2');
    const top = join(tmp.path, 'k-top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '16M']);
    qemuIo(base, 'qcow2', ['write -P 0x31 0 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const before = [base, top].map((f) => readFileSync(f));
    for (const [socket, image] of [
      [top, top],
      [base, top],
    ] as const) {
      const r = run('img', ['serve', '-w', '-k', socket, image]);
      expect(r.status).toBe(1);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`ERR_IMG_SAME_FILE: ${socket}: refusing to write the socket`);
    }
    const notes = join(tmp.path, 'k-notes.txt');
    writeFileSync(notes, 'keep me');
    const other = run('img', ['serve', '-k', notes, top]);
    expect(other.status).toBe(1);
    expect(other.stderr).toContain(`${notes}: refusing to listen there: it exists and is a regular file`);
    expect(readFileSync(notes, 'utf8')).toBe('keep me');
    [base, top].forEach((f, i) => expect(readFileSync(f).equals(before[i]!)).toBe(true));
  });
});

describeWith('qemu-nbd', 'img reads NBD URIs as qemu-img does', () => {
  it('info, map, compare and a sparse convert from a qemu-nbd export', async () => {
    const file = join(tmp.path, 'q.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
    qemuIo(file, 'qcow2', ['write -P 0x61 4M 1M', 'write -P 0x62 40M 64k']);
    const sock = join(tmp.path, 'q.sock');
    const server = spawn('qemu-nbd', ['-t', '-r', '-e', '8', '-f', 'qcow2', '-k', sock, file], { stdio: 'ignore' });
    try {
      expect(await waitForSocket(sock)).toBe(true);
      const u = `nbd+unix:///?socket=${sock}`;
      const ours = JSON.parse(run('img', ['map', '--output=json', u]).stdout) as unknown;
      const theirs = JSON.parse((await client('qemu-img', ['map', '--output=json', u])).stdout) as unknown;
      expect(ours).toEqual(theirs);
      const info = run('img', ['info', u]);
      expect(info.stdout).toContain('virtual size: 64 MiB (67108864 bytes)');
      expect(info.stdout).toContain('disk size: unavailable');
      expect(run('img', ['compare', file, u]).status).toBe(0);
      const out = join(tmp.path, 'copy.qcow2');
      const conv = run('img-convert', ['-O', 'qcow2', u, out]);
      expect(conv.status, conv.stderr).toBe(0);
      expect(conv.stderr).toMatch(/, 1\.06 MiB read,/);
      expect(qemuImg(['compare', file, out], { allowFail: true }).status).toBe(0);
      expect(run('img', ['check', u]).status).toBe(63);
    } finally {
      server.kill();
    }
  });
  it('connects once to convert (with and without -f) and dd from a qemu-nbd that serves one connection (no --persistent), as qemu-img', async () => {
    const file = join(tmp.path, 'once.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
    qemuIo(file, 'qcow2', ['write -P 0x71 2M 1M']);
    const runs: Array<(uri: string, out: string) => string[]> = [(uri, out) => ['convert', '-O', 'qcow2', uri, out], (uri, out) => ['convert', '-f', 'raw', '-O', 'qcow2', uri, out], (uri, out) => ['dd', `if=${uri}`, `of=${out}`, '-O', 'qcow2', 'bs=1M', 'count=16']];
    for (const [i, args] of runs.entries()) {
      const sock = join(tmp.path, `once${i}.sock`);
      const server = spawn('qemu-nbd', ['-f', 'qcow2', '-k', sock, file], { stdio: 'ignore' });
      started.push(server);
      expect(await waitForSocket(sock)).toBe(true);
      const out = join(tmp.path, `once${i}.qcow2`);
      const r = run('img', args(`nbd+unix:///?socket=${sock}`, out));
      expect(r.status, r.stderr).toBe(0);
      expect(qemuImg(['compare', file, out], { allowFail: true }).status).toBe(0);
    }
  });

  it("takes the URIs qemu-img takes: a + in ?socket= stays a +, and qemu's legacy nbd:unix:PATH and nbd:HOST:PORT with :exportname=", async () => {
    const file = join(tmp.path, 'legacy.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
    qemuIo(file, 'qcow2', ['write -P 0x71 1M 1M']);
    const sock = join(tmp.path, 'c+d.sock');
    const server = spawn('qemu-nbd', ['-t', '-r', '-x', 'top', '-f', 'qcow2', '-k', sock, file], { stdio: 'ignore' });
    try {
      expect(await waitForSocket(sock)).toBe(true);
      for (const u of [`nbd+unix:///top?socket=${sock}`, `nbd:unix:${sock}:exportname=top`]) {
        const ours = run('img', ['map', '--output=json', u]);
        expect(ours.status, ours.stderr).toBe(0);
        expect(JSON.parse(ours.stdout)).toEqual(JSON.parse((await client('qemu-img', ['map', '--output=json', u])).stdout));
        expect(run('img', ['compare', file, u]).status).toBe(0);
        // The export named as qemu names it, whichever spelling opened it.
        const imageLine = (out: string) => out.split('\n')[0];
        expect(imageLine(run('img', ['info', u]).stdout)).toBe(`image: nbd+unix:///top?socket=${sock}`);
        expect(imageLine(run('img', ['info', u]).stdout)).toBe(imageLine((await client('qemu-img', ['info', u])).stdout));
      }
    } finally {
      server.kill();
    }
    // TCP, from img serve on a port it picks.
    const { server: serving, stderr } = await startServe(['-p', '0', '-x', 'top', file]);
    const port = /nbd:\/\/127\.0\.0\.1:(\d+)\/top/.exec(stderr())?.[1];
    expect(port, stderr()).toBeDefined();
    const out = join(tmp.path, 'legacy-copy.qcow2');
    const conv = run('img', ['convert', '-O', 'qcow2', `nbd:127.0.0.1:${port}:exportname=top`, out]);
    expect(conv.status, conv.stderr).toBe(0);
    serving.kill('SIGTERM');
    expect(qemuImg(['compare', file, out], { allowFail: true }).status).toBe(0);
  });

  it('says why for the URIs it cannot use (TLS, a query on nbd://) instead of looking for a file', () => {
    for (const [u, why] of [
      ['nbds://127.0.0.1:1/top', /TLS \(nbds:\/\/\), which is not supported/],
      ['nbds+unix:///top?socket=/nonexistent.sock', /TLS \(nbds\+unix:\/\/\), which is not supported/],
      ['nbd://127.0.0.1:1/top?socket=/x.sock', /takes none of/],
    ] as const) {
      const r = run('img', ['info', u]);
      expect(r.status).toBe(1);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(why);
      expect(r.stderr).not.toContain('ENOENT');
    }
  });

  it('writes into an existing export without -n, as qemu-img does, and refuses one that is too small naming both sizes', async () => {
    const src = join(tmp.path, 'into-src.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '16M']);
    qemuIo(src, 'qcow2', ['write -P 0x21 0 1M', 'write -P 0x22 9M 64k']);
    const big = join(tmp.path, 'into-big.raw');
    const small = join(tmp.path, 'into-small.raw');
    // A raw export of a volume that held other bytes, as oVirt uploads a qcow2 onto a logical volume.
    const volume = join(tmp.path, 'into-volume.raw');
    qemuImg(['create', '-q', '-f', 'raw', big, '20M']);
    qemuIo(big, 'raw', ['write -P 0x99 0 20M']);
    qemuImg(['create', '-q', '-f', 'raw', small, '8M']);
    qemuImg(['create', '-q', '-f', 'raw', volume, '20M']);
    qemuIo(volume, 'raw', ['write -P 0x99 0 20M']);
    const servers = [big, small, volume].map((f) => spawn('qemu-nbd', ['-t', '-f', 'raw', '-k', `${f}.sock`, f], { stdio: 'ignore' }));
    try {
      for (const f of [big, small, volume]) expect(await waitForSocket(`${f}.sock`)).toBe(true);
      const conv = run('img', ['convert', '-O', 'raw', src, `nbd+unix:///?socket=${big}.sock`]);
      expect(conv.status, conv.stderr).toBe(0);
      const tooSmall = run('img', ['convert', '-O', 'raw', src, `nbd+unix:///?socket=${small}.sock`]);
      expect(tooSmall.status).toBe(1);
      expect(tooSmall.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(tooSmall.stderr).toMatch(/export is 8388608 bytes, smaller than the 16777216 bytes of the source/);
      // qcow2 is laid out in the export as on a block device; one that cannot hold the image is refused, naming both sizes.
      const qcow2 = run('img', ['convert', '-O', 'qcow2', src, `nbd+unix:///?socket=${volume}.sock`]);
      expect(qcow2.status, qcow2.stderr).toBe(0);
      const qcow2Small = run('img', ['convert', '-O', 'qcow2', '-o', 'preallocation=full', src, `nbd+unix:///?socket=${small}.sock`]);
      expect(qcow2Small.status).toBe(1);
      expect(qcow2Small.stderr).toMatch(/the NBD export is 8388608 bytes, smaller than the \d+ bytes a qcow2 image of the source needs/);
      const vpc = run('img', ['convert', '-O', 'vpc', src, `nbd+unix:///?socket=${volume}.sock`]);
      expect(vpc.status).toBe(1);
      expect(vpc.stderr).toMatch(/into an NBD export as raw or qcow2 only, not vhd/);
    } finally {
      // Gone, not just signalled: qemu-nbd's write lock on the file would refuse the reads below.
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              if (s.exitCode !== null) return resolve();
              s.on('close', () => resolve());
              s.kill();
            }),
        ),
      );
    }
    // The source's bytes, its holes written as zeros; past its end the export keeps what it held, as qemu-img leaves it.
    const head = join(tmp.path, 'into-head.raw');
    qemuImg(['convert', '-f', 'raw', '-O', 'raw', big, head]);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', src, head], { allowFail: true }).stdout).toContain('Content mismatch at offset 16777216');
    expect(qemuIo(big, 'raw', ['read -P 0 1M 8M', 'read -P 0x99 16M 4M'])).not.toMatch(/Pattern verification failed/);
    // The volume holds a qcow2 image qemu-img reads as the source, its old bytes under it notwithstanding.
    expect(qemuImg(['check', '-f', 'qcow2', volume]).status).toBe(0);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', src, volume]).stdout).toContain('Images are identical');
  });

  it('reads a qcow2 inside a raw export as qemu-img does: a relative backing file has no actual path, and JSON keys match', async () => {
    const base = join(tmp.path, 'nb-base.qcow2');
    const top = join(tmp.path, 'nb-top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '16M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'nb-base.qcow2', '-F', 'qcow2', top]);
    const plain = join(tmp.path, 'nb-plain.raw');
    qemuImg(['create', '-q', '-f', 'raw', plain, '1M']);
    const sock = join(tmp.path, 'nb-top.sock');
    const rawSock = join(tmp.path, 'nb-plain.sock');
    const servers = [spawn('qemu-nbd', ['-t', '-r', '-f', 'raw', '-k', sock, top], { stdio: 'ignore' }), spawn('qemu-nbd', ['-t', '-r', '-f', 'raw', '-k', rawSock, plain], { stdio: 'ignore' })];
    try {
      expect(await waitForSocket(sock)).toBe(true);
      expect(await waitForSocket(rawSock)).toBe(true);
      const u = `nbd+unix:///?socket=${sock}`;
      const line = (t: string) => t.split('\n').find((l) => l.startsWith('backing file:'));
      const ours = run('img', ['info', u]);
      expect(ours.status, ours.stderr).toBe(0);
      expect(line(ours.stdout)).toBe('backing file: nb-base.qcow2 (cannot determine actual path)');
      expect(line(ours.stdout)).toBe(line((await client('qemu-img', ['info', u])).stdout));
      // JSON as qemu-img's, but for the filename (qemu prints its own spelling of the URI): no full-backing-filename,
      // and no dirty-flag for a raw export (qemu's NBD driver has no image info), one for a qcow2 inside one.
      for (const v of [u, `nbd+unix:///?socket=${rawSock}`]) {
        const a = JSON.parse(run('img', ['info', '--output=json', v]).stdout) as Record<string, unknown>;
        const b = JSON.parse((await client('qemu-img', ['info', '--output=json', v])).stdout) as Record<string, unknown>;
        delete a.filename;
        delete b.filename;
        expect(a).toEqual(b);
      }
      for (const args of [
        ['convert', '-O', 'raw', u, join(tmp.path, 'nb.raw')],
        ['info', '--backing-chain', u],
      ]) {
        const r = run('img', args);
        expect(r.status).toBe(1);
        expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
        expect(r.stderr).toContain('cannot open the backing file "nb-base.qcow2": it is named relative to the image, and an image read over NBD has no directory to resolve it in');
      }
      expect(existsSync(join(tmp.path, 'nb.raw'))).toBe(false);
    } finally {
      servers.forEach((s) => s.kill());
    }
  });
});
