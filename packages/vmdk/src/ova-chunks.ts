/**
 * A File of an OVF split into chunks (`ovf:chunkSize`, DSP0243 §5.2): the
 * archive holds members `href.000000000`, `href.000000001`, ... (a
 * nine-digit count), each `chunkSize` bytes but the last, which is shorter
 * or as long; joined in order they are the file. Here: the chunk names,
 * the rule on their sizes, the chunks found in a seekable archive, and a
 * read-only Storage that joins them where they lie in the tar.
 */
import { corrupt, readOnlyError, unsupported, type Storage } from '@img/block';
import type { TarMember } from './ova.js';

/** The name of chunk `index` of the file `base`. */
export function chunkName(base: string, index: number): string {
  return `${base}.${String(index).padStart(9, '0')}`;
}

/**
 * Checks the size of chunk `index` (named `name`): none is empty or longer
 * than `chunkSize`; with the file's total `size` known, each is exactly
 * what its place gives (answers whether it is the last), otherwise a chunk
 * shorter than `chunkSize` is the last.
 */
export function checkChunk(name: string, index: number, actual: number, chunkSize: number, size: number | undefined, file: string): boolean {
  const expected = size === undefined ? undefined : Math.min(chunkSize, size - index * chunkSize);
  if (expected !== undefined && expected <= 0) throw corrupt('ova', file, `the chunk "${name}" lies past the ${size} bytes the OVF gives its file`, { field: 'chunkSize', actual: index });
  if (actual === 0 || actual > chunkSize || (expected !== undefined && actual !== expected)) {
    throw corrupt('ova', file, `the chunk "${name}" holds ${actual} bytes, but ovf:chunkSize="${chunkSize}"${size === undefined ? '' : ` and ovf:size="${size}"`} give it ${expected ?? `1 to ${chunkSize}`}`, {
      field: 'chunkSize',
      expected: expected ?? chunkSize,
      actual,
    });
  }
  return size === undefined ? actual < chunkSize : (index + 1) * chunkSize >= size;
}

/**
 * The chunks of the file named by `bases` (its href's spellings) in a
 * seekable archive's member table, in order; undefined when there is no
 * chunk 0. A missing chunk, or one of the wrong size, is ERR_IMG_CORRUPT.
 */
export function findChunks(members: readonly TarMember[], bases: readonly string[], chunkSize: number, size: number | undefined, file: string): TarMember[] | undefined {
  const byName = new Map(members.map((m) => [m.name, m] as const));
  const base = bases.find((b) => byName.has(chunkName(b, 0)));
  if (base === undefined) return undefined;
  const out: TarMember[] = [];
  for (let i = 0; i < members.length; i++) {
    const m = byName.get(chunkName(base, i));
    if (!m) {
      if (size === undefined && out.length > 0 && out[out.length - 1]!.size === chunkSize) return out; // the file is whole chunks
      throw corrupt('ova', file, `the chunk "${chunkName(base, i)}" of "${base}" is not in the OVA`, { field: 'chunkSize', actual: chunkName(base, i) });
    }
    out.push(m);
    if (checkChunk(m.name, i, m.size, chunkSize, size, file)) return out;
  }
  throw unsupported('ova', file, `"${base}" has more chunks than the OVA has members`, { field: 'chunkSize' });
}

/** A read-only Storage joining byte ranges of `base` (chunks where they lie in a tar) into one file. */
export class JoinedStorage implements Storage {
  readonly name: string;
  readonly readOnly = true;
  readonly #base: Storage;
  readonly #ranges: readonly { offset: number; length: number }[];
  readonly #starts: number[];
  readonly #length: number;
  readonly #ownsBase: boolean;

  /** Joins `ranges` of `base` under `name`; closing it closes `base` when `ownsBase`. */
  constructor(base: Storage, ranges: readonly { offset: number; length: number }[], name: string, ownsBase = false) {
    this.#base = base;
    this.#ranges = ranges;
    this.name = name;
    this.#ownsBase = ownsBase;
    let at = 0;
    this.#starts = ranges.map((r) => {
      const start = at;
      at += r.length;
      return start;
    });
    this.#length = at;
  }

  async size(): Promise<number> {
    return this.#length;
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(Math.max(0, Math.min(length, this.#length - position)));
    const n = await this.readInto(position, out);
    return n === out.length ? out : out.subarray(0, n);
  }

  /** Reads into `target` across the ranges; returns the bytes read (short only at the end). */
  async readInto(position: number, target: Uint8Array): Promise<number> {
    const total = Math.max(0, Math.min(target.length, this.#length - position));
    let done = 0;
    let i = this.#rangeAt(position);
    while (done < total) {
      const r = this.#ranges[i]!;
      const inRange = position + done - this.#starts[i]!;
      const n = Math.min(r.length - inRange, total - done);
      const got = await this.#base.readInto(r.offset + inRange, target.subarray(done, done + n));
      done += got;
      if (got < n) break;
      i++;
    }
    return done;
  }

  #rangeAt(position: number): number {
    let lo = 0;
    let hi = this.#starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= position) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  async write(): Promise<void> {
    throw readOnlyError('ova', this.name);
  }

  async truncate(): Promise<void> {
    throw readOnlyError('ova', this.name);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#ownsBase) await this.#base.close();
  }
}
