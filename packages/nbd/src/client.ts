/**
 * `NbdStorage`: an NBD export as a `Storage` (the client side), so every
 * format opens over NBD as over a file, and raw images copy sparsely through
 * BLOCK_STATUS, and zero runs written as WRITE_ZEROES. Requests are pipelined: many may be in flight, each answered
 * by cookie.
 */
import { createConnection, type Socket } from 'node:net';
import { invalidArg, ioError, readOnlyError, unsupported, type Storage, type StorageRange } from '@img/block';
import * as P from './protocol.js';
import { parseNbdUri, type NbdAddress } from './uri.js';
import { ByteReader, ConnectionClosed, FieldReader, MessageBuilder } from './wire.js';

/** How to connect. */
export interface NbdConnectOptions {
  /** Open for writing (the export must be writable). Default false. */
  writable?: boolean;
  /** Give up connecting after this long, in ms (default 10 s). */
  timeoutMs?: number;
}

interface Pending {
  /** A read's destination, filled by data chunks (holes stay zero: the buffer starts zeroed). */
  target?: Uint8Array;
  offset: number;
  /** Block status descriptors received, for a BLOCK_STATUS. */
  status?: Array<[number, number]>;
  error?: { errno: number; message: string };
  resolve: () => void;
  reject: (e: Error) => void;
}

/** The most one WRITE_ZEROES asks for (it carries no payload; servers take far more than a write's block size). */
const ZERO_REQUEST = 1024 * 1024 * 1024;

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };

