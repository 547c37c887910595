// img's NBD server judged by independent clients: nbdinfo (libnbd) and qemu-img/qemu-io (qemu's client),
// and compared with qemu-nbd serving the same file.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { FileStorage, fileResolver } from '@img/block/node';
import { openQcow2, readQcow2DirtyBitmap } from '@img/qcow2';
import { countReads, describeWith, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { NbdStorage, serveNbd, type NbdServer } from './index.js';

const tmp = tempDir('img-nbd-');
afterAll(() => tmp.cleanup());
const at = (name: string) => join(tmp.path, name);
const uri = (socket: string, name = '') => `nbd+unix:///${name}?socket=${socket}`;

/** Runs a client without blocking this process's event loop (the server under test runs in it). */
function run(cmd: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}

async function waitFor(path: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 25));
}

describeWith('nbdinfo', 'img serve against nbdinfo, qemu-img and qemu-nbd', () => {
  let qemuNbd: ChildProcess | undefined;
  beforeAll(() => {
    // A chain with data in both layers, a zero cluster in the base and a compressed cluster on top.
    qemuImg(['create', '-q', '-f', 'qcow2', at('base.qcow2'), '64M']);
    qemuIo(at('base.qcow2'), 'qcow2', ['write -P 0x11 0 4M', 'write -z 8M 1M', 'write -P 0x12 30M 64k']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('top.qcow2')]);
    qemuIo(at('top.qcow2'), 'qcow2', ['write -P 0x22 1M 1M', 'write -c -P 0x33 16M 64k', 'write -z 30M 32k']);
  });
  afterAll(() => {
    qemuNbd?.kill();
  });

  it('answers nbdinfo --map (base:allocation and qemu:allocation-depth) as qemu-nbd does, and reads the same bytes', async () => {
    const disk = await openQcow2(await FileStorage.open(at('top.qcow2')), { resolver: fileResolver });
    const server = await serveNbd([{ name: '', disk }], { socket: at('img.sock') });
    qemuNbd = spawn('qemu-nbd', ['-t', '-r', '-e', '4', '-A', '-f', 'qcow2', '-k', at('q.sock'), at('top.qcow2')], { stdio: 'ignore' });
    await waitFor(at('q.sock'));
    try {
      for (const map of ['--map', '--map=qemu:allocation-depth']) {
        const ours = await run('nbdinfo', [map, uri(at('img.sock'))]);
        const theirs = await run('nbdinfo', [map, uri(at('q.sock'))]);
        expect(ours.status, ours.stderr).toBe(0);
        expect(ours.stdout).toBe(theirs.stdout);
        expect(ours.stdout.split('\n').length).toBeGreaterThan(4);
      }
      const info = await run('nbdinfo', ['--json', uri(at('img.sock'))]);
      const exp = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
      expect(exp['export-size']).toBe(64 * 2 ** 20);
      expect(exp.is_read_only).toBe(true);
      expect(exp.contexts).toEqual(['base:allocation', 'qemu:allocation-depth']);
      expect((await run('qemu-img', ['compare', '-f', 'qcow2', at('top.qcow2'), uri(at('img.sock'))])).status).toBe(0);
      // qemu's NBD client over img's server sees the allocation qemu-nbd reports.
      const mapOf = async (s: string) => (await run('qemu-img', ['map', '--output=json', '-f', 'raw', uri(s)])).stdout;
      expect(await mapOf(at('img.sock'))).toBe(await mapOf(at('q.sock')));
      // A read-only export refuses writes.
      const w = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', uri(at('img.sock'))]);
      expect(w.stdout + w.stderr).toMatch(/Permission denied|not permitted|read-only/i);
    } finally {
      await server.close();
      await disk.close();
      qemuNbd.kill();
      qemuNbd = undefined;
    }
  });

  it('answers BLOCK_STATUS with REQ_ONE as qemu-nbd does: one extent per context, as long as the merged answer', async () => {
    const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import nbd']).status === 0);
    if (!python) {
      if (process.env.CI) throw new Error('python3-libnbd is required in CI (.ci/run installs it)');
      return;
    }
    const script = [
      'import nbd, sys',
      'h = nbd.NBD(); h.add_meta_context("base:allocation"); h.add_meta_context("qemu:allocation-depth"); h.connect_uri(sys.argv[1])',
      'size = h.get_size()',
      'for off in (0, 512 * 1024, 1536 * 1024, 3 << 20, 8 << 20, 16 << 20, 30 << 20):',
      '    h.block_status(size - off, off, lambda ctx, o, e, err: print(ctx, o, list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)',
      'h.shutdown()',
    ].join('\n');
    const disk = await openQcow2(await FileStorage.open(at('top.qcow2')), { resolver: fileResolver });
    const server = await serveNbd([{ name: '', disk }], { socket: at('one.sock') });
    const q = spawn('qemu-nbd', ['-t', '-r', '-A', '-f', 'qcow2', '-k', at('q-one.sock'), at('top.qcow2')], { stdio: 'ignore' });
    await waitFor(at('q-one.sock'));
    try {
      const ours = await run(python, ['-c', script, uri(at('one.sock'))]);
      const theirs = await run(python, ['-c', script, uri(at('q-one.sock'))]);
      expect(ours.status, ours.stderr).toBe(0);
      expect(theirs.status, theirs.stderr).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout);
      // The first base:allocation extent spans both layers' data (0-4 MiB), not just the first allocation-depth run.
      expect(ours.stdout).toContain('base:allocation 0 [4194304, 0]');
    } finally {
      q.kill();
      await server.close();
      await disk.close();
    }
  });

  it('answers nbdinfo --map as qemu-nbd does for a raw file and a dynamic VHD, and serves a VHD differencing chain', async () => {
    qemuImg(['create', '-q', '-f', 'raw', at('plain.raw'), '32M']);
    qemuIo(at('plain.raw'), 'raw', ['write -P 0x31 2M 1M', 'write -P 0x32 20M 64k']);
    qemuImg(['convert', '-O', 'vpc', at('plain.raw'), at('dyn.vhd')]);
    const { openRaw } = await import('@img/block');
    const { openVhd, openVhdChain, createVhdFile } = await Promise.all([import('@img/vhd'), import('@img/vhd/node')]).then(([a, b]) => ({ ...a, ...b }));
    for (const [file, fmt] of [
      ['plain.raw', 'raw'],
      ['dyn.vhd', 'vpc'],
    ] as const) {
      const storage = await FileStorage.open(at(file));
      const disk = fmt === 'raw' ? await openRaw(storage) : await openVhd(storage);
      const server = await serveNbd([{ name: '', disk }], { socket: at(`${fmt}.sock`) });
      const q = spawn('qemu-nbd', ['-t', '-r', '-e', '4', '-f', fmt, '-k', at(`q-${fmt}.sock`), at(file)], { stdio: 'ignore' });
      await waitFor(at(`q-${fmt}.sock`));
      try {
        const ours = await run('nbdinfo', ['--map', uri(at(`${fmt}.sock`))]);
        const theirs = await run('nbdinfo', ['--map', uri(at(`q-${fmt}.sock`))]);
        expect(ours.status, ours.stderr).toBe(0);
        // qemu reports a raw file's first 4 KiB as data whatever it holds (its probing guard); img reports the file's holes.
        const dropFirstBlock = (t: string) => (fmt === 'raw' ? t.replace(/^\s*0\s+4096\s+0\s+data\n\s*4096\s+(\d+)\s+3/m, (_m, n: string) => `         0 ${String(Number(n) + 4096).padStart(11)}    3`) : t);
        expect(dropFirstBlock(ours.stdout)).toBe(dropFirstBlock(theirs.stdout));
        expect((await run('qemu-img', ['compare', '-f', fmt, at(file), uri(at(`${fmt}.sock`))])).status).toBe(0);
      } finally {
        q.kill();
        await server.close();
        await disk.close();
      }
    }
    // A differencing chain (qemu cannot open VHD differencing disks): depths from the chain, bytes from both layers.
    const child = await createVhdFile(at('child.vhd'), { parentPath: at('dyn.vhd') });
    await child.write(8 << 20, new Uint8Array(4096).fill(0x44));
    await child.close();
    const chain = await openVhdChain(at('child.vhd'));
    const server = await serveNbd([{ name: '', disk: chain }], { socket: at('chain.sock') });
    try {
      const depth = await run('nbdinfo', ['--map=qemu:allocation-depth', uri(at('chain.sock'))]);
      expect(depth.stdout).toMatch(/8388608\s+4096\s+1\s+local/);
      expect(depth.stdout).toMatch(/\s2\s+backing depth 2/);
      const storage = await NbdStorage.connect(uri(at('chain.sock')));
      const bytes = await storage.read(0, 32 << 20);
      await storage.close();
      expect(bytes[(2 << 20) + 5]).toBe(0x31);
      expect(bytes[(8 << 20) + 5]).toBe(0x44);
      expect(bytes[(20 << 20) + 5]).toBe(0x32);
    } finally {
      await server.close();
      await chain.close();
    }
  });

  it('takes writes from qemu-img convert -n and qemu-io; the image is qemu-img check clean and equal to a model', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', at('w.qcow2'), '64M']);
    qemuImg(['create', '-q', '-f', 'raw', at('model.raw'), '64M']);
    const disk = await openQcow2(await FileStorage.open(at('w.qcow2'), { readOnly: false }), { readOnly: false, resolver: fileResolver });
    const server = await serveNbd([{ name: 'disk', disk, writable: true }], { socket: at('w.sock') });
    try {
      const target = uri(at('w.sock'), 'disk');
      const conv = await run('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', at('top.qcow2'), target]);
      expect(conv.status, conv.stderr).toBe(0);
      qemuImg(['convert', '-n', '-f', 'qcow2', '-O', 'raw', at('top.qcow2'), at('model.raw')]);
      const ops = ['write -P 0x77 40M 1M', 'write -z 1M 512k', 'discard 16M 64k', 'write -P 0x78 63M 4k', 'aio_write -P 0x79 50M 64k', 'aio_flush'];
      for (const op of ops) {
        const r = await run('qemu-io', ['-f', 'raw', '-c', op, target]);
        expect(r.status, `${op}: ${r.stderr}`).toBe(0);
      }
      // The model: the same operations on a raw file (a discard reads as zeros on both).
      qemuIo(
        at('model.raw'),
        'raw',
        ops.map((o) => o.replace('discard', 'write -z')),
      );
    } finally {
      await server.close();
      await disk.close();
    }
    expect(qemuImg(['check', at('w.qcow2')], { allowFail: true }).status).toBe(0);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', at('w.qcow2'), at('model.raw')], { allowFail: true }).status).toBe(0);
  });

  it('answers qemu:dirty-bitmap:NAME as qemu-nbd -B does, for bitmaps qemu-nbd kept while writing', async () => {
    // Two enabled bitmaps (64 KiB and 512-byte granularity) made dirty by writes through qemu-nbd, which keeps them.
    qemuImg(['create', '-q', '-f', 'qcow2', at('bm.qcow2'), '64M']);
    qemuIo(at('bm.qcow2'), 'qcow2', ['write -P 1 0 8M']);
    qemuImg(['bitmap', '--add', '-g', '64k', at('bm.qcow2'), 'b0']);
    qemuImg(['bitmap', '--add', '-g', '512', at('bm.qcow2'), 'b1']);
    const writer = spawn('qemu-nbd', ['-t', '-f', 'qcow2', '-k', at('bw.sock'), at('bm.qcow2')], { stdio: 'ignore' });
    await waitFor(at('bw.sock'));
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 2 1M 100k', '-c', 'write -P 3 20M 1k', '-c', 'write -z 40M 3M', '-c', 'write -P 4 63M 1M', uri(at('bw.sock'))]);
    expect(w.status, w.stderr).toBe(0);
    await new Promise<void>((resolve) => {
      writer.once('exit', () => resolve());
      writer.kill('SIGTERM');
    });
    const storage = await FileStorage.open(at('bm.qcow2'));
    const bitmaps = [await readQcow2DirtyBitmap(storage, 'b0'), await readQcow2DirtyBitmap(storage, 'b1')];
    await expect(readQcow2DirtyBitmap(storage, 'nope')).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await storage.close();
    const disk = await openQcow2(await FileStorage.open(at('bm.qcow2')), { resolver: fileResolver });
    const server = await serveNbd([{ name: '', disk, bitmaps }], { socket: at('bm.sock') });
    try {
      const info = await run('nbdinfo', ['--json', uri(at('bm.sock'))]);
      expect((JSON.parse(info.stdout) as { exports: Array<{ contexts: string[] }> }).exports[0]!.contexts).toEqual(['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:b0', 'qemu:dirty-bitmap:b1']);
      for (const b of ['b0', 'b1']) {
        const q = spawn('qemu-nbd', ['-t', '-r', '-B', b, '-f', 'qcow2', '-k', at(`bq-${b}.sock`), at('bm.qcow2')], { stdio: 'ignore' });
        await waitFor(at(`bq-${b}.sock`));
        try {
          const ours = await run('nbdinfo', [`--map=qemu:dirty-bitmap:${b}`, uri(at('bm.sock'))]);
          const theirs = await run('nbdinfo', [`--map=qemu:dirty-bitmap:${b}`, uri(at(`bq-${b}.sock`))]);
          expect(ours.status, ours.stderr).toBe(0);
          expect(ours.stdout).toBe(theirs.stdout);
          expect(ours.stdout.match(/dirty/g)?.length).toBe(4);
        } finally {
          q.kill();
        }
      }
    } finally {
      await server.close();
      await disk.close();
    }
  });

  it('takes nbdcopy --connections=4 into a writable export (multi-conn), then the image is check clean and identical', async () => {
    qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', at('top.qcow2'), at('top.raw')]);
    qemuImg(['create', '-q', '-f', 'qcow2', at('mc.qcow2'), '64M']);
    const disk = await openQcow2(await FileStorage.open(at('mc.qcow2'), { readOnly: false }), { readOnly: false, resolver: fileResolver });
    const server = await serveNbd([{ name: '', disk, writable: true }], { socket: at('mc.sock') });
    try {
      const info = await run('nbdinfo', ['--json', uri(at('mc.sock'))]);
      const exp = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
      expect(exp.can_multi_conn).toBe(true);
      expect(exp.is_read_only).toBe(false);
      let most = 0;
      const poll = setInterval(() => (most = Math.max(most, server.connections)), 1);
      const copy = await run('nbdcopy', ['--connections=4', '--requests=16', '--flush', at('top.raw'), uri(at('mc.sock'))]);
      clearInterval(poll);
      expect(copy.status, copy.stderr).toBe(0);
      expect(most).toBeGreaterThan(1); // nbdcopy opens several connections only to a server that says CAN_MULTI_CONN
      expect(server.connections).toBe(0);
    } finally {
      await server.close();
      await disk.close();
    }
    expect(qemuImg(['check', at('mc.qcow2')], { allowFail: true }).status).toBe(0);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', at('top.raw'), at('mc.qcow2')], { allowFail: true }).status).toBe(0);
  });

  it('NbdStorage zeroes through WRITE_ZEROES: the server deallocates, no zero bytes cross the wire', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', at('z.qcow2'), '16M']);
    qemuIo(at('z.qcow2'), 'qcow2', ['write -P 0x44 0 16M']);
    const disk = await openQcow2(await FileStorage.open(at('z.qcow2'), { readOnly: false }), { readOnly: false, resolver: fileResolver });
    const server = await serveNbd([{ name: '', disk, writable: true }], { socket: at('z.sock') });
    try {
      const storage = await NbdStorage.connect(uri(at('z.sock')), { writable: true });
      expect(await storage.punchHole(2 * 2 ** 20, 8 * 2 ** 20)).toBe(true);
      await expect(storage.punchHole(15 * 2 ** 20, 2 * 2 ** 20)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
      expect((await storage.ranges(0, 16 * 2 ** 20)).map((r) => [r.offset, r.length, r.data])).toEqual([
        [0, 2 * 2 ** 20, true],
        [2 * 2 ** 20, 8 * 2 ** 20, false],
        [10 * 2 ** 20, 6 * 2 ** 20, true],
      ]);
      await storage.flush();
      await storage.close();
      const ro = await NbdStorage.connect(uri(at('z.sock')));
      await expect(ro.punchHole(0, 512)).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
      await ro.close();
    } finally {
      await server.close();
      await disk.close();
    }
    const model = at('z-model.raw');
    qemuImg(['create', '-q', '-f', 'raw', model, '16M']);
    qemuIo(model, 'raw', ['write -P 0x44 0 2M', 'write -P 0x44 10M 6M']);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', at('z.qcow2'), model], { allowFail: true }).status).toBe(0);
    const map = JSON.parse(qemuImg(['map', '--output=json', at('z.qcow2')]).stdout) as Array<{ start: number; length: number; data: boolean }>;
    expect(map.filter((m) => m.data).reduce((n, m) => n + m.length, 0)).toBe(8 * 2 ** 20);
  });

  it('lists exports and answers NBD_OPT_INFO for each', async () => {
    const disk = await openQcow2(await FileStorage.open(at('base.qcow2')), { resolver: fileResolver });
    const server = await serveNbd(
      [
        { name: 'a', disk, description: 'the base' },
        { name: 'b/c', disk },
      ],
      { socket: at('l.sock') },
    );
    try {
      const list = await run('nbdinfo', ['--list', '--json', uri(at('l.sock'))]);
      expect(list.status, list.stderr).toBe(0);
      const names = (JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string; description?: string }> }).exports.map((e) => [e['export-name'], e.description]);
      expect(names).toEqual([
        ['a', 'the base'],
        ['b/c', undefined],
      ]);
      expect((await run('nbdinfo', ['--size', uri(at('l.sock'), 'b/c')])).stdout.trim()).toBe(String(64 * 2 ** 20));
      expect((await run('nbdinfo', ['--size', uri(at('l.sock'), 'nope')])).status).not.toBe(0);
    } finally {
      await server.close();
      await disk.close();
    }
  });

  it('survives malformed clients and abrupt disconnects, and then serves correctly', async () => {
    const disk = await openQcow2(await FileStorage.open(at('base.qcow2')), { resolver: fileResolver });
    const errors: string[] = [];
    const server: NbdServer = await serveNbd([{ name: '', disk }], { socket: at('m.sock'), onConnectionError: (e) => errors.push(e.message) });
    const be = (words: Array<[number, number]>) => {
      const out = Buffer.alloc(words.reduce((n, [, size]) => n + size, 0));
      let o = 0;
      for (const [v, size] of words) {
        if (size === 2) out.writeUInt16BE(v, o);
        else if (size === 4) out.writeUInt32BE(v >>> 0, o);
        else out.writeBigUInt64BE(BigInt(v), o);
        o += size;
      }
      return out;
    };
    const ihaveopt = Buffer.from('IHAVEOPT');
    const sessions: Buffer[][] = [
      [Buffer.from([1, 2, 3])], // cut off during the client flags
      [be([[3, 4]]), Buffer.from('NOTMAGIC'), be([[1, 4]])], // a bad option magic
      [be([[0xff, 4]])], // unknown client flags
      [
        be([[3, 4]]),
        ihaveopt,
        be([
          [7, 4],
          [0xffffffff, 4],
        ]),
      ], // a 4 GiB GO option
      [
        be([[3, 4]]),
        ihaveopt,
        be([
          [99, 4],
          [3, 4],
        ]),
        Buffer.from('abc'),
      ], // an unknown option, then gone
      [
        be([[3, 4]]),
        ihaveopt,
        be([
          [7, 4],
          [3, 4],
        ]),
        Buffer.from([0, 0, 9]),
      ], // a GO whose name runs past it
      [
        be([[3, 4]]),
        ihaveopt,
        be([
          [1, 4],
          [0, 4],
        ]),
        be([
          [0x25609513, 4],
          [0, 2],
          [1, 2],
          [0, 8],
          [0, 8],
          [0x7fffffff, 4],
        ]),
      ], // a 2 GiB write
      [
        be([[3, 4]]),
        ihaveopt,
        be([
          [1, 4],
          [0, 4],
        ]),
        be([
          [0x25609513, 4],
          [0, 2],
          [0, 2],
          [0, 8],
          [2 ** 40, 8],
          [512, 4],
        ]),
        be([[0xdeadbeef, 4]]),
      ], // a read past the end, then garbage
    ];
    for (const bytes of sessions) {
      await new Promise<void>((resolve) => {
        const s = createConnection(at('m.sock'));
        s.on('error', () => resolve());
        s.on('close', () => resolve());
        s.on('connect', () => {
          for (const b of bytes) s.write(b);
          setTimeout(() => s.destroy(), 100);
        });
        s.on('data', () => {});
      });
    }
    try {
      const r = await run('nbdinfo', ['--map', uri(at('m.sock'))]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('data');
      expect((await run('qemu-img', ['compare', '-f', 'qcow2', at('base.qcow2'), uri(at('m.sock'))])).status).toBe(0);
      expect(errors.length).toBeGreaterThan(0);
    } finally {
      await server.close();
      await disk.close();
    }
  });

  it('sends the clusters a qcow2 preallocated with metadata stores over holes of its file as holes, without reading them', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', at('pre.qcow2'), '32M']);
    qemuIo(at('pre.qcow2'), 'qcow2', ['write -P 0x5a 4M 4k']);
    const disk = await openQcow2(await FileStorage.open(at('pre.qcow2')), { resolver: fileResolver });
    const reads = countReads(disk);
    const server = await serveNbd([{ name: '', disk: reads.disk }], { socket: at('pre.sock') });
    const client = await NbdStorage.connect(uri(at('pre.sock')));
    try {
      const bytes = new Uint8Array(8 * 1024 * 1024);
      await client.readInto(0, bytes);
      expect(bytes.subarray(4 * 1024 * 1024, 4 * 1024 * 1024 + 4096).every((b) => b === 0x5a)).toBe(true);
      expect(bytes.subarray(0, 4 * 1024 * 1024).every((b) => b === 0)).toBe(true);
      // The 4 KiB written (a page of the file), not the 8 MiB asked for.
      expect(reads.bytesRead()).toBeLessThanOrEqual(64 * 1024);
    } finally {
      await client.close();
      await server.close();
      await disk.close();
    }
  });
});
