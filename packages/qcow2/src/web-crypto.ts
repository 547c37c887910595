/**
 * Crypto primitives for encrypted images where node:crypto is not there (a
 * browser, a worker, Deno): AES and the hashes from the audited pure-JS
 * `@noble/ciphers` and `@noble/hashes`, PBKDF2 from the platform's
 * SubtleCrypto where it has the hash (native speed: a LUKS slot is made to
 * take its iter-time of PBKDF2 in qemu's OpenSSL), else from `@noble/hashes`,
 * and random bytes from `crypto.getRandomValues`. Installed on first use
 * when no others are (see crypto-primitives.ts); Node's entry installs
 * node:crypto's, which are faster, before that.
 */
import { cbc, ecb } from '@noble/ciphers/aes';
import { md5, ripemd160, sha1 } from '@noble/hashes/legacy';
import { pbkdf2Async } from '@noble/hashes/pbkdf2';
import { sha224, sha256, sha384, sha512 } from '@noble/hashes/sha2';
import type { Qcow2CryptoPrimitives } from './crypto-interface.js';

type Hash = typeof sha256;

/** The hashes qemu's LUKS driver names (node:crypto's spellings), and SubtleCrypto's name where it has them. */
const HASHES: Record<string, { hash: Hash; subtle?: string }> = {
  md5: { hash: md5 },
  sha1: { hash: sha1, subtle: 'SHA-1' },
  sha224: { hash: sha224 },
  sha256: { hash: sha256, subtle: 'SHA-256' },
  sha384: { hash: sha384, subtle: 'SHA-384' },
  sha512: { hash: sha512, subtle: 'SHA-512' },
  ripemd160: { hash: ripemd160 },
};

function hashOf(name: string): { hash: Hash; subtle?: string } {
  const h = Object.hasOwn(HASHES, name) ? HASHES[name] : undefined;
  if (!h) throw new RangeError(`hash ${name} is not available here`);
  return h;
}

function checkKey(key: Uint8Array): void {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`an AES key is 16, 24 or 32 bytes, not ${key.length}`);
}

/** What is used of the platform's SubtleCrypto (the package builds without the DOM's types). */
interface SubtlePbkdf2 {
  importKey(format: 'raw', key: Uint8Array, algorithm: 'PBKDF2', extractable: false, usages: ['deriveBits']): Promise<unknown>;
  deriveBits(algorithm: { name: 'PBKDF2'; hash: string; salt: Uint8Array; iterations: number }, key: unknown, bits: number): Promise<ArrayBuffer>;
}

/** The platform's crypto object: random bytes everywhere, SubtleCrypto in a secure context. */
function platform(): { subtle?: SubtlePbkdf2; getRandomValues(array: Uint8Array): Uint8Array } {
  const c = (globalThis as { crypto?: { subtle?: SubtlePbkdf2; getRandomValues(array: Uint8Array): Uint8Array } }).crypto;
  if (!c) throw new RangeError('this platform has no crypto object (globalThis.crypto)');
  return c;
}

/** `@noble` and the web platform as {@link Qcow2CryptoPrimitives}. */
export const webCryptoPrimitives: Qcow2CryptoPrimitives = {
  name: 'web',
  aesBlocks(key, direction, data) {
    checkKey(key);
    const cipher = ecb(key, { disablePadding: true });
    return direction === 'encrypt' ? cipher.encrypt(data) : cipher.decrypt(data);
  },
  aesCbcEncrypt(key, iv, data) {
    checkKey(key);
    return cbc(key, iv, { disablePadding: true }).encrypt(data);
  },
  async pbkdf2(password, salt, iterations, length, hash) {
    const h = hashOf(hash);
    const s = (globalThis as { crypto?: { subtle?: SubtlePbkdf2 } }).crypto?.subtle;
    // SubtleCrypto refuses an empty password on some platforms: those go to the pure-JS PBKDF2, as do hashes it lacks.
    if (s && h.subtle && password.length > 0) {
      const key = await s.importKey('raw', password, 'PBKDF2', false, ['deriveBits']);
      const bits = await s.deriveBits({ name: 'PBKDF2', hash: h.subtle, salt, iterations }, key, length * 8);
      return new Uint8Array(bits);
    }
    return pbkdf2Async(h.hash, password, salt, { c: iterations, dkLen: length });
  },
  hashLength(hash) {
    return Object.hasOwn(HASHES, hash) ? HASHES[hash]!.hash.outputLen : undefined;
  },
  digest(hash, data) {
    return hashOf(hash).hash(data);
  },
  randomBytes(length) {
    const out = new Uint8Array(length);
    // getRandomValues fills at most 65536 bytes per call.
    const c = platform();
    for (let at = 0; at < length; at += 65536) c.getRandomValues(out.subarray(at, Math.min(length, at + 65536)));
    return out;
  },
};
