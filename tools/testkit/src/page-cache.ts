import { execFileSync } from 'node:child_process';

/** Bytes of `path` in the page cache, as util-linux fincore counts them; undefined where there is no fincore. */
export function pageCacheBytes(path: string): number | undefined {
  try {
    return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' }).trim());
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
