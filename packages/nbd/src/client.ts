/**
 * `NbdStorage`: an NBD export as a `Storage` (the client side), so every
 * format opens over NBD as over a file, and raw images copy sparsely through
 * BLOCK_STATUS, and zero runs written as WRITE_ZEROES. Requests are pipelined: many may be in flight, each answered
 * by cookie.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { ImageError, invalidArg, ioError, readOnlyError, type Storage, type StorageRange } from '@img/block';
import { clientHandshake, printable, protocolError, type ClientAgreement } from './client-handshake.js';
import * as P from './protocol.js';
import { ReadCoverage } from './read-coverage.js';
import { parseNbdUri, type NbdAddress } from './uri.js';
import { ByteReader, ConnectionClosed, FieldReader, MessageBuilder } from './wire.js';

// node:net is loaded on the first connection: it brings Node's streams, which every command without an nbd:// image
// would otherwise load at its start.
const requireBuiltin = createRequire(import.meta.url);

/** How to connect, and how long to wait for a server. */
export interface NbdConnectOptions {
  /** Open for writing (the export must be writable). Default false. */
  writable?: boolean;
  /** Give up when connecting and the whole handshake take longer than this, in ms (default 10 s). */
  timeoutMs?: number;
  /**
   * While requests are in flight, give up on the connection when none of them
   * has been answered in full for this long, in ms (default 30 s; 0 waits
   * forever). A stalled or dribbling server then fails every request with
   * ERR_IMG_IO instead of hanging the caller.
   */
  requestTimeoutMs?: number;
}

interface Pending {
  cookie: bigint;
  type: number;
  offset: number;
  length: number;
  /** A read's destination, filled by data chunks (holes stay zero: the buffer starts zeroed). */
  target?: Uint8Array;
  /** The bytes of a structured read answered so far. */
  coverage?: ReadCoverage;
  /** Block status descriptors received, for a BLOCK_STATUS. */
  status?: Array<[number, number]>;
  statusSeen?: boolean;
  error?: { errno: number; message: string };
  resolve: () => void;
  reject: (e: Error) => void;
}

/** The most one WRITE_ZEROES asks for (it carries no payload; servers take far more than a write's block size). */
const ZERO_REQUEST = 1024 * 1024 * 1024;
/** The most descriptors one BLOCK_STATUS chunk may carry (1 MiB of them; qemu-nbd sends no more, img serve 65536). */
const MAX_STATUS_DESCRIPTORS = 1 << 17;
/**
 * The most ranges one `ranges()` call collects; past them the rest of the
 * range is reported as data (always correct to read), so a server answering
 * in one-byte extents cannot grow the list without bound.
 */
export const MAX_RANGES = 1 << 16;
/** The longest error chunk believed: a 4096-byte message, its fields and room for an offset. */
const MAX_ERROR_CHUNK = 6 + 4096 + 8;

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
const COMMAND_NAMES: Record<number, string> = { [P.CMD_READ]: 'READ', [P.CMD_WRITE]: 'WRITE', [P.CMD_FLUSH]: 'FLUSH', [P.CMD_WRITE_ZEROES]: 'WRITE_ZEROES', [P.CMD_BLOCK_STATUS]: 'BLOCK_STATUS' };
const CHUNK_NAMES: Record<number, string> = {
  [P.REPLY_TYPE_NONE]: 'NBD_REPLY_TYPE_NONE',
  [P.REPLY_TYPE_OFFSET_DATA]: 'NBD_REPLY_TYPE_OFFSET_DATA',
  [P.REPLY_TYPE_OFFSET_HOLE]: 'NBD_REPLY_TYPE_OFFSET_HOLE',
  [P.REPLY_TYPE_BLOCK_STATUS]: 'NBD_REPLY_TYPE_BLOCK_STATUS',
  [P.REPLY_TYPE_ERROR]: 'NBD_REPLY_TYPE_ERROR',
  [P.REPLY_TYPE_ERROR_OFFSET]: 'NBD_REPLY_TYPE_ERROR_OFFSET',
};

function describe(p: Pending): string {
  return `${COMMAND_NAMES[p.type] ?? `command ${p.type}`} of ${p.length} bytes at offset 0x${p.offset.toString(16)} (cookie ${p.cookie})`;
}

