/**
 * An image's encryption (header crypt_method 1, AES, or 2, LUKS; spec:
 * "Data encryption"): what the header and the encryption header pointer
 * say, read and bounded at open; the key, once a passphrase unlocks it;
 * and the decryption of data clusters as they are read. Metadata is never
 * encrypted, so an image opens, checks and maps without its passphrase;
 * only its data needs the key.
 *
 * AES (the old method, read for data liberation as qemu-img does):
 * AES-128-CBC, the key the passphrase's first 16 bytes (zero-padded), IVs
 * plain64 of the guest sector. LUKS: the cipher the LUKS header names, IVs
 * from the host sector (the "physical disk sector").
 */
import { corrupt, hex, invalidArg, readU32Be, unsupported, utf8Encode } from '@img/block';
import type { Storage } from '@img/block';
import { CRYPT_AES, CRYPT_LUKS, EXT_CRYPTO } from './constants.js';
import { readyCryptoPrimitives } from './crypto-primitives.js';
import { extensionDataOffset, findExtension, type HeaderExtension } from './extensions.js';
import { describeLuks, LUKS_HEADER_SIZE, parseLuksHeader, unlockLuks, type LuksHeader } from './luks.js';
import { SECTOR, SectorCipher } from './sector-cipher.js';
import { withWrite } from './write-wrapper.js';

const FORMAT = 'qcow2';
/** The encryption header pointer's data: offset and length, 8 bytes each. */
const CRYPTO_EXTENSION_SIZE = 16;
/** The largest encryption header area read: 8 slots of 64-byte keys in 4000 stripes take 2 MiB. */
const MAX_CRYPTO_AREA = 16 << 20;

export interface Qcow2Encryption {
  method: 'aes' | 'luks';
  /** LUKS: where the encryption header clusters are. */
  area?: { offset: number; length: number };
  luks?: LuksHeader;
  /** The data key, once unlocked. */
  cipher?: SectorCipher;
}

/** Reads and bounds the encryption the header announces (undefined for none). */
export async function readEncryption(storage: Storage, cryptMethod: number, extensions: readonly HeaderExtension[], headerLength: number, fileSize: number, clusterSize: number, file: string): Promise<Qcow2Encryption | undefined> {
  const ext = findExtension(extensions, EXT_CRYPTO);
  // Where the pointer's data is in the header cluster, for messages.
  const at = extensionDataOffset(extensions, headerLength, EXT_CRYPTO) ?? 32;
  if (cryptMethod === CRYPT_AES) {
    if (ext) throw corrupt(FORMAT, file, 'an encryption header pointer (extension 0x0537be77) with crypt_method 1 (AES), which has none', { field: 'crypt_method', offset: 32, actual: cryptMethod });
    return { method: 'aes' };
  }
  if (cryptMethod !== CRYPT_LUKS) throw unsupported(FORMAT, file, `unknown crypt_method ${cryptMethod} at 0x20`, { field: 'crypt_method', offset: 32, actual: cryptMethod });
  if (!ext) throw corrupt(FORMAT, file, 'crypt_method 2 (LUKS) without the encryption header pointer (extension 0x0537be77)', { field: 'crypt_method', offset: 32, actual: cryptMethod });
  if (ext.data.length !== CRYPTO_EXTENSION_SIZE)
    throw corrupt(FORMAT, file, `the encryption header pointer is ${ext.data.length} bytes (expected ${CRYPTO_EXTENSION_SIZE})`, { field: 'encryption header pointer', offset: at - 4, expected: CRYPTO_EXTENSION_SIZE, actual: ext.data.length });
  // Both read as numbers whatever their size (a value past 2^53 is refused below with the rest).
  const offset = readU32Be(ext.data, 0) * 2 ** 32 + readU32Be(ext.data, 4);
  const length = readU32Be(ext.data, 8) * 2 ** 32 + readU32Be(ext.data, 12);
  if (offset % clusterSize !== 0 || offset < clusterSize || length < LUKS_HEADER_SIZE || length > MAX_CRYPTO_AREA || offset + length > fileSize) {
    throw corrupt(FORMAT, file, `the encryption header at ${hex(offset)} (${length} bytes) is unaligned, overlaps the header, is not the size of a LUKS header (${LUKS_HEADER_SIZE} bytes to 16 MiB) or lies past the end of the file`, {
      field: 'encryption header offset',
      offset: at,
      actual: offset,
    });
  }
  const luks = parseLuksHeader(await storage.read(offset, LUKS_HEADER_SIZE), offset, length, file);
  return { method: 'luks', area: { offset, length }, luks };
}

