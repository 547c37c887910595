// img's server against hostile clients (src/test-raw-client.ts): each is answered as the protocol asks or dropped,
// memory stays bounded, and the server goes on serving everyone else. Where qemu-nbd is installed, the errnos are
// compared with its own for the same requests.
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, createRaw, type Disk } from '@img/block';
import { tempDir, waitForSocket } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { serveNbd, type NbdServeOptions, type NbdServer } from './index.js';
import * as P from './protocol.js';
import { RawClient } from './test-raw-client.js';
import { transmit } from './transmission.js';
import { ByteReader, ConnectionClosed, MessageBuilder } from './wire.js';

const tmp = tempDir('img-nbd-hostile-client-');
afterAll(() => tmp.cleanup());
const SIZE = 1 << 20;
const content = new Uint8Array(SIZE).map((_, i) => (i * 13) & 0xff);
let n = 0;

async function withServer(options: NbdServeOptions, writable: boolean, body: (server: NbdServer, sock: string, disk: Disk, errors: string[]) => Promise<void>) {
  const disk = await createRaw(new MemoryStorage(), { size: SIZE });
  await disk.write(0, content);
  const sock = join(tmp.path, `s${n++}.sock`);
  const errors: string[] = [];
  const server = await serveNbd({ name: '', disk, writable }, { socket: sock, onConnectionError: (e) => errors.push(e.message), ...options });
  try {
    await body(server, sock, disk, errors);
  } finally {
    await server.close();
    await disk.close();
  }
}

/** A fresh client reads the export right: the server is still serving. */
async function stillServes(sock: string, expected = content): Promise<void> {
  const c = await RawClient.connect(sock);
  await c.go();
  c.request(P.CMD_READ, 4096, 4096);
  const r = await c.reply();
  expect(r.errno).toBe(0);
  expect(Buffer.from(r.data!).equals(expected.subarray(4096, 8192))).toBe(true);
  c.socket.destroy();
}

const waitFor = async (ok: () => boolean) => {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  return ok();
};

/** Requests whose errnos must match qemu-nbd's on a read-only export of SIZE bytes. */
const BAD_REQUESTS: Array<[string, (c: RawClient) => void]> = [
  ['read past the end', (c) => c.request(P.CMD_READ, SIZE - 512, 1024)],
  ['read at offset 2^63', (c) => c.request(P.CMD_READ, 2n ** 63n, 512)],
  ['read of 2^32-1 bytes', (c) => c.request(P.CMD_READ, 0, 2 ** 32 - 1)],
  ['write to a read-only export', (c) => c.request(P.CMD_WRITE, 0, 512, 0, new Uint8Array(512))],
  ['trim of a read-only export', (c) => c.request(P.CMD_TRIM, 0, 512)],
  ['write zeroes on a read-only export', (c) => c.request(P.CMD_WRITE_ZEROES, 0, 512)],
  ['unknown command 99', (c) => c.request(99, 0, 0)],
  ['an unknown flag on a read', (c) => c.request(P.CMD_READ, 0, 512, 1 << 9)],
  ['block status without a context', (c) => c.request(P.CMD_BLOCK_STATUS, 0, 512)],
];

async function errnosOf(sock: string): Promise<number[]> {
  const c = await RawClient.connect(sock);
  await c.go();
  const out: number[] = [];
  for (const [, send] of BAD_REQUESTS) {
    send(c);
    out.push((await c.reply()).errno);
  }
  c.request(P.CMD_READ, 0, 512);
  out.push((await c.reply()).errno);
  c.socket.destroy();
  return out;
}