/**
 * An export of an NBD server as a `Storage`, read and written by byte
 * offset. Failures the server reports become `ImageError`s: EPERM is
 * ERR_IMG_READ_ONLY, EINVAL is ERR_IMG_INVALID_ARG, anything else ERR_IMG_IO.
 * A server that breaks the protocol (a malformed or unexpected reply, a
 * length over the client's caps, a stall past `requestTimeoutMs`) ends the
 * connection, and every request in flight fails with ERR_IMG_IO naming the
 * server, the field and the request.
 *
 * @example
 * ```ts
 * const storage = await NbdStorage.connect('nbd+unix:///?socket=/tmp/vm.sock');
 * const disk = await openRaw(storage);
 * ```
 */
export class NbdStorage implements Storage {
  /** The URI connected to, used in error messages. */
  readonly name: string;
  /** True unless connected with `writable: true`; writes then throw ERR_IMG_READ_ONLY. */
  readonly readOnly: boolean;
  /**
   * Always true: an export keeps its size and its bytes, as a block device
   * does (Storage.fixedSize), so a format laid out in it (a qcow2 image in
   * a raw export of a logical volume) writes every byte its metadata needs.
   */
  readonly fixedSize = true;
  #socket: Socket;
  #reader: ByteReader;
  #size: number;
  #flags: number;
  #structured: boolean;
  #maxBlock: number;
  #allocationContext: number | undefined;
  #pending = new Map<bigint, Pending>();
  #nextCookie = 1n;
  #closed: Error | undefined;
  #receiving: Promise<void>;
  #requestTimeoutMs: number;
  #timer: ReturnType<typeof setTimeout> | undefined;

  private constructor(name: string, socket: Socket, reader: ByteReader, agreement: ClientAgreement, writable: boolean, requestTimeoutMs: number) {
    this.name = name;
    this.#socket = socket;
    this.#reader = reader;
    this.#size = agreement.size;
    this.#flags = agreement.flags;
    this.#structured = agreement.structured;
    this.#maxBlock = agreement.maxBlock;
    this.#allocationContext = agreement.allocationContext;
    this.#requestTimeoutMs = requestTimeoutMs;
    this.readOnly = !writable;
    this.#receiving = this.#receive();
  }

