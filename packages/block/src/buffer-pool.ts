/**
 * Large I/O buffers (a copy's chunks and read batches, a VMDK reader's
 * spans) kept between the copies and reads that use them, process-wide.
 *
 * A copy through JavaScript allocates tens of MiB of such buffers. V8
 * counts that memory as external, and a quick growth of it starts a
 * garbage collection: a scavenge and a mark-compact of the whole heap,
 * 5-10 ms on the main thread, in every conversion a long-running process
 * makes (measured: a 64 MiB streamOptimized VMDK to raw, in one process,
 * ran one such collection per conversion; `--trace-gc` says "external
 * memory pressure"). Buffers handed back here are handed out again to the
 * next taker of the same size instead, so repeated copies allocate
 * nothing new. What is kept is bounded (KEEP_BYTES) and let go once
 * nothing has been taken or given for IDLE_MS, so an idle process does not
 * hold it.
 *
 * A buffer's old contents are not cleared: takers overwrite what they use
 * (as with the buffers a copy already reused between its own chunks).
 */

/** At most this many bytes wait here for a taker. */
const KEEP_BYTES = 128 * 1024 * 1024;
/** What waits is dropped this long after the last take or give. */
const IDLE_MS = 2000;

const free = new Map<number, Uint8Array[]>();
/** The buffers waiting in `free`: one handed back twice is kept once. */
const waiting = new WeakSet<Uint8Array>();
let kept = 0;
let idle: ReturnType<typeof setTimeout> | undefined;

function forgetLater(): void {
  if (idle !== undefined) clearTimeout(idle);
  idle = setTimeout(() => {
    for (const list of free.values()) for (const b of list) waiting.delete(b);
    free.clear();
    kept = 0;
    idle = undefined;
  }, IDLE_MS);
  // In Node, the timer does not keep the process alive.
  (idle as { unref?: () => void }).unref?.();
}

/** A buffer of exactly `bytes` bytes: one handed back earlier, or a new one. Its contents are whatever they were. */
export function takeIoBuffer(bytes: number): Uint8Array {
  const list = free.get(bytes);
  const b = list?.pop();
  if (!b) return new Uint8Array(bytes);
  kept -= bytes;
  waiting.delete(b);
  if (list!.length === 0) free.delete(bytes);
  forgetLater();
  return b;
}

/**
 * Hands `buffer` back for the next {@link takeIoBuffer} of its size. Only
 * whole buffers (not views into a larger one) are kept, 128 MiB of them
 * at most, for 2 seconds after the last take or give. The caller must not
 * use it afterwards.
 */
export function giveIoBuffer(buffer: Uint8Array): void {
  if (buffer.byteOffset !== 0 || buffer.byteLength !== buffer.buffer.byteLength || buffer.length === 0) return;
  if (waiting.has(buffer) || kept + buffer.length > KEEP_BYTES) return;
  const list = free.get(buffer.length);
  if (list) list.push(buffer);
  else free.set(buffer.length, [buffer]);
  waiting.add(buffer);
  kept += buffer.length;
  forgetLater();
}