/** `qemu-img info`'s "encrypt" object. */
export function describeEncryption(e: Qcow2Encryption): Record<string, unknown> {
  return e.luks ? describeLuks(e.luks) : { format: 'aes' };
}

/** Unlocks the data key with `passphrase` (ERR_IMG_INVALID_ARG if it opens no LUKS key slot). */
export async function unlockEncryption(e: Qcow2Encryption, storage: Storage, passphrase: string | Uint8Array, file: string): Promise<void> {
  const crypto = await readyCryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, file, `${file} is encrypted and this platform has no crypto primitives installed for it (setQcow2CryptoPrimitives)`, { field: 'crypt_method' });
  const secret = typeof passphrase === 'string' ? utf8Encode(passphrase) : passphrase;
  if (e.method === 'aes') {
    // qemu's old method: the passphrase's bytes, at most 16, zero-padded, are the AES-128 key.
    const key = new Uint8Array(16);
    key.set(secret.subarray(0, 16));
    e.cipher = new SectorCipher(crypto, { cipher: 'aes', mode: 'cbc', ivgen: 'plain64', keyBytes: 16 }, key);
    return;
  }
  const area = e.area!;
  e.cipher = await unlockLuks(crypto, e.luks!, secret, (at, length) => storage.read(area.offset + at, length), file);
}

/** The error of a data read from an encrypted image opened without its passphrase. */
export function lockedImageError(e: Qcow2Encryption, file: string): Error {
  return invalidArg(
    FORMAT,
    `${file} is encrypted (${e.method === 'luks' ? 'LUKS' : 'AES'}): its data reads only with the passphrase (img: --object secret,id=sec0,data=... with --image-opts driver=qcow2,file.filename=${file},encrypt.key-secret=sec0; API: the passphrase open option)`,
    { file, field: 'passphrase' },
  );
}

/**
 * Reads `target.length` guest bytes at guest offset `guest`, stored from
 * `host` in `storage`, and decrypts them: whole sectors are read around
 * them (host and guest offsets share their place in a sector).
 */
export async function readDecrypted(e: Qcow2Encryption, storage: Storage, host: number, guest: number, target: Uint8Array, file: string): Promise<void> {
  const cipher = e.cipher;
  if (!cipher) throw lockedImageError(e, file);
  const head = host % SECTOR;
  const start = host - head;
  const length = Math.ceil((head + target.length) / SECTOR) * SECTOR;
  const buf = head === 0 && length === target.length ? target : new Uint8Array(length);
  // `storage` is the image file or its external data file: what lies past its end reads as zeros, as qemu reads it.
  const n = await storage.readInto(start, buf);
  if (n < buf.length) buf.fill(0, n);
  cipher.decrypt((e.method === 'luks' ? start : guest - head) / SECTOR, buf);
  if (buf !== target) target.set(buf.subarray(head, head + target.length));
}

/**
 * The data storage of a writable LUKS image: every write is encrypted
 * under the host sectors it lands on. A write that covers sectors only in
 * part (a guest write of a few bytes into an allocated cluster) decrypts
 * the sectors around it, patches them and encrypts them whole. Writes run
 * one at a time, so that no such read-modify-write interleaves with
 * another write to the same sector.
 */
export function encryptingStorage(inner: Storage, cipher: SectorCipher): Storage {
  let queue: Promise<unknown> = Promise.resolve();
  const encryptAt = async (position: number, data: Uint8Array): Promise<void> => {
    const head = position % SECTOR;
    const start = position - head;
    const length = Math.ceil((head + data.length) / SECTOR) * SECTOR;
    const buf = new Uint8Array(length);
    if (head !== 0 || length !== data.length) {
      // The sectors as they are (past the end of the file: zeros, which a reader would decrypt as it finds them).
      const n = await inner.readInto(start, buf);
      if (n < length) buf.fill(0, n);
      cipher.decrypt(start / SECTOR, buf);
    }
    buf.set(data, head);
    cipher.encrypt(start / SECTOR, buf);
    await inner.write(start, buf);
  };
  const write = (position: number, data: Uint8Array): Promise<void> => {
    const run = queue.then(() => encryptAt(position, data));
    queue = run.catch(() => undefined);
    return run;
  };
  return withWrite(inner, write);
}
