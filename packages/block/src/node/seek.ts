/**
 * Loads the optional native helper (built at install time by
 * native/build.mjs with node-gyp): SEEK_DATA/SEEK_HOLE and RWF_NOWAIT reads.
 * Missing, unloadable or disabled with IMG_NO_NATIVE=1: undefined, and
 * FileStorage has no `ranges` and reads everything through libuv's pool.
 */
import { createRequire } from 'node:module';

export interface SeekAddon {
  /** Data runs of `[offset, offset+length)` as [start, end, start, end, ...]. */
  seekRanges(fd: number, offset: number, length: number): Float64Array;
  /**
   * preadv2/pwritev2 with RWF_NOWAIT on the calling thread: bytes moved,
   * -1 if it would block (not in the page cache), -2 if unsupported here.
   * Absent from helpers built before it existed.
   */
  nowait?(write: boolean, fd: number, bytes: Uint8Array, position: number): number;
}

let loaded: SeekAddon | null | undefined;

/** The native helper, loaded once; undefined where it was not built or IMG_NO_NATIVE is set. */
export function seekAddon(): SeekAddon | undefined {
  if (loaded === undefined) {
    loaded = null;
    if (!process.env.IMG_NO_NATIVE) {
      try {
        // dist/node/seek.js -> build/Release (next to dist/ in the package).
        loaded = createRequire(import.meta.url)('../../build/Release/img_seek.node') as SeekAddon;
      } catch {
        loaded = null;
      }
    }
  }
  return loaded ?? undefined;
}
