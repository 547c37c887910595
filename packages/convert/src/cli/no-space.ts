/**
 * A command that changes an image in place (commit, rebase, snapshot -c,
 * bitmap) and found its device full (ENOSPC, or EDQUOT: over quota). The
 * write that failed is one whose clusters were allocated (refcounts raised,
 * flushed first, as the write ordering wants) and not yet linked: nothing
 * points at them, so the image reads as it did before the command, and they
 * are leaks, which `qemu-img check` reports with exit status 3 ("waste of
 * disk space, but no harm to data"). qemu-img's commit frees them on the
 * way out; img says so instead, in the error line, and `img check -r leaks`
 * gives the space back (it needs no free space to do it).
 */
import { ImageError } from '@img/block';
import { ExitCode } from './common.js';

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/** Is `e` a write that found no space left (ENOSPC, EDQUOT)? */
export function isNoSpace(e: unknown): e is ImageError {
  return ImageError.isInstance(e) && NO_SPACE.has(String(e.data.errno));
}

/**
 * The error line for `e`, a write that found no space, in a command that
 * changes `path` in place: the error as it is, what still holds (`state`,
 * "disk.qcow2 reads as before"), and the command that returns the space the
 * failed write left allocated in the file it was writing.
 */
export function noSpaceExit(e: ImageError, path: string, state: string): ExitCode {
  const file = typeof e.data.file === 'string' ? e.data.file : path;
  return new ExitCode(1, `${e.code}: ${e.message}; ${state}; img check -r leaks ${file} returns the space the failed write left allocated`);
}
