/**
 * Many compressed blocks (VMDK grains, qcow2 clusters) inflated at once by
 * the native helper (native/inflate.c), on libuv's thread pool and straight
 * into their places: no zlib state or output buffer per block, and no
 * thread hand-off per block as node:zlib's asynchronous calls pay. Formats
 * keep their own error rules: this answers, per block, the bytes produced
 * or why there are none.
 */
import { availableParallelism } from 'node:os';
import { nativeExports, nativeStatus } from './native-loader.js';

export { INFLATE_OK, INFLATE_BAD, INFLATE_TOO_LARGE, INFLATE_TRUNCATED } from '../web-compression.js';

/** One block: a stream at the start of `input` (bytes after its end are ignored), inflated into `out` (at most `out.length` bytes). */
export interface InflateBlock {
  input: Uint8Array;
  out: Uint8Array;
}

/** What became of one block. */
export interface InflateResult {
  /** INFLATE_OK, INFLATE_BAD, INFLATE_TOO_LARGE or INFLATE_TRUNCATED (from `@img/block`). */
  status: number;
  /** The bytes written to the block's `out`, whatever the status. */
  bytes: number;
  /** zlib's reason where the status is INFLATE_BAD ("invalid block type"). */
  message?: string;
}

type InflateInto = (input: Uint8Array, jobs: Float64Array, output: Uint8Array, windowBits: number) => Promise<Float64Array & { messages?: (string | undefined)[] }>;

let inflateInto: InflateInto | null | undefined;

function native(): InflateInto | undefined {
  // nativeStatus() decides (the helper, its zlib, IMG_NATIVE_INFLATE), so `img doctor` says what runs.
  inflateInto ??= nativeStatus().features.inflate ? (nativeExports()!.inflateInto as InflateInto) : null;
  return inflateInto ?? undefined;
}

/** Whether {@link inflateBlocks} can run here (a native helper with zlib is loaded). */
export function nativeInflateAvailable(): boolean {
  return native() !== undefined;
}

/**
 * Inflates `blocks`, each one stream in `windowBits`' framing (15: zlib,
 * RFC 1950; -15 to -8: raw deflate, RFC 1951), into its `out`, split over
 * the cores in at most `parts` batches (default: one per core). Answers
 * one {@link InflateResult} per block, in order (the rest of each `out`
 * is left as it was). Answers undefined, having done nothing, where the
 * native helper is missing (or IMG_NATIVE_INFLATE=0 is set) or the
 * blocks' inputs (or outputs) do not all lie in one ArrayBuffer; the
 * caller then inflates them itself. Leave the inputs and outputs alone
 * until the promise settles.
 */
export function inflateBlocks(blocks: readonly InflateBlock[], windowBits: number, parts = availableParallelism()): Promise<InflateResult[]> | undefined {
  const fn = native();
  if (!fn || blocks.length === 0) return undefined;
  const inBuf = blocks[0]!.input.buffer;
  const outBuf = blocks[0]!.out.buffer;
  for (const b of blocks) if (b.input.buffer !== inBuf || b.out.buffer !== outBuf) return undefined;
  const input = new Uint8Array(inBuf);
  const output = new Uint8Array(outBuf);
  const n = blocks.length;
  const batches = Math.max(1, Math.min(Math.floor(parts), n));
  const calls: ReturnType<InflateInto>[] = [];
  for (let k = 0; k < batches; k++) {
    const from = Math.floor((k * n) / batches);
    const to = Math.floor(((k + 1) * n) / batches);
    const jobs = new Float64Array(4 * (to - from));
    for (let i = from; i < to; i++) {
      const b = blocks[i]!;
      jobs.set([b.input.byteOffset, b.input.length, b.out.byteOffset, b.out.length], 4 * (i - from));
    }
    calls.push(fn(input, jobs, output, windowBits));
  }
  return Promise.all(calls).then((rs) =>
    rs.flatMap((r) => {
      const out: InflateResult[] = [];
      for (let i = 0; i < r.length / 2; i++) {
        const message = r.messages?.[i];
        out.push(message === undefined ? { status: r[2 * i]!, bytes: r[2 * i + 1]! } : { status: r[2 * i]!, bytes: r[2 * i + 1]!, message });
      }
      return out;
    }),
  );
}
