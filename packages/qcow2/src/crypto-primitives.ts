/**
 * The cryptography under encrypted images (LUKS and the old AES method), as
 * the platform provides it. sector-cipher.ts and luks.ts own the format's
 * rules (modes, IVs, key slots); a `Qcow2CryptoPrimitives` only runs the
 * block cipher, the hashes and PBKDF2. Node installs node:crypto's
 * (node/crypto.ts, from the package's Node entry, as its codecs); other
 * platforms have none until one is installed with
 * {@link setQcow2CryptoPrimitives}: the web's SubtleCrypto has no AES
 * block function (ECB) to build XTS from. Without primitives an encrypted
 * image still opens, and shows what `img info` shows; its data does not
 * read.
 */

/** Block cipher, hashes and key derivation for encrypted images. */
export interface Qcow2CryptoPrimitives {
  /** For messages and tests: "node", ... */
  readonly name: string;
  /** AES on whole 16-byte blocks, each on its own (ECB, no padding); `key` is 16, 24 or 32 bytes. */
  aesBlocks(key: Uint8Array, direction: 'encrypt' | 'decrypt', data: Uint8Array): Uint8Array;
  /** AES-CBC over whole blocks from `iv`, no padding (encryption is serial, so it is its own call). */
  aesCbcEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  /** PBKDF2 with HMAC over `hash` (RFC 8018). */
  pbkdf2(password: Uint8Array, salt: Uint8Array, iterations: number, length: number, hash: string): Promise<Uint8Array>;
  /** The digest length of `hash` in bytes, or undefined where the platform lacks it. */
  hashLength(hash: string): number | undefined;
  digest(hash: string, data: Uint8Array): Uint8Array;
  randomBytes(length: number): Uint8Array;
}

let current: Qcow2CryptoPrimitives | undefined;

/** The primitives in use, or undefined where none are installed. */
export function qcow2CryptoPrimitives(): Qcow2CryptoPrimitives | undefined {
  return current;
}

/** Installs the primitives encrypted images are read with; returns the previous ones. */
export function setQcow2CryptoPrimitives(next: Qcow2CryptoPrimitives | undefined): Qcow2CryptoPrimitives | undefined {
  const previous = current;
  current = next;
  return previous;
}
