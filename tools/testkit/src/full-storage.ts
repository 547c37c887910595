/**
 * A storage on a device that fills up at `limit` bytes (the ENOSPC tests):
 * a write reaching past the limit lands up to it, as a short write on a
 * file system that fills up does, then fails with ENOSPC; growing the file
 * by truncate takes no space (it is sparse, as on ext4 and tmpfs). The
 * testkit does not depend on @img/block: it has the shape of block's
 * Storage, checked where it is used.
 */

/** What fullAt needs of the storage it wraps. */
export interface FillableStorage {
  readonly name: string;
  size(): Promise<number>;
  read(position: number, length: number): Promise<Uint8Array>;
  readInto(position: number, target: Uint8Array): Promise<number>;
  write(position: number, data: Uint8Array): Promise<void>;
  truncate(size: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** `inner` on a device with room up to `limit` bytes (see the module comment). */
export function fullAt<T extends FillableStorage>(inner: T, limit: number) {
  return {
    name: inner.name,
    readOnly: false,
    size: () => inner.size(),
    read: (position: number, length: number) => inner.read(position, length),
    readInto: (position: number, target: Uint8Array) => inner.readInto(position, target),
    write: async (position: number, data: Uint8Array): Promise<void> => {
      if (position + data.length > limit) {
        if (position < limit) await inner.write(position, data.subarray(0, limit - position));
        throw Object.assign(new Error(`${inner.name}: write at ${position} failed: no space left on device (ENOSPC)`), { code: 'ENOSPC' });
      }
      await inner.write(position, data);
    },
    truncate: (size: number) => inner.truncate(size),
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
}
