/**
 * The transmission phase (proto.md "Transmission"): requests are read in
 * order and run concurrently up to a queue depth; each reply is written
 * whole, so replies of different requests never interleave inside a chunk.
 * The disk keeps call order for overlapping requests.
 */
import { ImageError, type Extent } from '@img/block';
import { bitmapOf, type NbdExtent } from './export.js';
import type { Agreement } from './handshake.js';
import { MAX_REQUEST } from './handshake.js';
import * as P from './protocol.js';
import { ByteReader, FieldReader, MessageBuilder } from './wire.js';

/** Limits on a connection's requests. */
export interface TransmissionLimits {
  /** Requests running at once on one connection (default 16); reading pauses beyond it. */
  queueDepth: number;
  /** Most extents in one BLOCK_STATUS reply chunk (default 65536). */
  maxExtents: number;
  /**
   * Most bytes of reads and writes in flight on one connection (default 64 MiB):
   * past it, reading pauses until replies are written, so a client that
   * pipelines large requests and never reads its replies holds this much
   * memory, not queueDepth times 32 MiB. A single request may exceed it.
   */
  maxInFlightBytes: number;
}

interface Request {
  flags: number;
  type: number;
  cookie: Uint8Array;
  offset: number;
  length: number;
}

type Write = (parts: Uint8Array[]) => Promise<void>;

/** Ends the connection after the replies in flight (DISC, or a violation). */
export class TransmissionEnd extends Error {}

/** The protocol's errno for what a disk operation threw. */
export function nbdErrno(e: unknown): number {
  if (ImageError.isInstance(e)) {
    switch (e.code) {
      case 'ERR_IMG_READ_ONLY':
      case 'ERR_IMG_LOCKED':
        return P.EPERM;
      case 'ERR_IMG_INVALID_ARG':
        return P.EINVAL;
      case 'ERR_IMG_UNSUPPORTED':
        return P.ENOTSUP;
      default:
        return P.EIO;
    }
  }
  const code = (e as { code?: string } | undefined)?.code;
  if (code === 'ENOSPC') return P.ENOSPC;
  return P.EIO;
}

function messageOf(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).slice(0, 4096);
}

/** The command flags each command takes (others are answered EINVAL, as the protocol asks). */
const FLAGS_OF: Record<number, number> = {
  [P.CMD_READ]: P.CMD_FLAG_DF | P.CMD_FLAG_FUA,
  [P.CMD_WRITE]: P.CMD_FLAG_FUA,
  [P.CMD_FLUSH]: P.CMD_FLAG_FUA,
  [P.CMD_TRIM]: P.CMD_FLAG_FUA,
  [P.CMD_CACHE]: P.CMD_FLAG_FUA,
  [P.CMD_WRITE_ZEROES]: P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO,
  [P.CMD_BLOCK_STATUS]: P.CMD_FLAG_REQ_ONE | P.CMD_FLAG_FUA,
};

/** Read buffers larger than this are not kept for reuse. */
const POOL_BUFFER_MAX = 4 * 1024 * 1024;

function offsetField(offset: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(offset));
  return b;
}

class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The next `length` bytes, or undefined once `stop` is aborted first (the
 * read is abandoned: the caller ends the connection).
 */
