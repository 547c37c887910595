/**
 * openLuks: a luks image over a storage. The header is read and bounded
 * first; with a passphrase the master key is unlocked (PBKDF2 through the
 * key slots, at most @img/qcow2/luks's MAX_PBKDF2_ITERATIONS each), and
 * without one the image still opens read-only for its info and extents,
 * its data refused (ERR_IMG_INVALID_ARG naming the file). A writable open
 * needs the passphrase. A luks image names no other file, so an untrusted
 * open is the same open.
 */
import { invalidArg, readOnlyStorageError, utf8Encode, unsupported, type OpenOptions, type Storage } from '@img/block';
import { readyCryptoPrimitives, unlockLuks, type LuksHeader, type SectorCipher } from '@img/qcow2/luks';
import { LuksDisk } from './disk.js';
import { readLuksVolume } from './header.js';
import { LuksImage } from './image.js';
import { FORMAT, luksCall } from './luks-errors.js';

/** Options of {@link openLuks}: OpenOptions' `readOnly` and `passphrase` matter; backing options do not apply. */
export type LuksOpenOptions = Pick<OpenOptions, 'readOnly' | 'passphrase' | 'untrusted'>;

/** The data key the passphrase unlocks (ERR_IMG_INVALID_ARG when it opens no key slot). */
async function unlock(storage: Storage, header: LuksHeader, passphrase: string | Uint8Array, file: string): Promise<SectorCipher> {
  const crypto = await readyCryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, file, `${file} is encrypted and this platform has no crypto primitives installed for it (setQcow2CryptoPrimitives of @img/qcow2)`, { field: 'passphrase' });
  const secret = typeof passphrase === 'string' ? utf8Encode(passphrase) : passphrase;
  return luksCall(() => unlockLuks(crypto, header, secret, (at, length) => storage.read(at, length), file));
}

/**
 * Opens the luks image in `storage` (read-only by default).
 *
 * @example
 * ```ts
 * await using disk = await openLuks(storage, { passphrase: 'correct horse' });
 * const bootSector = await disk.read(0, 512);
 * ```
 */
export async function openLuks(storage: Storage, options: LuksOpenOptions = {}): Promise<LuksDisk> {
  const readOnly = options.readOnly ?? true;
  const file = storage.name;
  if (!readOnly && storage.readOnly) throw readOnlyStorageError(FORMAT, file);
  const fileSize = await storage.size();
  const { header, payloadOffset } = await readLuksVolume(storage, fileSize, file);
  if (!readOnly && options.passphrase === undefined) {
    throw invalidArg(FORMAT, `${file} is a LUKS encrypted volume: writing into it needs its passphrase (img: --object secret,id=sec0,data=... with --image-opts driver=luks,file.filename=${file},key-secret=sec0; API: the passphrase open option)`, {
      file,
      field: 'passphrase',
    });
  }
  const cipher = options.passphrase !== undefined ? await unlock(storage, header, options.passphrase, file) : undefined;
  return new LuksDisk(new LuksImage({ storage, header, payloadOffset, fileSize, readOnly: readOnly || storage.readOnly, cipher }));
}
