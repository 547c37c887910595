/**
 * The fixed newstyle handshake and option haggling (proto.md "Handshake"):
 * what a client learns before transmission, and what it agrees to.
 */
import type { NbdExport } from './export.js';
import { contextsOf, matchContexts } from './export.js';
import * as P from './protocol.js';
import { ByteReader, FieldReader, MessageBuilder } from './wire.js';

/** What the handshake settled: the export and how to talk about it. */
export interface Agreement {
  export: NbdExport;
  structured: boolean;
  /** Context ids (their index + 1) to names, as SET_META_CONTEXT chose them. */
  contexts: Map<number, string>;
}

/** Limits on what a client may send while haggling. */
export interface HandshakeLimits {
  /** Most options on one connection before it is dropped (default 512). */
  maxOptions: number;
  /** Longest option payload accepted (default 64 KiB; longer is answered NBD_REP_ERR_TOO_BIG and skipped). */
  maxOptionLength: number;
}

/** The largest block a client may ask for in one request; also what NBD_INFO_BLOCK_SIZE says. */
export const MAX_REQUEST = 32 * 1024 * 1024;

type Write = (bytes: Uint8Array) => Promise<void>;

/** A protocol violation after which the connection is dropped. */
export class HandshakeAbort extends Error {}

/**
 * Transmission flags of an export. NBD_FLAG_CAN_MULTI_CONN holds for
 * writable exports too: every connection goes to the one `Disk` object of
 * the export, so a write one connection saw answered is visible to reads on
 * every other, and FLUSH (or FUA) on any connection is `disk.flush()`, which
 * makes every completed write durable, whichever connection sent it. It is
 * not advertised (`multiConn` false) when the server serves one client at a
 * time (qemu-nbd's rule for -e 1): a client's second connection would wait
 * until its first one closed.
 */
export function transmissionFlags(exp: NbdExport, structured: boolean, multiConn = true): number {
  let flags = P.FLAG_HAS_FLAGS | P.FLAG_SEND_CACHE;
  if (multiConn) flags |= P.FLAG_CAN_MULTI_CONN;
  if (exp.writable) flags |= P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_TRIM | P.FLAG_SEND_WRITE_ZEROES | P.FLAG_SEND_FAST_ZERO;
  else flags |= P.FLAG_READ_ONLY;
  if (structured) flags |= P.FLAG_SEND_DF;
  return flags;
}

function optionReply(option: number, type: number, data?: MessageBuilder | Uint8Array): Uint8Array {
  const body = data instanceof MessageBuilder ? data.build() : (data ?? new Uint8Array(0));
  return new MessageBuilder().u64(P.OPT_REPLY_MAGIC).u32(option).u32(type).u32(body.length).bytes(body).build();
}

function errorReply(option: number, type: number, message: string): Uint8Array {
  return optionReply(option, type, new MessageBuilder().string(message));
}

/**
 * Runs the handshake on a connection; resolves with the agreement once the
 * client has entered transmission, or undefined when it aborted.
 * `multiConn`: advertise NBD_FLAG_CAN_MULTI_CONN (see transmissionFlags).
 */
