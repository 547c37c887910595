/** Counting the writes that reach a storage, for tests that bound how many a repair makes. */

/** A storage whose write method can be wrapped (FileStorage, MemoryStorage). */
export interface WritableStorage {
  write(offset: number, data: Uint8Array): Promise<void>;
}

/** Wraps `storage.write` so that every later write is counted; returns the count so far. */
export function countWrites(storage: WritableStorage): () => number {
  let writes = 0;
  const write = storage.write.bind(storage);
  storage.write = async (offset: number, data: Uint8Array) => {
    writes++;
    return write(offset, data);
  };
  return () => writes;
}
