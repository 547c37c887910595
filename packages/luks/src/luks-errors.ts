/**
 * The luks format's name in messages, and its errors: the LUKS machinery
 * of @img/qcow2/luks names the format "qcow2" in what it raises, which
 * here is renamed "luks" (the same code, field, offset and cause).
 */
import { ImageError, invalidArg } from '@img/block';

/** The format's name, as qemu names its driver. */
export const FORMAT = 'luks';

/** `e` as this format's error: an ImageError the qcow2 LUKS code raised is renamed; anything else passes unchanged. */
export function asLuksError(e: unknown): unknown {
  if (ImageError.isInstance(e) && e.data.format === 'qcow2') {
    e.message = e.message.replace(/^qcow2: /, `${FORMAT}: `);
    e.data.format = FORMAT;
  }
  return e;
}

/** Runs `work`, renaming what it throws ({@link asLuksError}). */
export async function luksCall<T>(work: () => Promise<T> | T): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw asLuksError(e);
  }
}

/** The error of a data read or write of an image opened without its passphrase. */
export function lockedError(file: string): ImageError {
  return invalidArg(FORMAT, `${file} is a LUKS encrypted volume: its data reads and writes only with the passphrase (img: --object secret,id=sec0,data=... with --image-opts driver=luks,file.filename=${file},key-secret=sec0; API: the passphrase open option)`, {
    file,
    field: 'passphrase',
  });
}
