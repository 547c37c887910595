/**
 * The client side of the fixed newstyle handshake (proto.md "Handshake"):
 * what NbdStorage asks for and how much of a server's answers it believes.
 * Every length a server sends is checked before anything is allocated for it.
 */
import { ioError, unsupported, type ImageError } from '@img/block';
import * as P from './protocol.js';
import { ByteReader, FieldReader, MessageBuilder } from './wire.js';

/** What the client learnt before transmission. */
export interface ClientAgreement {
  size: number;
  flags: number;
  structured: boolean;
  /** The largest request to send (the server's maximum block size, at most 32 MiB). */
  maxBlock: number;
  /** The id the server gave base:allocation, when it offers block status. */
  allocationContext: number | undefined;
}

/** "IHAVEOPT"'s place holds this in an oldstyle greeting (an export size follows, no options). */
const OLDSTYLE_MAGIC = 0x00420281861253n;
/** The longest option reply believed: strings in the protocol are at most 4096 bytes, a reply holds one or two. */
export const MAX_OPTION_REPLY = 64 * 1024;
/** The most replies one option may have before the server is taken to be looping. */
export const MAX_OPTION_REPLIES = 64;
/** The largest request sent, whatever the server allows. */
export const CLIENT_MAX_BLOCK = 32 * 1024 * 1024;

