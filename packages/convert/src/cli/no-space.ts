/**
 * A command that changes an image in place (commit, rebase, snapshot -c,
 * bitmap) and found its device full (ENOSPC, or EDQUOT: over quota). The
 * write that failed went to clusters nothing points at yet (the write
 * ordering links them only after their data is written), and the format
 * gives them back when the write fails, as qemu-img does: the image reads
 * as it did before the command and `qemu-img check` finds it clean. The
 * error line says so.
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
 * changes an image in place: the error as it is, then what still holds
 * (`state`, "disk.qcow2 reads as before").
 */
export function noSpaceExit(e: ImageError, state: string): ExitCode {
  return new ExitCode(1, `${e.code}: ${e.message}; ${state}`);
}
