/**
 * Streaming in and out: an image as a byte stream of known length (for a
 * pipe or an HTTP upload), and an image arriving as a byte stream.
 */
import { abortError, unknownFormatError, unsupported, alignUp, findZeroRuns, ratePace, type CopyProgress, type Pace, type Disk, type FormatRegistryLike, type ImageStream, type StreamSource } from '@img/block';
import { defaultRegistry } from './formats.js';

export interface ToStreamOptions {
  registry?: FormatRegistryLike;
  /** The output format's stream options: typed keys or `-o` names (FormatDriver.stream). */
  createOptions?: Record<string, unknown>;
}

/**
 * The image of `format` holding `disk`'s content, as a byte stream whose
 * length is known before the first byte.
 *
 * @example
 * ```ts
 * const s = await toStream(disk, 'qcow2');
 * res.setHeader('Content-Length', s.length);
 * await pipeImageStream(s, res);
 * ```
 */
export async function toStream(disk: Disk, format: string, options: ToStreamOptions = {}): Promise<ImageStream> {
  const registry = options.registry ?? defaultRegistry();
  const driver = registry.get(format);
  if (!driver) throw unknownFormatError(format);
  if (!driver.stream) throw unsupported(driver.name, undefined, 'this format cannot be written as a stream; write a file instead');
  return driver.stream(disk, options.createOptions ?? {});
}

/** Decodes an image of `format` arriving as a byte stream. */
export async function fromStream(input: AsyncIterable<Uint8Array>, format: string, options: { registry?: FormatRegistryLike } = {}): Promise<StreamSource> {
  const registry = options.registry ?? defaultRegistry();
  const driver = registry.get(format);
  if (!driver) throw unknownFormatError(format);
  if (!driver.readStream) {
    throw unsupported(driver.name, undefined, 'this format cannot be read from a stream; save it to a file first');
  }
  return driver.readStream(input);
}

/** Minimal shape of a Node Writable (no import of node:stream in core code). */
export interface NodeWritableLike {
  write(chunk: Uint8Array): boolean;
  once(event: 'drain' | 'error', listener: (...args: unknown[]) => void): unknown;
  off?(event: 'drain' | 'error', listener: (...args: unknown[]) => void): unknown;
}

/** Options of {@link pipeImageStream}. */
export interface PipeImageStreamOptions {
  /** Stops before the next chunk; the call then rejects with ERR_IMG_ABORTED (what was written stays written). */
  signal?: AbortSignal;
  /** Write no more than this many bytes of the stream per second (qemu-img convert -r). Default (or 0): no limit. */
  rateLimit?: number;
}

/** Writes an image stream to a Node Writable (respecting backpressure) or a Web WritableStream. Returns the bytes written. */
export async function pipeImageStream(stream: ImageStream, target: NodeWritableLike | WritableStream<Uint8Array>, options: PipeImageStreamOptions = {}): Promise<number> {
  const { signal } = options;
  const pace = ratePace(options.rateLimit, signal);
  // A limited pipe writes pieces of at most one burst, each when it is due.
  const chunks = pace ? pacedChunks(stream.chunks, pace) : stream.chunks;
  let written = 0;
  if ('getWriter' in target) {
    const writer = target.getWriter();
    try {
      for await (const chunk of chunks) {
        if (signal?.aborted) throw abortError(signal);
        await writer.ready;
        await writer.write(chunk);
        written += chunk.length;
      }
      await writer.close();
    } finally {
      writer.releaseLock();
    }
    return written;
  }
  // A write can fail at any chunk (ENOSPC), not only while waiting for 'drain': the error is listened for from the
  // start, so it becomes this call's rejection instead of an 'error' event nobody handles.
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const onError = (e: unknown) => {
    failure ??= { error: e };
    wake?.();
  };
  target.once('error', onError);
  try {
    for await (const chunk of chunks) {
      if (signal?.aborted) throw abortError(signal);
      if (failure) throw failure.error;
      written += chunk.length;
      if (!target.write(chunk)) {
        // An abort ends the wait too: a reader that has stopped reading (`img convert ... - | less`, left open) must not
        // keep a Ctrl-C from ending the command.
        const onAbort = () => wake?.();
        signal?.addEventListener('abort', onAbort, { once: true });
        try {
          await new Promise<void>((resolve) => {
            wake = resolve;
            target.once('drain', () => resolve());
          });
        } finally {
          signal?.removeEventListener('abort', onAbort);
          wake = undefined;
        }
        if (signal?.aborted) throw abortError(signal);
      }
    }
    if (failure) throw failure.error;
  } finally {
    target.off?.('error', onError);
  }
  return written;
}

