/**
 * A scriptable NBD server for tests (raw node:net): each connection runs a
 * script that may answer any handshake or transmission step wrongly. The
 * helpers speak the protocol correctly; a script breaks it where it wants.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import * as P from './protocol.js';
import { ByteReader, FieldReader, MessageBuilder } from './wire.js';

/** One request as the server read it. */
export interface EvilRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Uint8Array;
}

/** What a good handshake announces; each field can be made wrong. */
export interface EvilHandshake {
  /** Export size as sent (a bigint, so 2^64-1 can be said). */
  size?: bigint;
  /** Transmission flags (default HAS_FLAGS | READ_ONLY... as given). */
  flags?: number;
  /** [minimum, preferred, maximum] for NBD_INFO_BLOCK_SIZE; none sent when undefined. */
  blockSize?: [number, number, number];
  /** Accept NBD_OPT_STRUCTURED_REPLY (default true). */
  structured?: boolean;
  /** The id given base:allocation (default 7); none offered when null. */
  contextId?: number | null;
}

/** The server's side of one connection. */
export class EvilPeer {
  readonly reader: ByteReader;

  constructor(readonly socket: Socket) {
    this.reader = new ByteReader(socket);
  }

  send(...parts: Array<Uint8Array | MessageBuilder>): Promise<void> {
    const bytes = parts.map((p) => (p instanceof MessageBuilder ? p.build() : p));
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.write(Buffer.concat(bytes), () => resolve());
    });
  }

  /** The greeting; defaults are right. */
  greet(o: { magic?: bigint; second?: bigint; flags?: number } = {}): Promise<void> {
    return this.send(
      new MessageBuilder()
        .u64(o.magic ?? P.NBDMAGIC)
        .u64(o.second ?? P.IHAVEOPT)
        .u16(o.flags ?? P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES),
    );
  }

  async clientFlags(): Promise<number> {
    return new FieldReader(await this.reader.read(4)).u32();
  }

  async option(): Promise<{ option: number; data: Uint8Array }> {
    const f = new FieldReader(await this.reader.read(16));
    f.bigU64();
    const option = f.u32();
    const data = await this.reader.read(f.u32());
    return { option, data };
  }

  /** An option reply; `length` overrides the length field (the data sent stays `data`). */
  optionReply(option: number, type: number, data: Uint8Array | MessageBuilder = new Uint8Array(0), length?: number): Promise<void> {
    const body = data instanceof MessageBuilder ? data.build() : data;
    return this.send(
      new MessageBuilder()
        .u64(P.OPT_REPLY_MAGIC)
        .u32(option)
        .u32(type)
        .u32(length ?? body.length)
        .bytes(body),
    );
  }

  /**
   * A correct handshake for NbdStorage's three options, announcing `h`;
   * `onGo` may replace the NBD_OPT_GO answer.
   */
  async handshake(h: EvilHandshake = {}, onGo?: (peer: EvilPeer) => Promise<unknown>): Promise<unknown> {
    await this.greet();
    await this.clientFlags();
    for (;;) {
      const { option } = await this.option();
      if (option === P.OPT_STRUCTURED_REPLY) await this.optionReply(option, h.structured === false ? P.REP_ERR_UNSUP : P.REP_ACK);
      else if (option === P.OPT_SET_META_CONTEXT) {
        const id = h.contextId === undefined ? 7 : h.contextId;
        if (id !== null) await this.optionReply(option, P.REP_META_CONTEXT, new MessageBuilder().u32(id).string(P.CONTEXT_BASE_ALLOCATION));
        await this.optionReply(option, P.REP_ACK);
      } else if (option === P.OPT_GO) {
        if (onGo) return onGo(this);
        await this.optionReply(
          option,
          P.REP_INFO,
          new MessageBuilder()
            .u16(P.INFO_EXPORT)
            .u64(h.size ?? 1n << 20n)
            .u16(h.flags ?? P.FLAG_HAS_FLAGS | P.FLAG_READ_ONLY),
        );
        if (h.blockSize) await this.optionReply(option, P.REP_INFO, new MessageBuilder().u16(P.INFO_BLOCK_SIZE).u32(h.blockSize[0]).u32(h.blockSize[1]).u32(h.blockSize[2]));
        await this.optionReply(option, P.REP_ACK);
        return;
      } else await this.optionReply(option, P.REP_ERR_UNSUP);
    }
  }

  /** The next request, with a write's payload; undefined at DISC or when the client went away. */
  async request(): Promise<EvilRequest | undefined> {
    try {
      const f = new FieldReader(await this.reader.read(28));
      f.u32();
      const flags = f.u16();
      const type = f.u16();
      const cookie = f.bigU64();
      const offset = f.u64();
      const length = f.u32();
      if (type === P.CMD_DISC) return undefined;
      const payload = type === P.CMD_WRITE ? await this.reader.read(length) : undefined;
      return { flags, type, cookie, offset, length, payload };
    } catch {
      return undefined;
    }
  }

  simple(cookie: bigint, errno: number, data?: Uint8Array): Promise<void> {
    const head = new MessageBuilder().u32(P.SIMPLE_REPLY_MAGIC).u32(errno).u64(cookie);
    return this.send(head, ...(data ? [data] : []));
  }

  /** A structured chunk; `length` overrides the length field. */
  chunk(cookie: bigint, flags: number, type: number, payload: Uint8Array | MessageBuilder = new Uint8Array(0), length?: number): Promise<void> {
    const body = payload instanceof MessageBuilder ? payload.build() : payload;
    return this.send(
      new MessageBuilder()
        .u32(P.STRUCTURED_REPLY_MAGIC)
        .u16(flags)
        .u16(type)
        .u64(cookie)
        .u32(length ?? body.length)
        .bytes(body),
    );
  }

  /** A whole, correct structured answer to a read of `image`. */
  readReply(req: EvilRequest, image: Uint8Array): Promise<void> {
    return this.chunk(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(req.offset).bytes(image.subarray(req.offset, req.offset + req.length)));
  }

  /**
   * Answers requests correctly from `image` (structured replies, one
   * allocated extent per block status) until `evil` returns true for one:
   * that request is the script's to answer, and serving stops.
   */
  async serve(image: Uint8Array, evil: (req: EvilRequest) => boolean = () => false, contextId = 7): Promise<EvilRequest | undefined> {
    for (;;) {
      const req = await this.request();
      if (!req || evil(req)) return req;
      if (req.type === P.CMD_READ) await this.readReply(req, image);
      else if (req.type === P.CMD_BLOCK_STATUS) {
        await this.chunk(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, new MessageBuilder().u32(contextId).u32(req.length).u32(0));
      } else {
        if (req.type === P.CMD_WRITE && req.payload) image.set(req.payload, req.offset);
        await this.chunk(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE);
      }
    }
  }

  /** Never answers again; the test's cleanup closes the socket. */
  stall(): Promise<void> {
    return new Promise(() => {});
  }
}

/** A running evil server. */
export interface EvilServer {
  port: number;
  uri(exportName?: string): string;
  /** Errors scripts threw (the client going away is not one). */
  errors: unknown[];
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 and runs `script` for each connection. */
export async function startEvilServer(script: (peer: EvilPeer) => Promise<unknown>): Promise<EvilServer> {
  const sockets = new Set<Socket>();
  const errors: unknown[] = [];
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    script(new EvilPeer(socket)).then(
      () => socket.end(),
      (e: unknown) => {
        if (!socket.destroyed) errors.push(e);
        socket.destroy();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    errors,
    uri: (name = '') => `nbd://127.0.0.1:${port}/${name}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
