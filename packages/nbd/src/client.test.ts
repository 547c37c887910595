// NbdStorage against two servers: qemu-nbd (the independent one) and img's own, with a model of the bytes.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, createRaw, openRaw } from '@img/block';
import { describeWith, qemuImg, qemuIo, tempDir, waitForSocket } from '@img/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isNbdUri, NbdStorage, parseNbdUri, qemuNbdFilename, serveNbd } from './index.js';

const tmp = tempDir('img-nbd-client-');
afterAll(() => tmp.cleanup());
const at = (n: string) => join(tmp.path, n);

describe('NBD URIs', () => {
  it('parse as qemu-img and nbdinfo take them', () => {
    expect(parseNbdUri('nbd://example.com/disk')).toEqual({ host: 'example.com', port: 10809, exportName: 'disk' });
    expect(parseNbdUri('nbd://[::1]:10900/')).toEqual({ host: '::1', port: 10900, exportName: '' });
    expect(parseNbdUri('nbd+unix:///a%20b?socket=/tmp/x.sock')).toEqual({ socket: '/tmp/x.sock', exportName: 'a b' });
    expect(() => parseNbdUri('nbd+unix:///x')).toThrow(/names no socket/);
    expect(() => parseNbdUri('nbd:/bad')).toThrow();
  });

  it('keep a + in a query value a +, as libnbd and qemu do (only %-escapes are decoded)', () => {
    expect(parseNbdUri('nbd+unix:///?socket=/tmp/c+d.sock')).toEqual({ socket: '/tmp/c+d.sock', exportName: '' });
    expect(parseNbdUri('nbd+unix:///e+f?socket=/tmp/a%2Bb%20c.sock')).toEqual({ socket: '/tmp/a+b c.sock', exportName: 'e+f' });
    expect(() => parseNbdUri('nbd+unix:///?socket=/tmp/%zz')).toThrow(/malformed %-escape/);
    expect(() => parseNbdUri('nbd://h/%zz')).toThrow(/malformed %-escape/);
  });

  it("take qemu's legacy nbd:HOST:PORT and nbd:unix:PATH, with :exportname=", () => {
    expect(parseNbdUri('nbd:unix:/tmp/q.sock:exportname=top')).toEqual({ socket: '/tmp/q.sock', exportName: 'top' });
    expect(parseNbdUri('nbd:unix:/tmp/q.sock')).toEqual({ socket: '/tmp/q.sock', exportName: '' });
    expect(parseNbdUri('nbd:localhost:10820:exportname=top')).toEqual({ host: 'localhost', port: 10820, exportName: 'top' });
    expect(parseNbdUri('nbd:127.0.0.1:10820')).toEqual({ host: '127.0.0.1', port: 10820, exportName: '' });
    expect(parseNbdUri('nbd:[::1]:10820:exportname=a:b')).toEqual({ host: '::1', port: 10820, exportName: 'a:b' });
    expect(() => parseNbdUri('nbd:127.0.0.1')).toThrow(/is not an NBD address/);
    expect(() => parseNbdUri('nbd:h:99999')).toThrow(/past 65535/);
    expect(() => parseNbdUri('nbd:unix:')).toThrow(/names no socket/);
  });

  it("name an export as qemu does, whichever spelling opened it (qemu-img info's image: line)", () => {
    // Each as qemu-img 7.2 printed it for these spellings.
    for (const [given, named] of [
      ['nbd+unix:///?socket=/tmp/m.sock', 'nbd+unix://?socket=/tmp/m.sock'],
      ['nbd:unix:/tmp/m.sock', 'nbd+unix://?socket=/tmp/m.sock'],
      ['nbd:unix:/tmp/n.sock:exportname=exp', 'nbd+unix:///exp?socket=/tmp/n.sock'],
      ['nbd+unix:///exp?socket=/tmp/n.sock', 'nbd+unix:///exp?socket=/tmp/n.sock'],
      ['nbd://127.0.0.1:10811/', 'nbd://127.0.0.1:10811'],
      ['nbd://localhost', 'nbd://localhost:10809'],
      ['nbd:127.0.0.1:10812:exportname=e2', 'nbd://127.0.0.1:10812/e2'],
    ]) {
      expect(qemuNbdFilename(parseNbdUri(given!)), given).toBe(named);
    }
    // An export option given empty (a json: name's "export": ""): qemu writes the slash before the empty name.
    expect(qemuNbdFilename(parseNbdUri('nbd+unix:///?socket=/tmp/m.sock'), true)).toBe('nbd+unix:///?socket=/tmp/m.sock');
    expect(qemuNbdFilename(parseNbdUri('nbd://127.0.0.1:10811/'), true)).toBe('nbd://127.0.0.1:10811/');
    expect(qemuNbdFilename(parseNbdUri('nbd://127.0.0.1:10811/e'), true)).toBe('nbd://127.0.0.1:10811/e');
  });

  it('refuse what they cannot honour: TLS and vsock schemes, a query on nbd://, unknown or repeated parameters', () => {
    expect(isNbdUri('nbds://h/x')).toBe(true);
    expect(isNbdUri('nbds+unix:///x?socket=/s')).toBe(true);
    expect(isNbdUri('nbd:unix:/s')).toBe(true);
    expect(isNbdUri('nbd.qcow2')).toBe(false);
    expect(() => parseNbdUri('nbds://h/x')).toThrow(/TLS \(nbds:\/\/\), which is not supported/);
    expect(() => parseNbdUri('nbds+unix:///x?socket=/s')).toThrow(/TLS \(nbds\+unix:\/\/\), which is not supported/);
    expect(() => parseNbdUri('nbd+vsock://2/x')).toThrow(/vsock/);
    expect(() => parseNbdUri('nbd://127.0.0.1:10820/top?socket=x')).toThrow(/takes none of/);
    expect(() => parseNbdUri('nbd+unix:///?socket=/s&foo=1')).toThrow(/"foo"/);
    expect(() => parseNbdUri('nbd+unix:///?socket=/s&socket=/t')).toThrow(/twice/);
    expect(() => parseNbdUri('nbd+unix://h/?socket=/s')).toThrow(/names a host/);
  });
});