describe('img serve against hostile clients', () => {
  it('bad requests are answered with errnos, as qemu-nbd answers them, and the connection goes on', async () => {
    await withServer({}, false, async (_server, sock) => {
      const ours = await errnosOf(sock);
      expect(ours).toEqual([P.EINVAL, P.EINVAL, P.EOVERFLOW, P.EPERM, P.EPERM, P.EPERM, P.EINVAL, P.EINVAL, P.EINVAL, 0]);
      if (!spawnSync('qemu-nbd', ['--version']).stdout) return;
      const raw = join(tmp.path, 'q.raw');
      writeFileSync(raw, content);
      const qsock = join(tmp.path, 'q.sock');
      const q = spawn('qemu-nbd', ['-t', '-r', '-f', 'raw', '-k', qsock, raw], { stdio: 'ignore' });
      try {
        expect(await waitForSocket(qsock)).toBe(true);
        const theirs = await errnosOf(qsock);
        // Where they differ, img follows the protocol's errnos: qemu-nbd 7.2 answers a read of 2^32-1 bytes EINVAL
        // (over its 32 MiB limit) where img says EOVERFLOW (a read too large to answer), and writes, trims and
        // write-zeroes on a read-only export EINVAL where img says EPERM (operation not permitted).
        const differs: Record<number, number> = { 2: P.EOVERFLOW, 3: P.EPERM, 4: P.EPERM, 5: P.EPERM };
        expect(theirs.map((e, i) => (e === P.EINVAL && differs[i] !== undefined ? differs[i] : e))).toEqual(ours);
      } finally {
        q.kill();
      }
    });
  });

  it('a write over the request limit, a write header left unfinished, a disconnect mid-payload', async () => {
    await withServer({}, true, async (server, sock, disk) => {
      const big = await RawClient.connect(sock);
      await big.go();
      big.request(P.CMD_WRITE, 0, 2 ** 32 - 1, 0, new Uint8Array(100));
      expect(await big.closed()).toBe(true);
      // A write header and 10 of its 65536 bytes, then silence: the others are served meanwhile.
      const stall = await RawClient.connect(sock);
      await stall.go();
      stall.request(P.CMD_WRITE, 0, 65536, 0, new Uint8Array(10).fill(0xee));
      await stillServes(sock);
      stall.socket.destroy();
      expect(await waitFor(() => server.connections === 0)).toBe(true);
      // Nothing of the unfinished write reached the disk.
      expect(Buffer.from(await disk.read(0, 16)).equals(content.subarray(0, 16))).toBe(true);
      await stillServes(sock);
    });
  });

  it('100k pipelined reads whose replies are never read: reading pauses, memory stays bounded', async () => {
    await withServer({}, false, async (server, sock, disk) => {
      let reads = 0;
      const readInto = disk.readInto.bind(disk);
      disk.readInto = (offset, target) => {
        reads++;
        return readInto(offset, target);
      };
      const c = await RawClient.connect(sock);
      await c.go();
      const head = new Uint8Array(100_000 * 28);
      const v = new DataView(head.buffer);
      for (let i = 0, at = 0; i < 100_000; i++, at += 28) {
        v.setUint32(at, P.REQUEST_MAGIC);
        v.setUint16(at + 6, P.CMD_READ);
        v.setBigUint64(at + 8, BigInt(i));
        v.setBigUint64(at + 16, BigInt((i * 65536) % SIZE));
        v.setUint32(at + 24, 65536);
      }
      c.send(head);
      await new Promise((r) => setTimeout(r, 300));
      // The kernel's socket buffers hold some replies; past them the server stops reading requests.
      expect(reads).toBeGreaterThan(16);
      expect(reads).toBeLessThan(2000);
      const memory = process.memoryUsage().arrayBuffers;
      expect(memory).toBeLessThan(1024 * 1024 * 1024);
      await stillServes(sock);
      c.socket.destroy();
      expect(await waitFor(() => server.connections === 0)).toBe(true);
    });
  });

  it('pipelined 32 MiB reads never read back hold the in-flight budget (64 MiB), not 16 x 32 MiB', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: 64 << 20 });
    const sock = join(tmp.path, `s${n++}.sock`);
    const server = await serveNbd({ name: '', disk }, { socket: sock });
    let reads = 0;
    const readInto = disk.readInto.bind(disk);
    disk.readInto = (offset, target) => {
      reads++;
      return readInto(offset, target);
    };
    try {
      const c = await RawClient.connect(sock);
      await c.go();
      for (let i = 0; i < 16; i++) c.request(P.CMD_READ, (i % 2) * (32 << 20), 32 << 20);
      await new Promise((r) => setTimeout(r, 300));
      expect(reads).toBe(2);
      c.socket.destroy();
      await stillServes(sock, new Uint8Array(8192));
    } finally {
      await server.close();
      await disk.close();
    }
  });

  it('connections past the limit wait for a slot, and those that never finish the handshake are dropped in turn', async () => {
    await withServer({ maxConnections: 4, handshakeTimeoutMs: 200 }, false, async (server, sock, _disk, errors) => {
      const silent = await Promise.all(Array.from({ length: 10 }, () => RawClient.connect(sock)));
      // Four are greeted; six wait ungreeted (as in qemu-nbd's listen backlog), none is closed before its turn.
      const greeted = await Promise.all(silent.map((c) => Promise.race([c.reader.read(18).then(() => true), new Promise((r) => setTimeout(() => r(false), 100))])));
      expect(greeted.filter(Boolean).length).toBe(4);
      expect(server.connections).toBe(4);
      // Silent clients hold a slot for the handshake limit only: 10 of them leave in three turns of 200 ms.
      const closed = await Promise.all(silent.map((c) => c.closed(2000)));
      expect(closed.every(Boolean)).toBe(true);
      expect(await waitFor(() => server.connections === 0)).toBe(true);
      expect(errors.filter((e) => e.includes('within 200 ms')).length).toBe(10);
      await stillServes(sock);
      for (const c of silent) c.socket.destroy();
    });
  });

  it('NBD_OPT_LIST forever is cut off; STARTTLS is refused and the handshake goes on', async () => {
    await withServer({}, false, async (_server, sock, _disk, errors) => {
      const c = await RawClient.connect(sock);
      await c.greet();
      for (let i = 0; i < 600; i++) c.option(P.OPT_LIST);
      expect(await c.closed()).toBe(true);
      expect(errors.some((e) => e.includes('more than 512 options'))).toBe(true);
      const tls = await RawClient.connect(sock);
      await tls.greet();
      tls.option(P.OPT_STARTTLS);
      const r = await tls.optionReply();
      expect(r.type).toBe(P.REP_ERR_UNSUP);
      expect(new TextDecoder().decode(r.data)).toMatch(/TLS is not offered/);
      tls.option(P.OPT_GO, new MessageBuilder().u32(0).u16(0));
      let reply;
      do reply = await tls.optionReply();
      while (reply.type === P.REP_INFO);
      expect(reply.type).toBe(P.REP_ACK);
      tls.socket.destroy();
    });
  });

  it('a reply that cannot be written (the client left) is no unhandled rejection, which would end img serve', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: SIZE });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    // One READ, then the stream stays open until released: the request loop waits for the next header while the
    // read's reply fails to be written.
    async function* requests() {
      yield new MessageBuilder().u32(P.REQUEST_MAGIC).u16(0).u16(P.CMD_READ).u64(1).u64(0).u32(512).build();
      await released;
    }
    try {
      const served = transmit(new ByteReader(requests()), () => Promise.reject(new ConnectionClosed()), { export: { name: '', disk }, structured: false, contexts: new Map() }, { queueDepth: 16, maxExtents: 16, maxInFlightBytes: 1 << 20 });
      await new Promise((r) => setTimeout(r, 50));
      release();
      await expect(served).rejects.toBeInstanceOf(ConnectionClosed);
      await new Promise((r) => setTimeout(r, 10));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await disk.close();
    }
  });
});
