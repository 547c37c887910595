/**
 * `serveNbd`: exports disks over NBD on a Unix socket or TCP, to any number
 * of clients at once, until closed (as `qemu-nbd --persistent`).
 */
import { createRequire } from 'node:module';
import type { AddressInfo, Server, Socket } from 'node:net';
import { lstat, rm } from 'node:fs/promises';
import { invalidArg } from '@img/block';
import type { NbdExport } from './export.js';
import { negotiate, type HandshakeLimits } from './handshake.js';
import { transmit, type TransmissionLimits } from './transmission.js';
import { ByteReader, ConnectionClosed } from './wire.js';

// node:net is loaded when a server starts (see client.ts).
const requireBuiltin = createRequire(import.meta.url);

/** Where and how to serve, with limits per connection (each has the default given on it). */
export interface NbdServeOptions extends Partial<HandshakeLimits>, Partial<TransmissionLimits> {
  /** A Unix socket path (qemu-nbd -k). A stale socket file there is replaced. */
  socket?: string;
  /** A TCP port (qemu-nbd -p; 0 picks a free one). Used when `socket` is not given; default 10809. */
  port?: number;
  /** The TCP address to listen on (qemu-nbd -b); default 127.0.0.1. */
  host?: string;
  /**
   * Most clients served at once (qemu-nbd -e); default 16. Clients past it
   * wait, connected but not yet greeted, until a served one leaves (as
   * qemu-nbd stops accepting); past 128 waiting, more are closed at
   * once. With 1, exports do not advertise
   * NBD_FLAG_CAN_MULTI_CONN, so a client such as nbdcopy opens one
   * connection only.
   */
  maxConnections?: number;
  /**
   * Drop a client that has not entered transmission this long after it
   * was greeted, in ms (0: never; default 10 s, as qemu-nbd --handshake-limit),
   * so clients that connect and say nothing cannot hold every slot.
   */
  handshakeTimeoutMs?: number;
  /** Drop a client silent for this long, in ms (0: never; default 0). */
  idleTimeoutMs?: number;
  /**
   * Told once of each connection's end that was not a clean one: a protocol
   * violation, an I/O error, a handshake or idle timeout. Default: nothing.
   */
  onConnectionError?: (error: Error) => void;
}

/** How {@link NbdServer.close} treats the clients still connected. */
export interface NbdCloseOptions {
  /**
   * How long, in ms, the clients still connected get for their requests in
   * flight to be answered before their connections are cut (default 1000).
   * No new request is read once `close()` is called.
   */
  graceMs?: number;
}

/** A running server. */
export interface NbdServer {
  /** Where it listens: the socket path, or host and port. */
  readonly address: { socket: string } | { host: string; port: number };
  /** Clients served now (those waiting for a slot are not counted). */
  readonly connections: number;
  /**
   * Stops listening (and removes the Unix socket), closes the clients
   * waiting for a slot and those still in the handshake, lets each client in
   * transmission have its requests in flight answered, then ends its
   * connection; those not done after `graceMs` are cut off. Resolves once no
   * request runs on any disk, so the disks can then be flushed and closed.
   * Calling it again while it runs returns the same promise, cutting the
   * grace short if the new `graceMs` ends sooner (a second Ctrl-C).
   */
  close(options?: NbdCloseOptions): Promise<void>;
}

/** Clients kept waiting for a slot at most; more are closed before the greeting. */
const MAX_WAITING_CLIENTS = 128;

/** A served client, and whether this side has decided to end it (so the errors that follow are not news). */
interface Connection {
  socket: Socket;
  transmitting: boolean;
  dropped: boolean;
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
  const maxConnections = options.maxConnections ?? 16;
  if (!Number.isInteger(maxConnections) || maxConnections < 1) throw invalidArg('nbd', `maxConnections must be a whole number of at least 1, not ${maxConnections}`, { field: 'maxConnections' });
  const handshake: HandshakeLimits = { maxOptions: options.maxOptions ?? 512, maxOptionLength: options.maxOptionLength ?? 64 * 1024 };
  const transmission: TransmissionLimits = { queueDepth: options.queueDepth ?? 16, maxExtents: options.maxExtents ?? 65536, maxInFlightBytes: options.maxInFlightBytes ?? 64 * 1024 * 1024 };
  const report = (e: unknown) => options.onConnectionError?.(e instanceof Error ? e : new Error(String(e)));
  const connections = new Set<Connection>();
  const sessions = new Set<Promise<void>>();
  const waiting: Socket[] = [];
  /** Aborted by close(): sessions in transmission read no further requests. */
  const stopping = new AbortController();

  const drop = (c: Connection, why?: string) => {
    if (c.dropped) return;
    c.dropped = true;
    if (why) report(new Error(why));
    c.socket.destroy();
  };