describe('NbdStorage against img serve', () => {
  it('reads, writes, flushes and reports allocation of an in-memory disk', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: 8 << 20 });
    await disk.write(1 << 20, new Uint8Array(65536).fill(9));
    const server = await serveNbd([{ name: 'm', disk, writable: true }], { socket: at('mem.sock') });
    const storage = await NbdStorage.connect(`nbd+unix:///m?socket=${at('mem.sock')}`, { writable: true });
    try {
      expect(await storage.size()).toBe(8 << 20);
      const got = await storage.read((1 << 20) - 4, 8);
      expect([...got]).toEqual([0, 0, 0, 0, 9, 9, 9, 9]);
      await storage.write(3 << 20, new Uint8Array(4096).fill(7));
      await storage.flush();
      expect((await disk.read(3 << 20, 4096)).every((b) => b === 7)).toBe(true);
      // Many requests in flight at once, each answered by its own cookie.
      const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => storage.read(i * 65536, 65536)));
      reads.forEach((r, i) => expect(r.every((b) => b === (i === 16 ? 9 : i === 48 ? (b === 7 ? 7 : 0) : 0))).toBe(true));
      // A fixed size, as a block device's: up to it a truncate changes nothing; past it, and a write past the end, ENOSPC.
      expect(storage.fixedSize).toBe(true);
      await storage.truncate(1);
      expect(await storage.size()).toBe(8 << 20);
      expect((await disk.read(3 << 20, 1))[0]).toBe(7);
      await expect(storage.truncate((8 << 20) + 1)).rejects.toMatchObject({ code: 'ERR_IMG_IO', data: { errno: 'ENOSPC' } });
      await expect(storage.write(8 << 20, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_IO', data: { errno: 'ENOSPC' } });
    } finally {
      await storage.close();
      await server.close();
    }
    // A read-only export refuses a writable connection, and writes through a read-only one.
    const ro = await serveNbd([{ name: '', disk }], { socket: at('ro.sock') });
    try {
      await expect(NbdStorage.connect(`nbd+unix:///?socket=${at('ro.sock')}`, { writable: true })).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
      await expect(NbdStorage.connect(`nbd+unix:///nope?socket=${at('ro.sock')}`)).rejects.toThrow(/refused export "nope"/);
      const s = await NbdStorage.connect(`nbd+unix:///?socket=${at('ro.sock')}`);
      await expect(s.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
      await s.close();
    } finally {
      await ro.close();
      await disk.close();
    }
  });

  it('drops a client that stays silent past the idle timeout, and keeps serving', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: 1 << 20 });
    const server = await serveNbd([{ name: '', disk }], { socket: at('idle.sock'), idleTimeoutMs: 300 });
    try {
      const { createConnection } = await import('node:net');
      const started = Date.now();
      await new Promise<void>((resolve) => {
        const s = createConnection(at('idle.sock'));
        s.on('data', () => {});
        s.on('close', () => resolve());
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      const storage = await NbdStorage.connect(`nbd+unix:///?socket=${at('idle.sock')}`);
      expect(await storage.size()).toBe(1 << 20);
      await storage.close();
    } finally {
      await server.close();
      await disk.close();
    }
  });

  it('fails cleanly when nothing listens', async () => {
    await expect(NbdStorage.connect(`nbd+unix:///?socket=${at('none.sock')}`)).rejects.toMatchObject({ code: 'ERR_IMG_IO' });
  });
});

