/**
 * Loads the optional native SEEK_DATA/SEEK_HOLE helper (built at install
 * time by native/build.mjs with node-gyp). Missing, unloadable or disabled
 * with IMG_NO_NATIVE=1: undefined, and FileStorage has no `ranges`.
 */
import { createRequire } from 'node:module';

export interface SeekAddon {
  /** Data runs of `[offset, offset+length)` as [start, end, start, end, ...]. */
  seekRanges(fd: number, offset: number, length: number): Float64Array;
}

let loaded: SeekAddon | null | undefined;

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
