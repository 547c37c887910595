/**
 * A storage whose writes go through a function of the caller's (the
 * overlap guard, encryption), everything else straight to the storage
 * under it.
 */
import type { Storage } from '@img/block';

/** `inner` with `write` in place of its own. */
export function withWrite(inner: Storage, write: (position: number, data: Uint8Array) => Promise<void>): Storage {
  return {
    get name() {
      return inner.name;
    },
    get readOnly() {
      return inner.readOnly;
    },
    size: () => inner.size(),
    read: (position, length) => inner.read(position, length),
    readInto: (position, target) => inner.readInto(position, target),
    write,
    truncate: (size) => inner.truncate(size),
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
}
