/**
 * A raw NBD client for tests (node:net): it sends whatever bytes a test
 * asks for, hostile or not, and reads simple replies back.
 */
import { createConnection, type Socket } from 'node:net';
import * as P from './protocol.js';
import { ByteReader, FieldReader, MessageBuilder } from './wire.js';

/** One raw connection. */
export class RawClient {
  readonly reader: ByteReader;
  #reads = new Map<bigint, number>();
  #cookie = 1n;

  private constructor(readonly socket: Socket) {
    this.reader = new ByteReader(socket);
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      s.on('error', () => {});
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(bytes: Uint8Array | MessageBuilder): boolean {
    return this.socket.write(bytes instanceof MessageBuilder ? bytes.build() : bytes);
  }

  /** Reads the greeting and sends the client flags. */
  async greet(): Promise<void> {
    await this.reader.read(18);
    this.send(new MessageBuilder().u32(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES));
  }

  option(option: number, data: Uint8Array | MessageBuilder = new Uint8Array(0)): void {
    const body = data instanceof MessageBuilder ? data.build() : data;
    this.send(new MessageBuilder().u64(P.IHAVEOPT).u32(option).u32(body.length).bytes(body));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Uint8Array }> {
    const f = new FieldReader(await this.reader.read(20));
    f.bigU64();
    const option = f.u32();
    const type = f.u32();
    return { option, type, data: await this.reader.read(f.u32()) };
  }

  /** Greets and enters transmission on export `name` with NBD_OPT_GO (simple replies). */
  async go(name = ''): Promise<void> {
    await this.greet();
    const n = new TextEncoder().encode(name);
    this.option(P.OPT_GO, new MessageBuilder().u32(n.length).bytes(n).u16(0));
    for (;;) {
      const r = await this.optionReply();
      if (r.type === P.REP_ACK) return;
      if (r.type >= 2 ** 31) throw new Error(`NBD_OPT_GO refused: ${r.type}`);
    }
  }

  /** Sends a request (a write's payload may be shorter than `length`); returns its cookie. */
  request(type: number, offset: bigint | number, length: number, flags = 0, payload?: Uint8Array): bigint {
    const cookie = this.#cookie++;
    if (type === P.CMD_READ) this.#reads.set(cookie, length);
    this.send(new MessageBuilder().u32(P.REQUEST_MAGIC).u16(flags).u16(type).u64(cookie).u64(offset).u32(length));
    if (payload) this.send(payload);
    return cookie;
  }

  /** The next simple reply: its errno, cookie and a successful read's data. */
  async reply(): Promise<{ errno: number; cookie: bigint; data?: Uint8Array }> {
    const f = new FieldReader(await this.reader.read(16));
    if (f.u32() !== P.SIMPLE_REPLY_MAGIC) throw new Error('not a simple reply');
    const errno = f.u32();
    const cookie = f.bigU64();
    const length = this.#reads.get(cookie);
    this.#reads.delete(cookie);
    return { errno, cookie, data: length !== undefined && errno === 0 ? await this.reader.read(length) : undefined };
  }

  /** Resolves true when the server has closed the connection (bytes before that are dropped), false after `ms`. */
  async closed(ms = 2000): Promise<boolean> {
    const drained = (async () => {
      try {
        for (;;) await this.reader.read(1);
      } catch {
        return true;
      }
    })();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const result = await Promise.race([drained, late]);
    clearTimeout(timer);
    return result;
  }
}
