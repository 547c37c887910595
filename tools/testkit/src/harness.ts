/** Helpers the formats' stream and crash tests share. */

/** Cuts `bytes` into chunks of pseudo-random sizes (1 byte to 300 KiB), as a network would. */
export async function* chunked(bytes: Uint8Array, seed = 1): AsyncGenerator<Uint8Array> {
  let x = seed;
  for (let pos = 0; pos < bytes.length;) {
    x = (x * 1103515245 + 12345) >>> 0;
    const n = Math.min(bytes.length - pos, x % 7 === 0 ? 1 + (x % 700) : 1 + (x % 300_000));
    yield bytes.slice(pos, pos + n);
    pos += n;
  }
}

/** All chunks of a stream in one array. */
export async function collectBytes(chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const c of chunks) {
    parts.push(c.slice());
    total += c.length;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One step of a crash-test workload as the flat model saw it. */
export interface CrashModelState {
  size: number;
  bytes: Uint8Array;
  /** How many storage operations had been issued when the step completed. */
  opEnd: number;
  /** The step was a flush: everything before it is durable. */
  flushed: boolean;
}

/**
 * The model states a crash after `count` storage operations may show:
 * from the last completed flush to the step in flight.
 */
export function crashWindow<S extends CrashModelState>(states: S[], count: number): S[] {
  let from = 0;
  for (let i = 0; i < states.length; i++) if (states[i]!.flushed && states[i]!.opEnd <= count) from = i;
  let to = states.length - 1;
  for (let i = from; i < states.length; i++) {
    if (states[i]!.opEnd >= count) {
      to = i;
      break;
    }
  }
  return states.slice(from, to + 1);
}

/** A storage operation as FaultStorage records it. */
export type RecordedOp = { kind: 'write'; position: number; data: Uint8Array } | { kind: 'truncate'; size: number } | { kind: 'flush' };

/**
 * The file a process kill leaves once the first `count` recorded
 * operations were issued: every write and truncate issued before the kill
 * reached the file (the page cache outlives the process), none after it.
 * (FaultStorage's crash modes model a power loss instead.)
 */
export function killedBytes(initial: Uint8Array, ops: readonly RecordedOp[], count: number): Uint8Array {
  let size = initial.length;
  let buf = new Uint8Array(Math.max(16, size));
  buf.set(initial);
  const reserve = (end: number) => {
    if (end <= buf.length) return;
    const next = new Uint8Array(Math.max(end, buf.length * 2));
    next.set(buf.subarray(0, size));
    buf = next;
  };
  for (const op of ops.slice(0, count)) {
    if (op.kind === 'write') {
      reserve(op.position + op.data.length);
      if (op.position > size) buf.fill(0, size, op.position);
      buf.set(op.data, op.position);
      size = Math.max(size, op.position + op.data.length);
    } else if (op.kind === 'truncate') {
      reserve(op.size);
      if (op.size > size) buf.fill(0, size, op.size);
      size = op.size;
    }
  }
  return buf.slice(0, size);
}
