/** Counting the bytes read through a disk, for tests that bound what an operation reads. */

/** What the count needs of a disk (@img/block's Disk has it; the testkit does not depend on block). */
export interface ReadableDisk {
  readInto(offset: number, target: Uint8Array): Promise<void>;
}

/**
 * `disk` seen through a Proxy whose readInto counts the bytes asked for
 * (every other member is the disk's own, bound to it, so private fields
 * work), and the count so far; `reset` starts it again.
 */
export function countReads<T extends ReadableDisk>(disk: T): { disk: T; bytesRead: () => number; reset: () => void } {
  let bytes = 0;
  const readInto = (offset: number, target: Uint8Array): Promise<void> => {
    bytes += target.length;
    return disk.readInto(offset, target);
  };
  const counted = new Proxy(disk, {
    get(target, key) {
      if (key === 'readInto') return readInto;
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { disk: counted, bytesRead: () => bytes, reset: () => (bytes = 0) };
}
