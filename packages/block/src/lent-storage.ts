/**
 * A storage lent to code that closes what it is given: the functions that
 * open an image only to check or edit it (checkQcow2, amendQcow2, the
 * bitmap edits, checkVmdk) leave the caller's storage open, as every
 * function that does not return a Disk does.
 */
import type { Storage } from './storage.js';

/**
 * `storage` with a close() that does nothing: everything else passes
 * through to it (methods bound to it, so private fields keep working).
 * The caller keeps the storage and closes it when done.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('disk.qcow2');
 * const disk = await openQcow2(lentStorage(storage));
 * await disk.close(); // storage stays open
 * await storage.close();
 * ```
 */
export function lentStorage(storage: Storage): Storage {
  // Each method bound once: a check or an edit calls readInto and write thousands of times through the lent storage.
  const bound = new Map<PropertyKey, unknown>([['close', async () => undefined]]);
  return new Proxy(storage, {
    get(target, key) {
      if (bound.has(key)) return bound.get(key);
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== 'function') return value;
      const method = (value as (...args: unknown[]) => unknown).bind(target);
      bound.set(key, method);
      return method;
    },
  });
}