  const serve = async (c: Connection) => {
    const { socket } = c;
    socket.setNoDelay(true);
    const idle = options.idleTimeoutMs;
    if (idle) socket.setTimeout(idle, () => drop(c, `the client was idle for ${idle / 1000} s and was dropped`));
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
    const handshakeTimer = limit ? setTimeout(() => drop(c, `the client did not finish the handshake within ${limit} ms`), limit) : undefined;
    try {
      const agreement = await negotiate(reader, (b) => writeParts([b]), list, handshake, maxConnections > 1);
      clearTimeout(handshakeTimer);
      if (agreement && !stopping.signal.aborted) {
        c.transmitting = true;
        await transmit(reader, writeParts, agreement, transmission, stopping.signal);
      }
    } catch (e) {
      // A connection this side cut (a timeout, close()) fails its reads; that was said once already, or is no news.
      if (!(e instanceof ConnectionClosed) && !c.dropped) report(e);
    } finally {
      clearTimeout(handshakeTimer);
      c.dropped = true;
      socket.end();
      socket.destroy();
    }
  };

  const start = (socket: Socket) => {
    const c: Connection = { socket, transmitting: false, dropped: false };
    connections.add(c);
    const session: Promise<void> = serve(c).finally(() => {
      connections.delete(c);
      sessions.delete(session);
      promote();
    });
    sessions.add(session);
  };

  /** Gives a freed slot to the longest-waiting client still connected. */
  const promote = () => {
    while (connections.size < maxConnections && waiting.length > 0 && !stopping.signal.aborted) {
      const next = waiting.shift()!;
      next.removeAllListeners('close');
      if (!next.destroyed) start(next);
    }
  };

  const { createServer } = requireBuiltin('node:net') as typeof import('node:net');
  const server: Server = createServer((socket) => {
    socket.on('error', () => {}); // reported through the session's reads and writes
    if (stopping.signal.aborted) {
      socket.destroy();
      return;
    }
    if (connections.size < maxConnections) return start(socket);
    // The slots are full: the client waits, ungreeted (it speaks only after the greeting), as in qemu-nbd's backlog.
    if (waiting.length >= MAX_WAITING_CLIENTS) {
      socket.destroy();
      return;
    }
    waiting.push(socket);
    socket.once('close', () => {
      const i = waiting.indexOf(socket);
      if (i >= 0) waiting.splice(i, 1);
    });
  });

  let address: NbdServer['address'];
  if (options.socket !== undefined) {
    await removeStaleSocket(options.socket);
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

  let closing: Promise<void> | undefined;
  let graceEnds = Infinity;
  let graceTimer: ReturnType<typeof setTimeout> | undefined;
  const cutAfter = (graceMs: number) => {
    if (Date.now() + graceMs >= graceEnds) return;
    graceEnds = Date.now() + graceMs;
    clearTimeout(graceTimer);
    graceTimer = setTimeout(() => {
      for (const c of connections) drop(c);
    }, graceMs);
  };

  return {
    address,
    get connections() {
      return connections.size;
    },
    close(closeOptions: NbdCloseOptions = {}) {
      const graceMs = closeOptions.graceMs ?? 1000;
      if (!Number.isFinite(graceMs) || graceMs < 0) return Promise.reject(invalidArg('nbd', `graceMs must be a number of milliseconds, not ${graceMs}`, { field: 'graceMs' }));
      cutAfter(graceMs);
      closing ??= (async () => {
        stopping.abort();
        // Node calls back only once every connection is gone: that is awaited after they are.
        const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of waiting.splice(0)) s.destroy();
        for (const c of connections) if (!c.transmitting) drop(c);
        await Promise.allSettled([...sessions]);
        clearTimeout(graceTimer);
        await listenerClosed;
        if (options.socket !== undefined) await removeStaleSocket(options.socket, false);
      })();
      return closing;
    },
  };
}

/**
 * Removes what is left at `path` from an earlier server, so that listen can
 * bind there: a socket only. Anything else (an image, its backing file, a
 * directory: `-k` given the image's name by mistake) is refused with
 * ERR_IMG_INVALID_ARG before it is touched, as the listener would
 * otherwise delete it; at shutdown (`refuse` false) it is left alone.
 */
async function removeStaleSocket(path: string, refuse = true): Promise<void> {
  const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (!st) return;
  if (st.isSocket()) return rm(path, { force: true });
  if (!refuse) return;
  const kind = st.isFile() ? 'a regular file' : st.isDirectory() ? 'a directory' : st.isSymbolicLink() ? 'a symbolic link' : 'not a socket';
  throw invalidArg('nbd', `${path}: refusing to listen there: it exists and is ${kind}, and binding the socket would delete it (only a socket left by an earlier server is replaced)`, { file: path, field: 'socket' });
}