export async function negotiate(reader: ByteReader, write: Write, exports: readonly NbdExport[], limits: HandshakeLimits, multiConn = true): Promise<Agreement | undefined> {
  await write(
    new MessageBuilder()
      .u64(P.NBDMAGIC)
      .u64(P.IHAVEOPT)
      .u16(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES)
      .build(),
  );
  const clientFlags = new FieldReader(await reader.read(4)).u32();
  if ((clientFlags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) !== 0) throw new HandshakeAbort(`unknown client flags 0x${clientFlags.toString(16)}`);
  const noZeroes = (clientFlags & P.FLAG_C_NO_ZEROES) !== 0;
  let structured = false;
  let contexts = new Map<number, string>();
  let contextsFor: string | undefined;
  const find = (name: string) => exports.find((e) => e.name === name);

  for (let count = 0; ; count++) {
    if (count >= limits.maxOptions) throw new HandshakeAbort(`more than ${limits.maxOptions} options`);
    const head = new FieldReader(await reader.read(16));
    if (head.bigU64() !== P.IHAVEOPT) throw new HandshakeAbort('an option without the IHAVEOPT magic');
    const option = head.u32();
    const length = head.u32();
    if (length > limits.maxOptionLength) {
      if (option === P.OPT_EXPORT_NAME) throw new HandshakeAbort(`an export name of ${length} bytes`);
      await reader.skip(length);
      await write(errorReply(option, P.REP_ERR_TOO_BIG, `option data of ${length} bytes is over the ${limits.maxOptionLength}-byte limit`));
      continue;
    }
    const data = await reader.read(length);
    const f = new FieldReader(data);
    try {
      switch (option) {
        case P.OPT_EXPORT_NAME: {
          const exp = find(new TextDecoder().decode(data));
          if (!exp) throw new HandshakeAbort('NBD_OPT_EXPORT_NAME for an unknown export');
          const reply = new MessageBuilder().u64(exp.disk.size).u16(transmissionFlags(exp, structured, multiConn));
          if (!noZeroes) reply.bytes(new Uint8Array(124));
          await write(reply.build());
          return { export: exp, structured, contexts: contextsFor === exp.name ? contexts : new Map() };
        }
        case P.OPT_ABORT:
          await write(optionReply(option, P.REP_ACK));
          return undefined;
        case P.OPT_LIST: {
          if (length !== 0) {
            await write(errorReply(option, P.REP_ERR_INVALID, 'NBD_OPT_LIST takes no data'));
            break;
          }
          for (const e of exports)
            await write(
              optionReply(
                option,
                P.REP_SERVER,
                new MessageBuilder()
                  .u32(new TextEncoder().encode(e.name).length)
                  .string(e.name)
                  .string(e.description ?? ''),
              ),
            );
          await write(optionReply(option, P.REP_ACK));
          break;
        }
        case P.OPT_STRUCTURED_REPLY: {
          if (length !== 0) await write(errorReply(option, P.REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'));
          else if (structured) await write(errorReply(option, P.REP_ERR_INVALID, 'structured replies are already on'));
          else {
            structured = true;
            await write(optionReply(option, P.REP_ACK));
          }
          break;
        }
        case P.OPT_INFO:
        case P.OPT_GO: {
          const nameLength = f.u32();
          if (nameLength > f.remaining) throw new RangeError('name past the option');
          const name = new TextDecoder().decode(f.take(nameLength));
          const count = f.u16();
          if (count * 2 !== f.remaining) throw new RangeError('info requests do not fill the option');
          const wanted = Array.from({ length: count }, () => f.u16());
          const exp = find(name);
          if (!exp) {
            await write(errorReply(option, P.REP_ERR_UNKNOWN, `no export named "${name}"`));
            break;
          }
          await write(
            optionReply(
              option,
              P.REP_INFO,
              new MessageBuilder()
                .u16(P.INFO_EXPORT)
                .u64(exp.disk.size)
                .u16(transmissionFlags(exp, structured, multiConn)),
            ),
          );
          if (wanted.includes(P.INFO_NAME)) await write(optionReply(option, P.REP_INFO, new MessageBuilder().u16(P.INFO_NAME).string(exp.name)));
          if (wanted.includes(P.INFO_DESCRIPTION) && exp.description) await write(optionReply(option, P.REP_INFO, new MessageBuilder().u16(P.INFO_DESCRIPTION).string(exp.description)));
          await write(optionReply(option, P.REP_INFO, new MessageBuilder().u16(P.INFO_BLOCK_SIZE).u32(1).u32(4096).u32(MAX_REQUEST)));
          await write(optionReply(option, P.REP_ACK));
          if (option === P.OPT_GO) return { export: exp, structured, contexts: contextsFor === exp.name ? contexts : new Map() };
          break;
        }
        case P.OPT_LIST_META_CONTEXT:
        case P.OPT_SET_META_CONTEXT: {
          const setting = option === P.OPT_SET_META_CONTEXT;
          if (!structured) {
            await write(errorReply(option, P.REP_ERR_INVALID, 'meta contexts need structured replies (NBD_OPT_STRUCTURED_REPLY first)'));
            break;
          }
          const nameLength = f.u32();
          if (nameLength > f.remaining) throw new RangeError('name past the option');
          const name = new TextDecoder().decode(f.take(nameLength));
          const queries: string[] = [];
          for (let n = f.u32(); n > 0; n--) {
            const qLength = f.u32();
            if (qLength > f.remaining) throw new RangeError('query past the option');
            queries.push(new TextDecoder().decode(f.take(qLength)));
          }
          if (f.remaining !== 0) throw new RangeError('bytes after the queries');
          const exp = find(name);
          if (!exp) {
            await write(errorReply(option, P.REP_ERR_UNKNOWN, `no export named "${name}"`));
            break;
          }
          const available = contextsOf(exp);
          const chosen = new Set<string>();
          if (!setting && queries.length === 0) available.forEach((c) => chosen.add(c));
          for (const q of queries) for (const c of matchContexts(available, q, !setting)) chosen.add(c);
          const ids = new Map<number, string>();
          for (const c of chosen) {
            const id = available.indexOf(c) + 1;
            if (setting) ids.set(id, c);
            await write(optionReply(option, P.REP_META_CONTEXT, new MessageBuilder().u32(setting ? id : 0).string(c)));
          }
          await write(optionReply(option, P.REP_ACK));
          if (setting) {
            contexts = ids;
            contextsFor = name;
          }
          break;
        }
        case P.OPT_STARTTLS:
          await write(errorReply(option, P.REP_ERR_UNSUP, 'TLS is not offered; tunnel the connection (ssh, stunnel) or use a Unix socket'));
          break;
        default:
          await write(errorReply(option, P.REP_ERR_UNSUP, `option ${option} is not supported`));
      }
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      await write(errorReply(option, P.REP_ERR_INVALID, `malformed option data: ${e.message}`));
    }
  }
}
