/*
 * The interface of the cryptography under encrypted images, apart from
 * crypto-primitives.ts (which installs one) so the implementations import
 * it without a cycle.
 */

/** Block cipher, hashes and key derivation for encrypted images. */
export interface Qcow2CryptoPrimitives {
  /** For messages and tests: "node", ... */
  readonly name: string;
  /**
   * Loads what the other calls need, where that is costly (the web
   * primitives' AES tables): awaited before the primitives are used
   * ({@link readyCryptoPrimitives}). Optional.
   */
  prepare?(): Promise<void>;
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