export interface StreamCopyOptions {
  /** Zero runs at least this long inside data are not written (default 4096; 0 writes everything). */
  minZeroRun?: number;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
  /** Move no more than this many bytes of the stream's data per second (qemu-img convert -r). Default (or 0): no limit. */
  rateLimit?: number;
}

/**
 * Writes a decoded stream into `dst` (a fresh image). When the stream's
 * size is not known up front (raw), `dst` grows as data arrives and is
 * cut to the exact size at the end.
 */
export async function copyStreamToDisk(source: StreamSource, dst: Disk, options: StreamCopyOptions = {}): Promise<CopyProgress> {
  const minZeroRun = options.minZeroRun ?? 4096;
  const pace = ratePace(options.rateLimit, options.signal);
  const pieces = pace ? pacedPieces(source.pieces, pace) : source.pieces;
  const progress: CopyProgress = { bytesDone: 0, bytesTotal: Math.max(0, source.size), bytesRead: 0, bytesWritten: 0 };
  const grow = async (end: number) => {
    if (end <= dst.size) return;
    if (!dst.resize) throw unsupported(dst.format, undefined, 'cannot grow to take a stream of unknown size');
    await dst.resize(Math.max(alignUp(end, 512), Math.min(dst.size * 2, dst.size + (1 << 30)), 64 << 20));
  };
  for await (const { offset, data } of pieces) {
    if (options.signal?.aborted) throw abortError(options.signal, `copy of an image stream into ${dst.storage.name}`);
    await grow(offset + data.length);
    progress.bytesRead += data.length;
    if (minZeroRun === 0) {
      await dst.write(offset, data);
      progress.bytesWritten += data.length;
    } else {
      for (const run of findZeroRuns(data, minZeroRun, 512, offset)) {
        if (run.zero) continue;
        await dst.write(offset + run.start, data.subarray(run.start, run.end));
        progress.bytesWritten += run.end - run.start;
      }
    }
    progress.bytesDone = offset + data.length;
    options.onProgress?.({ ...progress });
  }
  if (source.size >= 0 && source.size !== dst.size) {
    if (!dst.resize) throw unsupported(dst.format, undefined, "cannot set the size of the stream's image");
    await dst.resize(source.size, { shrink: true });
  }
  // A stream that ended after an abort (a reader woken by it) is not a whole image.
  if (options.signal?.aborted) throw abortError(options.signal, `copy of an image stream into ${dst.storage.name}`);
  progress.bytesTotal = dst.size;
  progress.bytesDone = dst.size;
  return progress;
}

/**
 * `source`'s items until `signal` aborts: then the wait for the next one
 * ends at once with ERR_IMG_ABORTED (`what` names the work), whether or not
 * the source ever gives another (a writer into stdin that has stopped
 * writing, `ssh host cat disk.img | img convert ... -`, must not keep a
 * Ctrl-C from ending the command). The read left pending is abandoned.
 */
export async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal | undefined, what: string): AsyncGenerator<T> {
  if (!signal) {
    yield* source;
    return;
  }
  const it = source[Symbol.asyncIterator]();
  let onAbort = (): void => undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(abortError(signal, what));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  // Never left unhandled: it is only raced below.
  aborted.catch(() => undefined);
  let finished = false;
  try {
    for (;;) {
      const next = await Promise.race([it.next(), aborted]);
      if (next.done) {
        finished = true;
        return;
      }
      yield next.value;
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
    // Not awaited: after an abort the source may be waiting for data that never comes.
    if (!finished) void Promise.resolve(it.return?.()).catch(() => undefined);
  }
}

/** A stream's pieces cut to at most one burst of `pace` each (their offsets kept), each handed on when it is due. */
async function* pacedPieces(pieces: AsyncIterable<{ offset: number; data: Uint8Array }>, pace: Pace): AsyncGenerator<{ offset: number; data: Uint8Array }> {
  for await (const { offset, data } of pieces) {
    for (let at = 0; at < data.length; at += pace.burst) {
      const part = data.subarray(at, Math.min(data.length, at + pace.burst));
      await pace(part.length);
      yield { offset: offset + at, data: part };
    }
  }
}

/** An image stream's chunks, paced as {@link pacedPieces} paces a stream's pieces. */
async function* pacedChunks(chunks: AsyncIterable<Uint8Array>, pace: Pace): AsyncGenerator<Uint8Array> {
  async function* asPieces() {
    for await (const data of chunks) yield { offset: 0, data };
  }
  for await (const { data } of pacedPieces(asPieces(), pace)) yield data;
}