/**
 * An export of an NBD server as a `Storage`, read and written by byte
 * offset. Failures the server reports become `ImageError`s: EPERM is
 * ERR_IMG_READ_ONLY, EINVAL is ERR_IMG_INVALID_ARG, anything else ERR_IMG_IO.
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
  #socket: Socket;
  #reader: ByteReader;
  #size: number;
  #flags: number;
  #maxBlock: number;
  #allocationContext: number | undefined;
  #pending = new Map<bigint, Pending>();
  #nextCookie = 1n;
  #closed: Error | undefined;
  #receiving: Promise<void>;

  private constructor(name: string, socket: Socket, reader: ByteReader, size: number, flags: number, maxBlock: number, allocationContext: number | undefined, writable: boolean) {
    this.name = name;
    this.#socket = socket;
    this.#reader = reader;
    this.#size = size;
    this.#flags = flags;
    this.#maxBlock = maxBlock;
    this.#allocationContext = allocationContext;
    this.readOnly = !writable;
    this.#receiving = this.#receive();
  }

  /**
   * Connects to `uri` (nbd://host:port/export, nbd+unix:///export?socket=path)
   * and negotiates the export with NBD_OPT_GO. Throws ERR_IMG_IO when the
   * server cannot be reached in `timeoutMs`, refuses the export or breaks the
   * protocol, and ERR_IMG_READ_ONLY when `writable` is asked of a read-only export.
   */
  static async connect(uri: string | NbdAddress, options: NbdConnectOptions = {}): Promise<NbdStorage> {
    const address = typeof uri === 'string' ? parseNbdUri(uri) : uri;
    const name = typeof uri === 'string' ? uri : 'socket' in uri ? `nbd+unix:///${uri.exportName}?socket=${uri.socket}` : `nbd://${uri.host}:${uri.port}/${uri.exportName}`;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = 'socket' in address ? createConnection(address.socket) : createConnection(address.port, address.host);
      const timer = setTimeout(() => {
        s.destroy();
        reject(ioError(name, `no answer within ${options.timeoutMs ?? 10000} ms`));
      }, options.timeoutMs ?? 10000);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(ioError(name, `cannot connect: ${e.message}`, {}, e));
      });
    });
    socket.setNoDelay(true);
    const reader = new ByteReader(socket);
    const send = (b: Uint8Array) => new Promise<void>((resolve, reject) => socket.write(b, (e) => (e ? reject(e) : resolve())));
    try {
      const hello = new FieldReader(await reader.read(18));
      if (hello.bigU64() !== P.NBDMAGIC || hello.bigU64() !== P.IHAVEOPT) throw ioError(name, 'the server does not speak newstyle NBD');
      const serverFlags = hello.u16();
      if (!(serverFlags & P.FLAG_FIXED_NEWSTYLE)) throw unsupported('nbd', name, 'the server does not speak fixed newstyle NBD');
      await send(new MessageBuilder().u32(P.FLAG_C_FIXED_NEWSTYLE | (serverFlags & P.FLAG_NO_ZEROES ? P.FLAG_C_NO_ZEROES : 0)).build());
      const option = async (opt: number, data: Uint8Array) => {
        await send(new MessageBuilder().u64(P.IHAVEOPT).u32(opt).u32(data.length).bytes(data).build());
        const replies: Array<{ type: number; data: Uint8Array }> = [];
        for (;;) {
          const h = new FieldReader(await reader.read(20));
          if (h.bigU64() !== P.OPT_REPLY_MAGIC) throw ioError(name, 'a malformed option reply');
          h.u32();
          const type = h.u32();
          const length = h.u32();
          if (length > 1 << 20) throw ioError(name, `an option reply of ${length} bytes`);
          const body = await reader.read(length);
          if (type >= 2 ** 31) return { error: type, message: new TextDecoder().decode(body), replies };
          if (type === P.REP_ACK) return { replies };
          replies.push({ type, data: body });
        }
      };
      const structured = !('error' in (await option(P.OPT_STRUCTURED_REPLY, new Uint8Array(0))));
      const exportName = new TextEncoder().encode(address.exportName);
      let allocationContext: number | undefined;
      if (structured) {
        const ctx = new TextEncoder().encode(P.CONTEXT_BASE_ALLOCATION);
        const r = await option(P.OPT_SET_META_CONTEXT, new MessageBuilder().u32(exportName.length).bytes(exportName).u32(1).u32(ctx.length).bytes(ctx).build());
        for (const rep of r.replies) if (rep.type === P.REP_META_CONTEXT) allocationContext = new FieldReader(rep.data).u32();
      }
      const go = await option(P.OPT_GO, new MessageBuilder().u32(exportName.length).bytes(exportName).u16(1).u16(P.INFO_BLOCK_SIZE).build());
      if ('error' in go) throw ioError(name, `the server refused export "${address.exportName}": ${go.message || `error ${go.error! - 2 ** 31}`}`);
      let size = -1;
      let flags = 0;
      let maxBlock = 32 * 1024 * 1024;
      for (const rep of go.replies) {
        if (rep.type !== P.REP_INFO || rep.data.length < 2) continue;
        const f = new FieldReader(rep.data);
        const info = f.u16();
        if (info === P.INFO_EXPORT && f.remaining >= 10) {
          size = f.u64();
          flags = f.u16();
        } else if (info === P.INFO_BLOCK_SIZE && f.remaining >= 12) {
          f.u32();
          f.u32();
          maxBlock = Math.max(512, Math.min(f.u32(), 32 * 1024 * 1024));
        }
      }
      if (size < 0) throw ioError(name, 'the server gave no export size');
      if (options.writable && flags & P.FLAG_READ_ONLY) throw readOnlyError('nbd', name);
      if (!structured) allocationContext = undefined;
      return new NbdStorage(name, socket, reader, size, flags, maxBlock, allocationContext, options.writable ?? false);
    } catch (e) {
      socket.destroy();
      if (e instanceof ConnectionClosed) throw ioError(name, 'the server closed the connection during the handshake');
      throw e;
    }
  }

  async #receive(): Promise<void> {
    try {
      for (;;) {
        const magic = new FieldReader(await this.#reader.read(4)).u32();
        if (magic === P.SIMPLE_REPLY_MAGIC) {
          const f = new FieldReader(await this.#reader.read(12));
          const errno = f.u32();
          const cookie = f.bigU64();
          const p = this.#take(cookie);
          if (errno) this.#fail(p, errno, '');
          else {
            if (p.target) p.target.set(await this.#reader.read(p.target.length));
            p.resolve();
          }
        } else if (magic === P.STRUCTURED_REPLY_MAGIC) {
          const f = new FieldReader(await this.#reader.read(16));
          const flags = f.u16();
          const type = f.u16();
          const cookie = f.bigU64();
          const length = f.u32();
          const p = this.#pending.get(cookie);
          if (!p) throw ioError(this.name, `a reply for a request never sent (cookie ${cookie})`);
          if (length > this.#maxBlock + 1024 && type !== P.REPLY_TYPE_BLOCK_STATUS) throw ioError(this.name, `a reply chunk of ${length} bytes`);
          const body = await this.#reader.read(length);
          const b = new FieldReader(body);
          if (type === P.REPLY_TYPE_OFFSET_DATA && p.target) {
            const at = b.u64() - p.offset;
            const data = b.take(b.remaining);
            if (at < 0 || at + data.length > p.target.length) throw ioError(this.name, 'a data chunk outside the request');
            p.target.set(data, at);
          } else if (type === P.REPLY_TYPE_OFFSET_HOLE && p.target) {
            const at = b.u64() - p.offset;
            const n = b.u32();
            if (at < 0 || at + n > p.target.length) throw ioError(this.name, 'a hole chunk outside the request');
            // The target starts zeroed, and chunks never overlap: nothing to write.
          } else if (type === P.REPLY_TYPE_BLOCK_STATUS && p.status) {
            const id = b.u32();
            if (id === this.#allocationContext) while (b.remaining >= 8) p.status.push([b.u32(), b.u32()]);
          } else if (type === P.REPLY_TYPE_ERROR || type === P.REPLY_TYPE_ERROR_OFFSET) {
            const errno = b.u32();
            const n = b.u16();
            p.error = { errno, message: new TextDecoder().decode(b.take(Math.min(n, b.remaining))) };
          }
          if (flags & P.REPLY_FLAG_DONE) {
            this.#pending.delete(cookie);
            if (p.error) this.#fail(p, p.error.errno, p.error.message);
            else p.resolve();
          }
        } else {
          throw ioError(this.name, `a reply with magic 0x${magic.toString(16)}`);
        }
      }
    } catch (e) {
      const error = e instanceof ConnectionClosed ? ioError(this.name, 'the server closed the connection') : (e as Error);
      this.#closed ??= error;
      for (const p of this.#pending.values()) p.reject(error);
      this.#pending.clear();
      this.#socket.destroy();
    }
  }

  #take(cookie: bigint): Pending {
    const p = this.#pending.get(cookie);
    if (!p) throw ioError(this.name, `a reply for a request never sent (cookie ${cookie})`);
    this.#pending.delete(cookie);
    return p;
  }

  #fail(p: Pending, errno: number, message: string): void {
    const what = `${ERRNO_NAMES[errno] ?? `error ${errno}`}${message ? `: ${message}` : ''}`;
    p.reject(errno === P.EPERM ? readOnlyError('nbd', this.name) : errno === P.EINVAL ? invalidArg('nbd', `${this.name}: the server refused the request (${what})`) : ioError(this.name, `the server answered ${what}`, { errno }));
  }

  #request(type: number, flags: number, offset: number, length: number, extra: Partial<Pending> = {}, payload?: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closed);
    const cookie = this.#nextCookie++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(cookie, { offset, ...extra, resolve, reject });
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
   * ERR_IMG_UNSUPPORTED for a write past the end, since an export cannot grow.
   */
  async write(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw readOnlyError('nbd', this.name);
    if (position + data.length > this.#size) throw unsupported('nbd', this.name, `a write past the end of the ${this.#size}-byte export (NBD exports do not grow)`);
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

  /** Accepts only the current size: an export's size is fixed, so any other is ERR_IMG_UNSUPPORTED. */
  async truncate(size: number): Promise<void> {
    if (size === this.#size) return;
    throw unsupported('nbd', this.name, `an NBD export has a fixed size (${this.#size} bytes); it cannot become ${size}`);
  }

  /** Sends FLUSH so completed writes are durable; nothing to do when read-only or the server does not take FLUSH. */
  async flush(): Promise<void> {
    if (this.readOnly || !(this.#flags & P.FLAG_SEND_FLUSH)) return;
    await this.#request(P.CMD_FLUSH, 0, 0, 0);
  }

  /** Allocation from BLOCK_STATUS (base:allocation); all data when the server offers no block status. */
  async ranges(offset: number, length: number): Promise<StorageRange[]> {
    const end = Math.min(this.#size, offset + length);
    if (this.#allocationContext === undefined) return end > offset ? [{ offset, length: end - offset, data: true }] : [];
    const out: StorageRange[] = [];
    for (let at = offset; at < end;) {
      const status: Array<[number, number]> = [];
      await this.#request(P.CMD_BLOCK_STATUS, 0, at, Math.min(end - at, 2 ** 32 - 2 ** 20), { status });
      if (status.length === 0) throw ioError(this.name, `no block status for offset ${at}`);
      for (const [len, flags] of status) {
        const n = Math.min(len, end - at);
        if (n <= 0) break;
        const data = (flags & P.STATE_ZERO) === 0; // a range known to read as zeros needs no reading
        const last = out[out.length - 1];
        if (last && last.data === data && last.offset + last.length === at) last.length += n;
        else out.push({ offset: at, length: n, data });
        at += n;
      }
    }
    return out;
  }

  /** Waits for requests in flight, sends DISC and closes the socket; later calls throw ERR_IMG_IO. Calling it twice is harmless. */
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
      this.#closed = ioError(this.name, 'the storage is closed');
      this.#socket.write(new MessageBuilder().u32(P.REQUEST_MAGIC).u16(0).u16(P.CMD_DISC).u64(0).u64(0).u32(0).build());
      this.#socket.end();
    }
    await this.#receiving;
  }
}
