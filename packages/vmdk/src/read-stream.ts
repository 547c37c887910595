/**
 * readVmdkStream: the guest data of a streamOptimized VMDK arriving as a
 * byte stream (a pipe, an HTTP body, an OVA member), read front to back
 * with no seek. The markers are walked by stream-walk.ts (the header gives
 * the size; metadata markers are skipped; the stream ends only once it
 * holds what its header promises, stream-end.ts; a grain seen twice or
 * beyond the disk is ERR_IMG_CORRUPT); here each grain marker's zlib
 * stream is inflated into a piece, many grains at once. Grains usually
 * come in guest order (VMware's exporters, streamVmdk); an image written
 * through createVmdk may hold a partly written grain after later ones.
 * The marker's lba is what places a grain here (the tables come after the
 * grains in VMware's layout); the file reader goes by the grain table and
 * ignores the lba, as qemu-img does.
 */
import { ByteStreamReader, type OpenOptions, type StreamSource } from '@img/block';
import { inflateGrain, inflateGrainsInto, type GrainJob } from './compression.js';
import { StreamWalk } from './stream-walk.js';

const FORMAT = 'vmdk';
const NAME = 'stream';

/**
 * Decodes a streamOptimized VMDK stream into guest pieces.
 *
 * @example
 * ```ts
 * const source = await readVmdkStream(process.stdin);
 * for await (const { offset, data } of source.pieces) await disk.write(offset, data);
 * ```
 */
export async function readVmdkStream(input: AsyncIterable<Uint8Array>, _options: OpenOptions = {}): Promise<StreamSource> {
  return decodeVmdkStream(input, NAME);
}

/** readVmdkStream with the stream named `name` in errors (an OVA's member). */
export async function decodeVmdkStream(input: AsyncIterable<Uint8Array>, name: string): Promise<StreamSource> {
  const r = new ByteStreamReader(input, FORMAT, name);
  let walk: StreamWalk;
  try {
    walk = await StreamWalk.open(r, name);
  } catch (e) {
    await r.cancel();
    throw e;
  }
  return { size: walk.size, pieces: pieces(r, walk, name) };
}

/** Guest bytes of grains inflated together (a batch of up to this many bytes of whole grains, at least one grain). */
const BATCH_BYTES = 1 << 20;

async function* pieces(r: ByteStreamReader, walk: StreamWalk, name: string): AsyncGenerator<{ offset: number; data: Uint8Array }> {
  const { grainBytes, limit } = walk;
  // Grains are gathered into batches and inflated together (on every core where Node's native
  // helper loaded): compressed bytes packed into one reused buffer, guest bytes into a new one per
  // batch (the pieces yielded are views of it).
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / grainBytes));
  const inBuf = new Uint8Array(perBatch * limit);
  let inUsed = 0;
  let outBuf = new Uint8Array(0); // a new one as each batch starts
  let batch: (GrainJob & { offset: number; length: number })[] = [];

  /** Inflates the batch and yields its pieces in stream order; on a bad grain, yields the grains before it, then throws. */
  async function* flush(): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    if (batch.length === 0) return;
    const jobs = batch;
    batch = [];
    inUsed = 0;
    let whole = true;
    try {
      await inflateGrainsInto(jobs, grainBytes);
    } catch {
      whole = false;
    }
    for (const j of jobs) {
      if (!whole) {
        const grain = await inflateGrain(j.input, grainBytes, j.ctx);
        j.out.set(grain.subarray(0, j.out.length));
        j.out.fill(0, Math.min(grain.length, j.out.length));
      }
      yield { offset: j.offset, data: j.out.subarray(0, j.length) };
    }
  }

  try {
    for (;;) {
      let job: (GrainJob & { offset: number; length: number }) | undefined;
      try {
        const g = await walk.next();
        if (!g) break;
        const data = inBuf.subarray(inUsed, inUsed + g.compressed);
        await walk.take(data);
        inUsed += g.compressed;
        if (batch.length === 0) outBuf = new Uint8Array(perBatch * grainBytes);
        const slot = batch.length * grainBytes;
        job = { input: data, out: outBuf.subarray(slot, slot + grainBytes), ctx: { file: name, hostOffset: g.at }, offset: g.offset, length: g.length };
      } catch (e) {
        // What came before the bad marker is yielded first, as grain by grain it would have been.
        yield* flush();
        throw e;
      }
      batch.push(job);
      if (batch.length === perBatch) yield* flush();
    }
    yield* flush();
  } finally {
    await r.cancel();
  }
}