const OPTION_NAMES: Record<number, string> = { [P.OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY', [P.OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT', [P.OPT_GO]: 'NBD_OPT_GO' };

/** A server's text made safe for one line of a terminal: no control characters, at most 200 characters. */
export function printable(text: string): string {
  // oxlint-disable-next-line no-control-regex -- control characters are what this removes
  const clean = text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
  return clean.length > 200 ? `${clean.slice(0, 200)}...` : clean;
}

const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** A server that broke the protocol: ERR_IMG_IO naming the server, the field and where it was. */
export function protocolError(server: string, message: string, data: { field: string; offset?: number; cookie?: string }): ImageError {
  return ioError(server, message, { format: 'nbd', ...data });
}

/**
 * Haggles for structured replies, base:allocation and `exportName` (OPT_GO),
 * checking each answer; `offset` in errors counts the bytes the server sent.
 */
export async function clientHandshake(reader: ByteReader, send: (b: Uint8Array) => Promise<void>, server: string, exportName: string): Promise<ClientAgreement> {
  let at = 0;
  const read = async (n: number) => {
    const b = await reader.read(n);
    at += n;
    return b;
  };
  const hello = new FieldReader(await read(18));
  const magic = hello.bigU64();
  if (magic !== P.NBDMAGIC) throw protocolError(server, `the greeting starts with 0x${magic.toString(16)}, not NBDMAGIC (offset 0): not an NBD server`, { field: 'NBDMAGIC', offset: 0 });
  const second = hello.bigU64();
  if (second === OLDSTYLE_MAGIC) throw unsupported('nbd', server, 'the server speaks oldstyle negotiation (magic 0x00420281861253 at offset 8), which names no export; only fixed newstyle is spoken', { field: 'IHAVEOPT', offset: 8 });
  if (second !== P.IHAVEOPT) throw protocolError(server, `the greeting has 0x${second.toString(16)} where IHAVEOPT belongs (offset 8)`, { field: 'IHAVEOPT', offset: 8 });
  const serverFlags = hello.u16();
  if (!(serverFlags & P.FLAG_FIXED_NEWSTYLE)) throw unsupported('nbd', server, `the handshake flags 0x${serverFlags.toString(16)} (offset 16) lack NBD_FLAG_FIXED_NEWSTYLE`, { field: 'handshake flags', offset: 16 });
  await send(new MessageBuilder().u32(P.FLAG_C_FIXED_NEWSTYLE | (serverFlags & P.FLAG_NO_ZEROES ? P.FLAG_C_NO_ZEROES : 0)).build());

  const option = async (opt: number, data: Uint8Array) => {
    const name = OPTION_NAMES[opt] ?? `option ${opt}`;
    await send(new MessageBuilder().u64(P.IHAVEOPT).u32(opt).u32(data.length).bytes(data).build());
    const replies: Array<{ type: number; data: Uint8Array; offset: number }> = [];
    for (;;) {
      const start = at;
      const h = new FieldReader(await read(20));
      const replyMagic = h.bigU64();
      if (replyMagic !== P.OPT_REPLY_MAGIC) throw protocolError(server, `the reply to ${name} at offset ${start} has magic 0x${replyMagic.toString(16)}, not the option reply magic`, { field: 'option reply magic', offset: start });
      const echoed = h.u32();
      if (echoed !== opt) throw protocolError(server, `the reply to ${name} at offset ${start} is for option ${echoed}`, { field: 'option', offset: start + 8 });
      const type = h.u32();
      const length = h.u32();
      if (length > MAX_OPTION_REPLY) throw protocolError(server, `the reply to ${name} at offset ${start} claims ${length} bytes of data, over the ${MAX_OPTION_REPLY}-byte limit`, { field: 'option reply length', offset: start + 16 });
      const body = await read(length);
      if (type >= 2 ** 31) return { error: type, message: new TextDecoder().decode(body.subarray(0, 4096)), replies };
      if (type === P.REP_ACK) return { replies };
      if (replies.length >= MAX_OPTION_REPLIES) throw protocolError(server, `${name} drew more than ${MAX_OPTION_REPLIES} replies (the last at offset ${start})`, { field: 'option reply', offset: start });
      replies.push({ type, data: body, offset: start });
    }
  };

  const structured = !('error' in (await option(P.OPT_STRUCTURED_REPLY, new Uint8Array(0))));
  const nameBytes = new TextEncoder().encode(exportName);
  let allocationContext: number | undefined;
  if (structured) {
    const ctx = new TextEncoder().encode(P.CONTEXT_BASE_ALLOCATION);
    const r = await option(P.OPT_SET_META_CONTEXT, new MessageBuilder().u32(nameBytes.length).bytes(nameBytes).u32(1).u32(ctx.length).bytes(ctx).build());
    for (const rep of r.replies) {
      if (rep.type !== P.REP_META_CONTEXT) continue;
      const f = new FieldReader(rep.data);
      const contextName = rep.data.length >= 4 ? new TextDecoder().decode(rep.data.subarray(4)) : '';
      if (contextName !== P.CONTEXT_BASE_ALLOCATION || allocationContext !== undefined) {
        throw protocolError(server, `NBD_REP_META_CONTEXT at offset ${rep.offset} names "${contextName.slice(0, 64)}" where one base:allocation was asked for`, { field: 'NBD_REP_META_CONTEXT', offset: rep.offset });
      }
      allocationContext = f.u32();
    }
  }

  const go = await option(P.OPT_GO, new MessageBuilder().u32(nameBytes.length).bytes(nameBytes).u16(1).u16(P.INFO_BLOCK_SIZE).build());
  if ('error' in go) throw ioError(server, `the server refused export "${exportName}": ${printable(go.message ?? '') || `error ${go.error! - 2 ** 31}`}`, { format: 'nbd', field: 'NBD_OPT_GO' });
  let size = -1;
  let flags = 0;
  let maxBlock = CLIENT_MAX_BLOCK;
  for (const rep of go.replies) {
    if (rep.type !== P.REP_INFO) continue;
    if (rep.data.length < 2) throw protocolError(server, `NBD_REP_INFO at offset ${rep.offset} has ${rep.data.length} bytes, too few for its type`, { field: 'NBD_REP_INFO', offset: rep.offset });
    const f = new FieldReader(rep.data);
    const info = f.u16();
    const field = info === P.INFO_EXPORT ? 'NBD_INFO_EXPORT' : 'NBD_INFO_BLOCK_SIZE';
    const want = info === P.INFO_EXPORT ? 12 : info === P.INFO_BLOCK_SIZE ? 14 : undefined;
    if (want !== undefined && rep.data.length !== want) throw protocolError(server, `${field} at offset ${rep.offset} has ${rep.data.length} bytes, not ${want}`, { field, offset: rep.offset });
    if (info === P.INFO_EXPORT) {
      const big = f.bigU64();
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw unsupported('nbd', server, `the export size ${big} (NBD_INFO_EXPORT at offset ${rep.offset}) is past the 2^53-1 bytes this client addresses`, { field: 'export size', offset: rep.offset + 22 });
      size = Number(big);
      flags = f.u16();
    } else if (info === P.INFO_BLOCK_SIZE) {
      const min = f.u32();
      const preferred = f.u32();
      const max = f.u32();
      const bad =
        !isPowerOfTwo(min) || min > 65536
          ? `minimum block size ${min} is not a power of two up to 64 KiB`
          : !isPowerOfTwo(preferred) || preferred < min
            ? `preferred block size ${preferred} is not a power of two at least the minimum ${min}`
            : max < min || (max % min !== 0 && max !== 0xffffffff)
              ? `maximum block size ${max} is not a multiple of the minimum ${min}`
              : max < 512
                ? `maximum block size ${max} is under 512 bytes`
                : undefined;
      if (bad) throw protocolError(server, `NBD_INFO_BLOCK_SIZE at offset ${rep.offset}: the ${bad}`, { field: 'NBD_INFO_BLOCK_SIZE', offset: rep.offset });
      maxBlock = Math.min(max, CLIENT_MAX_BLOCK);
      // Requests split at maxBlock stay multiples of the minimum.
      maxBlock -= maxBlock % min;
    }
  }
  if (size < 0) throw protocolError(server, 'NBD_OPT_GO was acknowledged without NBD_INFO_EXPORT: no export size', { field: 'NBD_INFO_EXPORT' });
  return { size, flags, structured, maxBlock, allocationContext: structured ? allocationContext : undefined };
}
