/** Small helpers shared by format implementations. */
import { invalidArg } from './errors.js';
import { byteArrayProblem, byteNumberProblem } from './byte-args.js';

/**
 * Throws ERR_IMG_INVALID_ARG unless `[offset, offset+length)` lies inside a
 * disk of `size` bytes (offset and length non-negative safe integers). The
 * message says what is wrong: a value that is not a whole number of bytes
 * ("offset 1.5 is not a whole number of bytes", "length is a string
 * ("10"), not a number"), or a range outside the disk.
 */
export function checkDiskRange(format: string, size: number, offset: number, length: number, file?: string): void {
  if (Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= size) return;
  const name = file ? `${file}: ` : '';
  const offsetProblem = byteNumberProblem('offset', offset);
  const problem = offsetProblem ?? byteNumberProblem('length', length);
  // Either way the message names the range asked for and the disk's size.
  const range = `offset ${String(offset)}, length ${String(length)}, on a disk of ${size} bytes`;
  throw invalidArg(format, name + (problem ? `${problem} (${range})` : `the range at offset ${String(offset)} of length ${String(length)} is outside the disk of ${size} bytes`), {
    ...(file ? { file } : {}),
    field: problem && !offsetProblem ? 'length' : 'offset',
    offset: typeof offset === 'number' ? offset : undefined,
    actual: { offset, length },
    expected: { size },
  });
}

/**
 * Throws ERR_IMG_INVALID_ARG unless `data` is a Uint8Array (a Buffer is
 * one): what a Disk's write (`name` "data") or readInto ("target") was
 * given. "qcow2: a.qcow2: data is an Array, not a Uint8Array".
 */
export function checkDiskData(format: string, data: unknown, name: 'data' | 'target', file?: string): void {
  const problem = byteArrayProblem(name, data);
  if (problem) throw invalidArg(format, (file ? `${file}: ` : '') + problem, { ...(file ? { file } : {}), field: name });
}

/** Rounds `value` up to a multiple of `align`. */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/** Rounds `value` down to a multiple of `align`. */
export function alignDown(value: number, align: number): number {
  return Math.floor(value / align) * align;
}

/**
 * A tiny async mutex keyed by number (cluster or block index), so that
 * concurrent writers touching the same metadata take turns.
 */
export class KeyedLock {
  #tails = new Map<number, Promise<void>>();

  async run<T>(key: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.#tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

/** A single async mutex. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
