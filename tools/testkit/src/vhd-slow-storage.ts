/**
 * A storage whose writes and reads each wait a seeded 0-2 ms, so that
 * concurrent I/O interleaves (the VHD concurrency tests). Wraps any
 * storage in place (the testkit does not depend on @img/block).
 */

/** What slowStorage needs of a storage. */
export interface SlowableStorage {
  write(position: number, data: Uint8Array): Promise<void>;
  readInto(position: number, target: Uint8Array): Promise<number>;
}

/**
 * Makes `storage` slow and returns it: each write waits before it lands;
 * each read waits before and after taking the bytes, so that a read can
 * return data that has changed since.
 */
export function slowStorage<T extends SlowableStorage>(storage: T, seed = 7): T {
  let x = seed;
  const pause = async () => {
    x = (x * 1103515245 + 12345) >>> 0;
    await new Promise((r) => setTimeout(r, x % 3));
  };
  const write = storage.write.bind(storage);
  const readInto = storage.readInto.bind(storage);
  storage.write = async (p, d) => {
    await pause();
    return write(p, d);
  };
  storage.readInto = async (p, t) => {
    await pause();
    const n = await readInto(p, t);
    await pause();
    return n;
  };
  return storage;
}
