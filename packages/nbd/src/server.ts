/**
 * `serveNbd`: exports disks over NBD on a Unix socket or TCP, to any number
 * of clients at once, until closed (as `qemu-nbd --persistent`).
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { invalidArg } from '@img/block';
import type { NbdExport } from './export.js';
import { HandshakeAbort, negotiate, type HandshakeLimits } from './handshake.js';
import { transmit, TransmissionEnd, type TransmissionLimits } from './transmission.js';
import { ByteReader, ConnectionClosed } from './wire.js';

/** Where and how to serve, with limits per connection (each has the default given on it). */
export interface NbdServeOptions extends Partial<HandshakeLimits>, Partial<TransmissionLimits> {
  /** A Unix socket path (qemu-nbd -k). A stale socket file there is replaced. */
  socket?: string;
  /** A TCP port (qemu-nbd -p; 0 picks a free one). Used when `socket` is not given; default 10809. */
  port?: number;
  /** The TCP address to listen on (qemu-nbd -b); default 127.0.0.1. */
  host?: string;
  /** Most clients at once (qemu-nbd -e); more are refused. Default 16. */
  maxConnections?: number;
  /**
   * Drop a client that has not entered transmission this long after it
   * connected, in ms (0: never; default 10 s, as qemu-nbd --handshake-limit),
   * so clients that connect and say nothing cannot hold every slot.
   */
  handshakeTimeoutMs?: number;
  /** Drop a client silent for this long, in ms (0: never; default 0). */
  idleTimeoutMs?: number;
  /** Told of each connection's problem (a protocol violation, an I/O error); default: nothing. */
  onConnectionError?: (error: Error) => void;
}

/** A running server. */
export interface NbdServer {
  /** Where it listens: the socket path, or host and port. */
  readonly address: { socket: string } | { host: string; port: number };
  /** Clients connected now. */
  readonly connections: number;
  /** Stops listening, ends every connection after its requests in flight, and resolves when all are gone. */
  close(): Promise<void>;
}

/**
 * Serves `exports` until `close()`. The disks stay open (and are the
 * caller's to close after the server is closed). Throws ERR_IMG_INVALID_ARG
 * for no exports, two with one name, or a writable export over a read-only
 * disk; a socket that cannot be listened on rejects with Node's error.
 *
 * @example
 * ```ts
 * const disk = await openQcow2(await FileStorage.open('vm.qcow2'), { resolver: fileResolver });
 * const server = await serveNbd([{ name: '', disk }], { socket: '/tmp/vm.sock' });
 * // nbdinfo 'nbd+unix:///?socket=/tmp/vm.sock'
 * await server.close();
 * await disk.close();
 * ```
 */
export async function serveNbd(exports: NbdExport | readonly NbdExport[], options: NbdServeOptions = {}): Promise<NbdServer> {
  const list = Array.isArray(exports) ? [...(exports as readonly NbdExport[])] : [exports as NbdExport];
  if (list.length === 0) throw invalidArg('nbd', 'serveNbd needs at least one export', { field: 'exports' });
  const names = new Set<string>();
  for (const e of list) {
    if (names.has(e.name)) throw invalidArg('nbd', `two exports are named "${e.name}"`, { field: 'exports' });
    names.add(e.name);
    if (e.writable && e.disk.readOnly) throw invalidArg('nbd', `export "${e.name}" is writable but its disk is open read-only`, { field: 'writable' });
  }
  const handshake: HandshakeLimits = { maxOptions: options.maxOptions ?? 512, maxOptionLength: options.maxOptionLength ?? 64 * 1024 };
  const transmission: TransmissionLimits = { queueDepth: options.queueDepth ?? 16, maxExtents: options.maxExtents ?? 65536, maxInFlightBytes: options.maxInFlightBytes ?? 64 * 1024 * 1024 };
  const maxConnections = options.maxConnections ?? 16;
  const sockets = new Set<Socket>();
  const sessions = new Set<Promise<void>>();

  const serve = async (socket: Socket) => {
    socket.setNoDelay(true);
    if (options.idleTimeoutMs) socket.setTimeout(options.idleTimeoutMs, () => socket.destroy());
    const reader = new ByteReader(socket);
    const writeParts = (parts: Uint8Array[]) =>
      new Promise<void>((resolve, reject) => {
        if (socket.destroyed) return reject(new ConnectionClosed());
        socket.cork();
        for (let i = 0; i < parts.length - 1; i++) socket.write(parts[i]!);
        socket.write(parts[parts.length - 1] ?? new Uint8Array(0), (e) => (e ? reject(e) : resolve()));
        socket.uncork();
      });
    const limit = options.handshakeTimeoutMs ?? 10000;
    const handshakeTimer = limit
      ? setTimeout(() => {
          options.onConnectionError?.(new Error(`the client did not finish the handshake within ${limit} ms`));
          socket.destroy();
        }, limit)
      : undefined;
    try {
      const agreement = await negotiate(reader, (b) => writeParts([b]), list, handshake);
      clearTimeout(handshakeTimer);
      if (agreement) await transmit(reader, writeParts, agreement, transmission);
    } catch (e) {
      if (!(e instanceof ConnectionClosed)) options.onConnectionError?.(e instanceof Error ? e : new Error(String(e)));
      if (!(e instanceof HandshakeAbort || e instanceof TransmissionEnd || e instanceof ConnectionClosed)) throw e;
    } finally {
      clearTimeout(handshakeTimer);
      socket.end();
      socket.destroy();
    }
  };

  const server: Server = createServer((socket) => {
    if (sockets.size >= maxConnections) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.on('error', () => {}); // reported through the session's reads and writes
    const session: Promise<void> = serve(socket)
      .catch((e: unknown) => options.onConnectionError?.(e instanceof Error ? e : new Error(String(e))))
      .finally(() => {
        sockets.delete(socket);
        sessions.delete(session);
      });
    sessions.add(session);
  });

  let address: NbdServer['address'];
  if (options.socket !== undefined) {
    await rm(options.socket, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.socket, () => resolve());
    });
    address = { socket: options.socket };
  } else {
    const host = options.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 10809, host, () => resolve());
    });
    address = { host, port: (server.address() as AddressInfo).port };
  }

  return {
    address,
    get connections() {
      return sockets.size;
    },
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.end();
      });
      // A client that keeps its end open after ours closed is cut off after a grace period.
      const grace = setTimeout(() => {
        for (const s of sockets) s.destroy();
      }, 2000);
      await Promise.allSettled([...sessions]);
      clearTimeout(grace);
      if (options.socket !== undefined) await rm(options.socket, { force: true });
    },
  };
}
