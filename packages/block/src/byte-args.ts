/**
 * Checks of the byte offsets, lengths and buffers callers hand to Storage
 * and Disk methods. The messages say what is wrong with the value itself
 * (not a number, not a whole number, negative, not a Uint8Array) rather
 * than only that a range is wrong, and a bad value never reaches a system
 * call: node:fs writes at the file's current position when it is given a
 * position it does not take.
 */
import { invalidUsage, type ImageError } from './errors.js';

/**
 * What is wrong with `value` as a byte offset or count called `name`, as
 * a phrase ("offset 1.5 is not a whole number of bytes", "length is a
 * string ("10"), not a number"), or undefined when it is a whole number
 * from 0 to 2^53.
 */
export function byteNumberProblem(name: string, value: unknown): string | undefined {
  if (typeof value !== 'number') return `${name} is ${showKind(value)}, not a number`;
  if (!Number.isInteger(value)) return `${name} ${value} is not a whole number of bytes`;
  if (value < 0) return `${name} ${value} is negative`;
  if (value > Number.MAX_SAFE_INTEGER) return `${name} ${value} is past 2^53`;
  return undefined;
}

/** What is wrong with `value` as the bytes called `name`, or undefined when it is a Uint8Array (see {@link isByteArray}). */
export function byteArrayProblem(name: string, value: unknown): string | undefined {
  return isByteArray(value) ? undefined : `${name} is ${showKind(value)}, not a Uint8Array`;
}

/** "a string ("10")", "an Array", "null", "a DataView". */
function showKind(value: unknown): string {
  const kind = describeValue(value);
  if (typeof value === 'string') return `${kind} (${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value)})`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return `${kind} (${String(value)})`;
  return kind;
}

/** What kind of value this is, with its article: "a string", "an Array", "null", "a DataView". */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value !== 'object' && typeof value !== 'function') return article(typeof value);
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name ? article(name) : 'an object';
}

function article(noun: string): string {
  // "a Uint8Array": a leading U is said "you" in the names this meets.
  return /^[aeioAEIO]/.test(noun) ? `an ${noun}` : `a ${noun}`;
}

/**
 * True for a view of bytes: a Uint8Array (a Buffer is one) from any realm,
 * or another one-byte typed array. Other typed arrays, DataViews and
 * arrays of numbers are not: their `length` is not a count of bytes.
 */
export function isByteArray(value: unknown): value is Uint8Array {
  return ArrayBuffer.isView(value) && (value as Partial<Uint8Array>).BYTES_PER_ELEMENT === 1 && typeof (value as Partial<Uint8Array>).subarray === 'function';
}

/**
 * Throws ERR_IMG_INVALID_ARG unless `value` is a whole number of bytes
 * from 0 to 2^53. `storage` is the storage's name, `method` what was
 * called ("FileStorage.truncate") and `name` the argument ("size"): the
 * message names all three and the bad value.
 */
export function checkStorageNumber(storage: string, method: string, name: string, value: unknown): void {
  const problem = byteNumberProblem(name, value);
  if (problem) throw badStorageArg(storage, method, name, value, problem);
}

/**
 * Throws ERR_IMG_INVALID_ARG unless `position` is a byte position and
 * `lengthOrData` a byte count (`field` "length": a read) or bytes (a write
 * or a read into a buffer), and the range they make ends by 2^53. The
 * message names the storage, the method and the bad value, and
 * `data.field` says which argument it was.
 */
export function checkStorageArgs(storage: string, method: string, position: unknown, lengthOrData: unknown, field: 'length' | 'data' | 'target' = 'length'): void {
  checkStorageNumber(storage, method, 'position', position);
  let length: number;
  if (field === 'length') {
    checkStorageNumber(storage, method, 'length', lengthOrData);
    length = lengthOrData as number;
  } else {
    const problem = byteArrayProblem(field, lengthOrData);
    if (problem) throw badStorageArg(storage, method, field, lengthOrData, problem);
    length = (lengthOrData as Uint8Array).length;
  }
  checkRangeEnd(storage, method, position as number, length);
}

/**
 * Throws ERR_IMG_INVALID_ARG unless `chunks` is an array of Uint8Arrays
 * (a writev) and `position` a byte position, naming the storage, the
 * method and the first bad value. Answers the total byte count.
 */
export function checkStorageChunks(storage: string, method: string, position: unknown, chunks: unknown): number {
  if (!Array.isArray(chunks)) throw badStorageArg(storage, method, 'chunks', chunks, `chunks is ${describeValue(chunks)}, not an array of Uint8Arrays`);
  let total = 0;
  chunks.forEach((c: unknown, i) => {
    const problem = byteArrayProblem(`chunk ${i}`, c);
    if (problem) throw badStorageArg(storage, method, 'chunks', c, problem);
    total += (c as Uint8Array).length;
  });
  checkStorageNumber(storage, method, 'position', position);
  checkRangeEnd(storage, method, position as number, total);
  return total;
}

/**
 * A buffer for a read of `length` bytes (checked by {@link checkStorageArgs}),
 * or ERR_IMG_INVALID_ARG naming the storage where the platform cannot
 * allocate one that large (its RangeError as `cause`).
 */
export function allocateRead(storage: string, method: string, length: number): Uint8Array {
  try {
    return new Uint8Array(length);
  } catch (e) {
    throw invalidUsage(`${storage}: ${method}: length ${length} is more than one buffer can hold here`, { file: storage, field: 'length', actual: length }, e);
  }
}

function checkRangeEnd(storage: string, method: string, position: number, length: number): void {
  if (position + length > Number.MAX_SAFE_INTEGER) throw badStorageArg(storage, method, 'position', position, `position ${position} with ${length} bytes ends past 2^53`);
}

function badStorageArg(storage: string, method: string, field: string, value: unknown, problem: string): ImageError {
  return invalidUsage(`${storage}: ${method}: ${problem}`, { file: storage, field, actual: typeof value === 'number' ? value : describeValue(value) });
}