describeWith('qemu-nbd', 'NbdStorage against qemu-nbd', () => {
  let server: ChildProcess;
  beforeAll(async () => {
    qemuImg(['create', '-q', '-f', 'raw', at('d.raw'), '16M']);
    qemuIo(at('d.raw'), 'raw', ['write -P 0x41 1M 1M', 'write -P 0x42 9M 64k']);
    server = spawn('qemu-nbd', ['-t', '-r', '-e', '4', '-f', 'raw', '-k', at('q.sock'), at('d.raw')], { stdio: 'ignore' });
    expect(await waitForSocket(at('q.sock'))).toBe(true);
  });
  afterAll(() => {
    server.kill();
  });

  it('reads the bytes and the allocation qemu-nbd serves', async () => {
    const storage = await NbdStorage.connect(`nbd+unix:///?socket=${at('q.sock')}`);
    try {
      const disk = await openRaw(storage);
      const all = await disk.read(0, 16 << 20);
      expect(Buffer.from(all).equals(readFileSync(at('d.raw')))).toBe(true);
      // The allocation qemu's own client sees through the same server (qemu reports a raw file's first block as data).
      const data = (await storage.ranges(0, 16 << 20)).filter((r) => r.data).map((r) => [r.offset, r.length]);
      const theirs = (JSON.parse(qemuImg(['map', '--output=json', '-f', 'raw', `nbd+unix:///?socket=${at('q.sock')}`]).stdout) as Array<{ start: number; length: number; data: boolean }>).filter((e) => e.data).map((e) => [e.start, e.length]);
      expect(data).toEqual(theirs);
      expect(data).toContainEqual([9 << 20, 65536]);
      // With a limit: the first ranges of the same answer, and asked on from their end, the rest of it.
      const whole = await storage.ranges(0, 16 << 20);
      expect(whole.length).toBeGreaterThan(2);
      const head = await storage.ranges(0, 16 << 20, 2);
      expect(head).toEqual(whole.slice(0, 2));
      const from = head[1]!.offset + head[1]!.length;
      expect(await storage.ranges(from, (16 << 20) - from)).toEqual(whole.slice(2));
    } finally {
      await storage.close();
    }
  });
});