  /**
   * Connects to `uri` (nbd://host:port/export, nbd+unix:///export?socket=path)
   * and negotiates the export with NBD_OPT_GO. Throws ERR_IMG_IO when the
   * server cannot be reached or does not finish the handshake in `timeoutMs`,
   * refuses the export or breaks the protocol, ERR_IMG_UNSUPPORTED for an
   * oldstyle server or an export over 2^53-1 bytes, and ERR_IMG_READ_ONLY
   * when `writable` is asked of a read-only export.
   */
  static async connect(uri: string | NbdAddress, options: NbdConnectOptions = {}): Promise<NbdStorage> {
    const address = typeof uri === 'string' ? parseNbdUri(uri) : uri;
    const name = typeof uri === 'string' ? uri : 'socket' in uri ? `nbd+unix:///${uri.exportName}?socket=${uri.socket}` : `nbd://${uri.host}:${uri.port}/${uri.exportName}`;
    const timeoutMs = options.timeoutMs ?? 10000;
    const requestTimeoutMs = options.requestTimeoutMs ?? 30000;
    for (const [field, v] of [
      ['timeoutMs', timeoutMs],
      ['requestTimeoutMs', requestTimeoutMs],
    ] as const) {
      if (!Number.isFinite(v) || v < 0) throw invalidArg('nbd', `${field} must be a number of milliseconds, not ${v}`, { field });
    }
    const { createConnection } = requireBuiltin('node:net') as typeof import('node:net');
    const s = 'socket' in address ? createConnection(address.socket) : createConnection(address.port, address.host);
    // Errors reach the handshake and the receive loop through reads and writes; a listener keeps them off the process.
    s.on('error', () => {});
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      s.destroy();
    }, timeoutMs);
    const timeoutError = () => ioError(name, `the server did not complete the connection and handshake within ${timeoutMs} ms`, { format: 'nbd', field: 'handshake' });
    try {
      await new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', (e) => reject(ioError(name, `cannot connect: ${e.message}`, { format: 'nbd' }, e)));
        s.once('close', () => reject(timedOut ? timeoutError() : ioError(name, 'the connection closed before it was made', { format: 'nbd' })));
      });
      s.setNoDelay(true);
      const reader = new ByteReader(s);
      const send = (b: Uint8Array) => new Promise<void>((resolve, reject) => s.write(b, (e) => (e ? reject(e) : resolve())));
      const agreement = await clientHandshake(reader, send, name, address.exportName);
      if (timedOut) throw timeoutError();
      if (options.writable && agreement.flags & P.FLAG_READ_ONLY) throw readOnlyError('nbd', name);
      return new NbdStorage(name, s, reader, agreement, options.writable ?? false, requestTimeoutMs);
    } catch (e) {
      s.destroy();
      if (timedOut) throw timeoutError();
      if (ImageError.isInstance(e)) throw e;
      if (e instanceof ConnectionClosed) throw ioError(name, 'the server closed the connection during the handshake', { format: 'nbd', field: 'handshake' });
      throw ioError(name, `the connection failed during the handshake: ${(e as Error).message}`, { format: 'nbd', field: 'handshake' }, e);
    } finally {
      clearTimeout(deadline);
    }
  }

  /** Ends the connection: every request in flight fails with `error`. */
  #abort(error: Error): void {
    this.#closed ??= error;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(this.#closed);
    this.#socket.destroy();
  }

  /** Restarts the reply clock while requests are in flight; stops it when none are. */
  #tick(): void {
    if (this.#requestTimeoutMs === 0) return;
    if (this.#pending.size === 0) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    } else if (this.#timer) this.#timer.refresh();
    else {
      this.#timer = setTimeout(() => {
        const oldest = this.#pending.values().next().value;
        this.#abort(
          ioError(this.name, `no request was answered in full within ${this.#requestTimeoutMs} ms${oldest ? `; the oldest is ${describe(oldest)}` : ''}`, {
            format: 'nbd',
            field: 'reply',
            offset: oldest?.offset,
            cookie: oldest?.cookie.toString(),
          }),
        );
      }, this.#requestTimeoutMs);
    }
  }

  #violation(message: string, field: string, p?: Pending): ImageError {
    return protocolError(this.name, message, { field, offset: p?.offset, cookie: p?.cookie.toString() });
  }

  async #receive(): Promise<void> {
    try {
      for (;;) {
        const magic = new FieldReader(await this.#reader.read(4)).u32();
        if (magic === P.SIMPLE_REPLY_MAGIC) await this.#simpleReply();
        else if (magic === P.STRUCTURED_REPLY_MAGIC) await this.#chunk();
        else throw this.#violation(`a reply starts with magic 0x${magic.toString(16)}, neither the simple nor the structured reply magic`, 'reply magic');
      }
    } catch (e) {
      let error: Error;
      if (ImageError.isInstance(e)) error = e;
      else if (e instanceof ConnectionClosed) {
        const first = this.#pending.values().next().value;
        error = ioError(this.name, `the server closed the connection${first ? ` with ${this.#pending.size} request(s) unanswered, the first ${describe(first)}` : ''}`, {
          format: 'nbd',
          field: 'reply',
          offset: first?.offset,
          cookie: first?.cookie.toString(),
        });
      } else error = ioError(this.name, `the connection failed: ${(e as Error).message}`, { format: 'nbd', field: 'reply' }, e);
      this.#abort(error);
    }
  }

  async #simpleReply(): Promise<void> {
    const f = new FieldReader(await this.#reader.read(12));
    const errno = f.u32();
    const cookie = f.bigU64();
    const p = this.#pending.get(cookie);
    if (!p) throw this.#violation(`a simple reply for cookie ${cookie}, which no request in flight has`, 'cookie');
    if (errno) {
      this.#settle(p);
      return this.#fail(p, errno, '');
    }
    if (this.#structured && (p.type === P.CMD_READ || p.type === P.CMD_BLOCK_STATUS)) throw this.#violation(`a simple success reply to ${describe(p)}, which structured replies must answer`, 'reply magic', p);
    if (p.target) p.target.set(await this.#reader.read(p.target.length));
    this.#settle(p);
    p.resolve();
  }

  /** A request answered: it leaves the table and the reply clock restarts. */
  #settle(p: Pending): void {
    this.#pending.delete(p.cookie);
    this.#tick();
  }

  async #chunk(): Promise<void> {
    const f = new FieldReader(await this.#reader.read(16));
    const flags = f.u16();
    const type = f.u16();
    const cookie = f.bigU64();
    const length = f.u32();
    const p = this.#pending.get(cookie);
    if (!p) throw this.#violation(`a structured reply chunk for cookie ${cookie}, which no request in flight has`, 'cookie');
    const kind = CHUNK_NAMES[type] ?? `chunk type ${type}`;
    const bad = (what: string, field = 'length') => this.#violation(`the ${kind} chunk answering ${describe(p)} ${what}`, field, p);
    const isError = (type & 0x8000) !== 0;
    if (isError) {
      if (length < 6 || length > MAX_ERROR_CHUNK) throw bad(`has length ${length}, outside 6..${MAX_ERROR_CHUNK}`);
      const b = new FieldReader(await this.#reader.read(length));
      const errno = b.u32();
      const n = b.u16();
      if (n > b.remaining) throw bad(`has a message of ${n} bytes in ${b.remaining}`, 'message length');
      const message = new TextDecoder().decode(b.take(n));
      if (type === P.REPLY_TYPE_ERROR_OFFSET) {
        if (b.remaining !== 8) throw bad(`has ${b.remaining} bytes after its message, not an 8-byte offset`);
        const at = b.u64() - p.offset;
        if (at < 0 || at >= p.length) throw bad('names an offset outside the request', 'offset');
      }
      if (errno === 0) throw bad('has error 0', 'error');
      p.error ??= { errno, message };
    } else if (type === P.REPLY_TYPE_NONE) {
      if (length !== 0) throw bad(`has length ${length}, not 0`);
      if (!(flags & P.REPLY_FLAG_DONE)) throw bad('lacks NBD_REPLY_FLAG_DONE', 'flags');
    } else if (type === P.REPLY_TYPE_OFFSET_DATA || type === P.REPLY_TYPE_OFFSET_HOLE) {
      if (p.type !== P.CMD_READ || !p.target || !p.coverage) throw bad('answers a request that is not a read', 'type');
      if (type === P.REPLY_TYPE_OFFSET_DATA ? length < 9 || length - 8 > p.length : length !== 12) throw bad(`has length ${length}`);
      const b = new FieldReader(await this.#reader.read(type === P.REPLY_TYPE_OFFSET_DATA ? 8 : 12));
      const start = b.bigU64();
      const n = type === P.REPLY_TYPE_OFFSET_DATA ? length - 8 : b.u32();
      const at = start < BigInt(p.offset) || start > BigInt(p.offset + p.length) ? -1 : Number(start) - p.offset;
      const fault = p.coverage.add(at, n);
      if (fault) throw bad(`at offset ${start}: ${fault}`, 'offset');
      if (type === P.REPLY_TYPE_OFFSET_DATA) p.target.set(await this.#reader.read(n), at);
      // A hole needs no write: the target starts zeroed and chunks cannot overlap.
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      if (p.type !== P.CMD_BLOCK_STATUS || !p.status) throw bad('answers a request that is not a block status', 'type');
      if (length < 12 || (length - 4) % 8 !== 0 || (length - 4) / 8 > MAX_STATUS_DESCRIPTORS) throw bad(`has length ${length}, not 4 + 8 per descriptor (1 to ${MAX_STATUS_DESCRIPTORS})`);
      const b = new FieldReader(await this.#reader.read(length));
      const id = b.u32();
      if (id !== this.#allocationContext) throw bad(`is for context ${id}, which was not chosen`, 'context id');
      if (p.statusSeen) throw bad('repeats the context', 'context id');
      p.statusSeen = true;
      while (b.remaining >= 8) {
        const n = b.u32();
        const state = b.u32();
        if (n === 0) throw bad('has a descriptor of length 0', 'descriptor length');
        p.status.push([n, state]);
      }
    } else {
      throw bad('is of a type this client does not know', 'type');
    }
    if (flags & P.REPLY_FLAG_DONE) {
      // Checked while the request is still in flight, so a violation fails it with the connection.
      if (!p.error && p.coverage && p.coverage.covered !== p.length) throw bad(`ends the reply with ${p.length - p.coverage.covered} bytes unanswered, the first at offset ${p.offset + p.coverage.firstGap()!}`, 'flags');
      if (!p.error && p.status && !p.statusSeen) throw bad('ends the reply without a block status for base:allocation', 'flags');
      this.#settle(p);
      if (p.error) this.#fail(p, p.error.errno, p.error.message);
      else p.resolve();
    }
  }

  #fail(p: Pending, errno: number, message: string): void {
    const text = printable(message);
    const what = `${ERRNO_NAMES[errno] ?? `error ${errno}`}${text ? ` (${text})` : ''}`;
    const data = { format: 'nbd', errno, offset: p.offset, cookie: p.cookie.toString() };
    p.reject(errno === P.EPERM ? readOnlyError('nbd', this.name) : errno === P.EINVAL ? invalidArg('nbd', `${this.name}: the server refused ${describe(p)} with ${what}`, data) : ioError(this.name, `the server answered ${describe(p)} with ${what}`, data));
  }

  #request(type: number, flags: number, offset: number, length: number, extra: Partial<Pending> = {}, payload?: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closed);
    const cookie = this.#nextCookie++;
    return new Promise<void>((resolve, reject) => {
      const coverage = extra.target && this.#structured ? new ReadCoverage(length) : undefined;
      this.#pending.set(cookie, { cookie, type, offset, length, coverage, ...extra, resolve, reject });
      if (this.#pending.size === 1) this.#tick();
      const head = new MessageBuilder().u32(P.REQUEST_MAGIC).u16(flags).u16(type).u64(cookie).u64(offset).u32(length).build();
      this.#socket.cork();
      this.#socket.write(head);
      if (payload) this.#socket.write(payload);
      this.#socket.uncork();
    });
  }

  /** The export's size in bytes, as the server announced it (NBD exports never resize). */
  async size(): Promise<number> {
    return this.#size;
  }

  /** Reads `length` bytes at `position`; shorter when the range runs past the end of the export. */
  async read(position: number, length: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(length, this.#size - position));
    const out = new Uint8Array(n);
    await this.readInto(position, out);
    return out;
  }

  /**
   * Fills `target` from `position`, split into requests no larger than the
   * server's maximum block size, and returns the bytes read (fewer at the end
   * of the export). ERR_IMG_INVALID_ARG for a negative or unsafe position.
   */
  async readInto(position: number, target: Uint8Array): Promise<number> {
    if (!Number.isSafeInteger(position) || position < 0) throw invalidArg('nbd', `invalid read position ${position}`);
    const n = Math.max(0, Math.min(target.length, this.#size - position));
    const jobs: Promise<void>[] = [];
    for (let at = 0; at < n; at += this.#maxBlock) {
      const len = Math.min(this.#maxBlock, n - at);
      const view = target.subarray(at, at + len);
      view.fill(0);
      jobs.push(this.#request(P.CMD_READ, 0, position + at, len, { target: view }));
    }
    await Promise.all(jobs);
    return n;
  }

  /**
   * Writes `data` at `position`. ERR_IMG_READ_ONLY on a read-only connection;
   * ERR_IMG_IO with errno ENOSPC for a write past the end, since an export
   * cannot grow.
   */
  async write(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw readOnlyError('nbd', this.name);
    if (position + data.length > this.#size) throw this.#full(position + data.length, 'a write');
    const jobs: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += this.#maxBlock) {
      const chunk = data.subarray(at, Math.min(data.length, at + this.#maxBlock));
      jobs.push(this.#request(P.CMD_WRITE, 0, position + at, chunk.length, {}, chunk));
    }
    await Promise.all(jobs);
  }

  /**
   * Makes `[offset, offset + length)` read as zeros with WRITE_ZEROES (the
   * server may deallocate it), so zero runs cross the wire as a request
   * header only. False when the export does not take WRITE_ZEROES.
   */
  async punchHole(offset: number, length: number): Promise<boolean> {
    if (this.readOnly) throw readOnlyError('nbd', this.name);
    if (!(this.#flags & P.FLAG_SEND_WRITE_ZEROES)) return false;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.#size) throw invalidArg('nbd', `${this.name}: zeroing ${offset}+${length} is outside the ${this.#size}-byte export`);
    const jobs: Promise<void>[] = [];
    for (let at = 0; at < length; at += ZERO_REQUEST) jobs.push(this.#request(P.CMD_WRITE_ZEROES, 0, offset + at, Math.min(ZERO_REQUEST, length - at)));
    await Promise.all(jobs);
    return true;
  }

  /**
   * An export keeps its size (fixedSize): a size up to it changes nothing,
   * as qemu's block devices and NBD exports take it; a bigger one is
   * ERR_IMG_IO with errno ENOSPC.
   */
  async truncate(size: number): Promise<void> {
    if (size <= this.#size) return;
    throw this.#full(size, 'growing it');
  }

  #full(end: number, what: string): ImageError {
    return ioError(this.name, `the NBD export is ${this.#size} bytes and exports do not grow: ${what} to ${end} bytes passes its end (ENOSPC)`, { errno: 'ENOSPC', field: 'size', expected: end, actual: this.#size });
  }

  /** Sends FLUSH so completed writes are durable; nothing to do when read-only or the server does not take FLUSH. */
  async flush(): Promise<void> {
    if (this.readOnly || !(this.#flags & P.FLAG_SEND_FLUSH)) return;
    await this.#request(P.CMD_FLUSH, 0, 0, 0);
  }

  /**
   * Allocation from BLOCK_STATUS (base:allocation); all data when the server
   * offers no block status, and past MAX_RANGES ranges in one call. With
   * `limit`, the answer stops after that many ranges (covering the start of
   * the window only: ask again from its end).
   */
  async ranges(offset: number, length: number, limit?: number): Promise<StorageRange[]> {
    const end = Math.min(this.#size, offset + length);
    if (this.#allocationContext === undefined) return end > offset ? [{ offset, length: end - offset, data: true }] : [];
    const out: StorageRange[] = [];
    for (let at = offset; at < end;) {
      const status: Array<[number, number]> = [];
      await this.#request(P.CMD_BLOCK_STATUS, 0, at, Math.min(end - at, 2 ** 32 - 2 ** 20), { status });
      const before = at;
      for (const [len, flags] of status) {
        const n = Math.min(len, end - at);
        if (n <= 0) break;
        if (out.length >= MAX_RANGES) {
          out.push({ offset: at, length: end - at, data: true });
          return out;
        }
        const data = (flags & P.STATE_ZERO) === 0; // a range known to read as zeros needs no reading
        const last = out[out.length - 1];
        if (last && last.data === data && last.offset + last.length === at) last.length += n;
        else if (limit !== undefined && limit > 0 && out.length >= limit) return out;
        else out.push({ offset: at, length: n, data });
        at += n;
      }
      if (at === before) throw protocolError(this.name, `BLOCK_STATUS at offset 0x${at.toString(16)} was answered without an extent`, { field: 'descriptor length', offset: at });
    }
    return out;
  }

  /** `await using storage = await ...open(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Waits for requests in flight, sends DISC and closes the socket (cut off
   * after a second if the server does not close its end); later calls throw
   * ERR_IMG_IO. Calling it twice is harmless.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      await Promise.allSettled(
        [...this.#pending.values()].map(
          (p) =>
            new Promise<void>((r) => {
              const { resolve, reject } = p;
              p.resolve = () => (resolve(), r());
              p.reject = (e) => (reject(e), r());
            }),
        ),
      );
    }
    if (!this.#closed) {
      this.#closed = ioError(this.name, 'the storage is closed', { format: 'nbd' });
      this.#socket.write(new MessageBuilder().u32(P.REQUEST_MAGIC).u16(0).u16(P.CMD_DISC).u64(0).u64(0).u32(0).build());
      this.#socket.end();
    }
    const grace = setTimeout(() => this.#socket.destroy(), 1000);
    await this.#receiving;
    clearTimeout(grace);
  }
}
