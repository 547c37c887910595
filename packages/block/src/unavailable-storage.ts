/**
 * A stand-in for a file an image names that is not open (an external data
 * file left out, or missing where only metadata is read): the image's
 * metadata works, and the first access to the file's bytes fails clearly.
 */
import type { Storage } from './storage.js';

/**
 * A storage named `name` whose size, reads, writes and truncation all fail
 * with `error()`; flush and close do nothing.
 *
 * @example
 * ```ts
 * const stand = unavailableStorage('data.raw', () => new Error('data.raw was not opened'));
 * await stand.read(0, 512); // rejects with that error
 * ```
 */
export function unavailableStorage(name: string, error: () => Error): Storage {
  const fail = async (): Promise<never> => {
    throw error();
  };
  return { name, readOnly: true, size: fail, read: fail, readInto: fail, write: fail, truncate: fail, flush: async () => undefined, close: async () => undefined };
}