function readUnlessStopped(reader: ByteReader, length: number, stop: AbortSignal | undefined): Promise<Uint8Array | undefined> {
  const read = reader.read(length);
  if (!stop) return read;
  if (stop.aborted) {
    read.catch(() => undefined);
    return Promise.resolve(undefined);
  }
  return new Promise((resolve, reject) => {
    const stopped = () => resolve(undefined);
    stop.addEventListener('abort', stopped, { once: true });
    read.then(
      (bytes) => {
        stop.removeEventListener('abort', stopped);
        resolve(bytes);
      },
      (e: unknown) => {
        stop.removeEventListener('abort', stopped);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/**
 * Serves requests until DISC, the end of the connection, or `stop` (the
 * server closing): then no further request is read, and it returns once the
 * replies of those in flight are written.
 */
export async function transmit(reader: ByteReader, write: Write, agreement: Agreement, limits: TransmissionLimits, stop?: AbortSignal): Promise<void> {
  const { export: exp, structured } = agreement;
  const disk = exp.disk;
  const running = new Set<Promise<void>>();
  let failed: { error: unknown } | undefined;
  let inFlight = 0;
  const simpleReply = (req: Request, errno: number, data?: Uint8Array) => {
    const head = new MessageBuilder().u32(P.SIMPLE_REPLY_MAGIC).u32(errno).bytes(req.cookie).build();
    return write(data ? [head, data] : [head]);
  };
  const chunk = (req: Request, flags: number, type: number, payload: Uint8Array[]) => {
    let length = 0;
    for (const p of payload) length += p.length;
    // The 20-byte chunk header in one allocation: a copy of 1 GiB sends thousands of them.
    const head = new Uint8Array(20);
    const v = new DataView(head.buffer);
    v.setUint32(0, P.STRUCTURED_REPLY_MAGIC);
    v.setUint16(4, flags);
    v.setUint16(6, type);
    head.set(req.cookie, 8);
    v.setUint32(16, length);
    return [head, ...payload];
  };
  const errorReply = (req: Request, errno: number, message: string) => {
    if (!structured) return simpleReply(req, errno);
    const text = new TextEncoder().encode(message);
    return write(chunk(req, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, [new MessageBuilder().u32(errno).u16(text.length).bytes(text).build()]));
  };

  const checkRange = (req: Request) => {
    if (req.offset < 0 || req.offset + req.length > disk.size) {
      throw new RequestError(req.type === P.CMD_WRITE || req.type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL, `${req.offset}+${req.length} is past the end of the ${disk.size}-byte export`);
    }
  };
  const checkWritable = () => {
    if (!exp.writable) throw new RequestError(P.EPERM, 'the export is read-only');
  };

  // Read buffers are reused once their reply is written (the write callback means the kernel has the bytes):
  // a copy of 1 GiB then allocates a few buffers, not 4096 zero-filled ones for the collector.
  const pool = new Map<number, Uint8Array[]>();
  let pooled = 0;
  const take = (length: number) => {
    const reused = pool.get(length)?.pop();
    if (!reused) return new Uint8Array(length);
    pooled--;
    return reused;
  };
  const give = (buf: Uint8Array) => {
    if (buf.length > POOL_BUFFER_MAX || pooled >= limits.queueDepth) return;
    const list = pool.get(buf.length) ?? [];
    list.push(buf);
    pool.set(buf.length, list);
    pooled++;
  };
  const written = async (done: Promise<void>, buf: Uint8Array) => {
    await done;
    give(buf);
  };

  const read = async (req: Request) => {
    checkRange(req);
    if (req.length === 0) return structured ? write(chunk(req, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, [])) : simpleReply(req, 0, new Uint8Array(0));
    if (!structured || req.flags & P.CMD_FLAG_DF) {
      const data = take(req.length);
      await disk.readInto(req.offset, data);
      const head = structured ? chunk(req, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, [offsetField(req.offset), data]) : undefined;
      return written(head ? write(head) : simpleReply(req, 0, data), data);
    }
    // Sparse read: holes and zero runs as OFFSET_HOLE chunks, data as OFFSET_DATA, all in one write. Data the
    // format stores over holes of its file (preallocation=metadata) is a zero run too: neither read nor sent.
    const runs: Extent[] = [];
    for await (const e of disk.extents({ offset: req.offset, length: req.length, fileHoles: true })) runs.push(e);
    if (runs.length === 0) return write(chunk(req, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, []));
    const hasData = runs.some((e) => e.kind === 'data');
    // One buffer for the request; data runs read into their place in it.
    const buf = hasData ? take(req.length) : undefined;
    const parts: Uint8Array[] = [];
    const reads: Promise<void>[] = [];
    for (let i = 0; i < runs.length; i++) {
      const e = runs[i]!;
      const flags = i === runs.length - 1 ? P.REPLY_FLAG_DONE : 0;
      if (e.kind === 'data') {
        const view = buf!.subarray(e.offset - req.offset, e.offset - req.offset + e.length);
        reads.push(disk.readInto(e.offset, view));
        parts.push(...chunk(req, flags, P.REPLY_TYPE_OFFSET_DATA, [offsetField(e.offset), view]));
      } else {
        parts.push(...chunk(req, flags, P.REPLY_TYPE_OFFSET_HOLE, [new MessageBuilder().u64(e.offset).u32(e.length).build()]));
      }
    }
    await Promise.all(reads);
    return buf ? written(write(parts), buf) : write(parts);
  };

  const blockStatus = async (req: Request) => {
    if (!structured || agreement.contexts.size === 0) throw new RequestError(P.EINVAL, 'BLOCK_STATUS needs a metadata context (NBD_OPT_SET_META_CONTEXT)');
    checkRange(req);
    if (req.length === 0) throw new RequestError(P.EINVAL, 'BLOCK_STATUS of 0 bytes');
    const one = (req.flags & P.CMD_FLAG_REQ_ONE) !== 0;
    const max = one ? 1 : limits.maxExtents;
    // Allocation contexts share one extents walk, started only if one of them was chosen and taken only as far as
    // a context's answer needs: with REQ_ONE, until its one run changes state (as qemu-nbd answers, so a client
    // probing one extent at a time makes no more round trips than it must). At most maxExtents extents are walked.
    const extents: NbdExtent[] = [];
    let walk: AsyncIterator<NbdExtent> | undefined;
    let walked = false;
    const extentAt = async (i: number): Promise<NbdExtent | undefined> => {
      walk ??= (exp.allocation ? exp.allocation(req.offset, req.length) : disk.extents({ offset: req.offset, length: req.length }))[Symbol.asyncIterator]();
      while (extents.length <= i && !walked && extents.length < limits.maxExtents) {
        const next = await walk.next();
        if (next.done) walked = true;
        else extents.push(next.value);
      }
      return extents[i];
    };
    const parts: Uint8Array[] = [];
    const ids = [...agreement.contexts.entries()];
    for (let n = 0; n < ids.length; n++) {
      const [id, name] = ids[n]!;
      const body = new MessageBuilder().u32(id);
      let prev: { flags: number; length: number } | undefined;
      let count = 0;
      const flush = () => {
        if (prev) body.u32(prev.length).u32(prev.flags);
      };
      // Runs of one state are one descriptor: extents differ in ways a context may not show.
      const add = (flags: number, length: number): boolean => {
        if (prev && prev.flags === flags && prev.length + length <= 0xffffffff) prev.length += length;
        else {
          if (count >= max) return false;
          flush();
          prev = { flags, length: Math.min(length, 0xffffffff) };
          count++;
        }
        return true;
      };
      const bitmap = bitmapOf(exp, name);
      if (bitmap) {
        for (const r of bitmap.runs(req.offset, req.length)) if (!add(r.dirty ? P.STATE_DIRTY : 0, r.length)) break;
      } else {
        for (let i = 0; ; i++) {
          const e = await extentAt(i);
          if (!e) break;
          const flags = name === P.CONTEXT_BASE_ALLOCATION ? baseAllocation(e) : e.kind === 'hole' ? 0 : (e.depth ?? 0) + 1;
          if (!add(flags, e.length)) break;
        }
      }
      flush();
      parts.push(...chunk(req, n === ids.length - 1 ? P.REPLY_FLAG_DONE : 0, P.REPLY_TYPE_BLOCK_STATUS, [body.build()]));
    }
    if (walk && !walked) await walk.return?.();
    return write(parts);
  };

  const handle = async (req: Request, payload: Uint8Array | undefined): Promise<void> => {
    try {
      const unknown = req.flags & ~(FLAGS_OF[req.type] ?? 0);
      if (unknown) throw new RequestError(P.EINVAL, `flags 0x${unknown.toString(16)} are not known for command ${req.type}`);
      switch (req.type) {
        case P.CMD_READ:
          return await read(req);
        case P.CMD_WRITE:
          checkWritable();
          checkRange(req);
          await disk.write(req.offset, payload!);
          if (req.flags & P.CMD_FLAG_FUA) await disk.flush();
          break;
        case P.CMD_WRITE_ZEROES:
          checkWritable();
          checkRange(req);
          await disk.writeZeroes(req.offset, req.length, { mayUnmap: (req.flags & P.CMD_FLAG_NO_HOLE) === 0 });
          if (req.flags & P.CMD_FLAG_FUA) await disk.flush();
          break;
        case P.CMD_TRIM:
          checkWritable();
          checkRange(req);
          await disk.discard(req.offset, req.length);
          if (req.flags & P.CMD_FLAG_FUA) await disk.flush();
          break;
        case P.CMD_FLUSH:
          if (exp.writable) await disk.flush();
          break;
        case P.CMD_CACHE:
          // A hint; reads are not cached beyond the format's own metadata caches, so there is nothing to prefetch.
          checkRange(req);
          break;
        case P.CMD_BLOCK_STATUS:
          return await blockStatus(req);
        default:
          throw new RequestError(P.EINVAL, `unknown command ${req.type}`);
      }
      await (structured ? write(chunk(req, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, [])) : simpleReply(req, 0));
    } catch (e) {
      const errno = e instanceof RequestError ? e.errno : nbdErrno(e);
      await errorReply(req, errno, messageOf(e));
    }
  };

  try {
    for (;;) {
      const header = await readUnlessStopped(reader, 28, stop);
      if (!header) break;
      const f = new FieldReader(header);
      if (f.u32() !== P.REQUEST_MAGIC) throw new TransmissionEnd('a request without the request magic');
      const flags = f.u16();
      const type = f.u16();
      const cookie = f.take(8).slice();
      const offset = f.u64();
      const length = f.u32();
      const req: Request = { flags, type, cookie, offset, length };
      if (type === P.CMD_DISC) break;
      let payload: Uint8Array | undefined;
      if (type === P.CMD_WRITE && length > MAX_REQUEST) throw new TransmissionEnd(`a write of ${length} bytes (over the ${MAX_REQUEST}-byte limit)`);
      if (type === P.CMD_READ && length > MAX_REQUEST) {
        await errorReply(req, P.EOVERFLOW, `a read of ${length} bytes is over the ${MAX_REQUEST}-byte limit`);
        continue;
      }
      // Buffers a request will hold (its payload, or its read data) wait for room before the payload is read.
      const cost = type === P.CMD_WRITE || type === P.CMD_READ ? length : 0;
      while (running.size > 0 && inFlight + cost > limits.maxInFlightBytes && !failed) await Promise.race(running);
      if (failed) break;
      if (type === P.CMD_WRITE) payload = (await reader.read(length)).slice();
      inFlight += cost;
      // A reply that cannot be written (the client went away) is kept, not left as a rejection nobody awaits:
      // that would be an unhandled rejection, which ends the whole process of img serve.
      const job: Promise<void> = handle(req, payload)
        .catch((e: unknown) => {
          failed ??= { error: e };
        })
        .finally(() => {
          running.delete(job);
          inFlight -= cost;
        });
      running.add(job);
      if (running.size >= limits.queueDepth) await Promise.race(running);
      if (failed) break;
    }
  } finally {
    await Promise.allSettled(running);
  }
  if (failed) throw failed.error;
}

/** base:allocation's flags for an extent: data 0, data over a hole of its file NBD_STATE_ZERO, zeros and holes both bits (as qemu-nbd). */
function baseAllocation(e: NbdExtent): number {
  if (e.kind !== 'data') return P.STATE_HOLE | P.STATE_ZERO;
  return e.inHole ? P.STATE_ZERO : 0;
}
