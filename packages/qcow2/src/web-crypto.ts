/**
 * Crypto primitives for encrypted images where node:crypto is not there (a
 * browser, a worker, Deno): AES and the hashes from the audited pure-JS
 * `@noble/ciphers` and `@noble/hashes`, PBKDF2 from the platform's
 * SubtleCrypto where it has the hash (native speed: a LUKS slot is made to
 * take its iter-time of PBKDF2 in qemu's OpenSSL), else from `@noble/hashes`,
 * and random bytes from `crypto.getRandomValues`. Installed from the start
 * (see crypto-primitives.ts); Node's entry installs node:crypto's, which
 * are faster. The @noble modules load on `prepare()`, not with this
 * module: AES builds its tables when it loads (milliseconds every img
 * command would pay at start, Node included, where these are not used).
 */
import type { Qcow2CryptoPrimitives } from './crypto-interface.js';

type Noble = {
  aes: typeof import('@noble/ciphers/aes');
  legacy: typeof import('@noble/hashes/legacy');
  pbkdf2: typeof import('@noble/hashes/pbkdf2');
  sha2: typeof import('@noble/hashes/sha2');
};
type Hash = Noble['sha2']['sha256'];

let noble: Noble | undefined;
let loading: Promise<void> | undefined;

/** The @noble modules, loaded once. */
function load(): Promise<void> {
  loading ??= Promise.all([import('@noble/ciphers/aes'), import('@noble/hashes/legacy'), import('@noble/hashes/pbkdf2'), import('@noble/hashes/sha2')]).then(([aes, legacy, pbkdf2, sha2]) => {
    noble = { aes, legacy, pbkdf2, sha2 };
  });
  return loading;
}

function loaded(): Noble {
  if (!noble) throw new Error('webCryptoPrimitives: prepare() was not awaited before a synchronous call');
  return noble;
}

/** The hashes qemu's LUKS driver names (node:crypto's spellings): their digest lengths, and SubtleCrypto's name where it has them. */
const HASHES: Record<string, { length: number; subtle?: string }> = {
  md5: { length: 16 },
  sha1: { length: 20, subtle: 'SHA-1' },
  sha224: { length: 28 },
  sha256: { length: 32, subtle: 'SHA-256' },
  sha384: { length: 48, subtle: 'SHA-384' },
  sha512: { length: 64, subtle: 'SHA-512' },
  ripemd160: { length: 20 },
};

function hashOf(name: string): { hash: Hash; subtle?: string } {
  const h = Object.hasOwn(HASHES, name) ? HASHES[name] : undefined;
  if (!h) throw new RangeError(`hash ${name} is not available here`);
  const n = loaded();
  const hash = name === 'md5' || name === 'sha1' || name === 'ripemd160' ? n.legacy[name] : n.sha2[name as 'sha224' | 'sha256' | 'sha384' | 'sha512'];
  return { hash, ...(h.subtle ? { subtle: h.subtle } : {}) };
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
  prepare: load,
  aesBlocks(key, direction, data) {
    checkKey(key);
    const cipher = loaded().aes.ecb(key, { disablePadding: true });
    return direction === 'encrypt' ? cipher.encrypt(data) : cipher.decrypt(data);
  },
  aesCbcEncrypt(key, iv, data) {
    checkKey(key);
    return loaded().aes.cbc(key, iv, { disablePadding: true }).encrypt(data);
  },
  async pbkdf2(password, salt, iterations, length, hash) {
    await load();
    const h = hashOf(hash);
    const s = (globalThis as { crypto?: { subtle?: SubtlePbkdf2 } }).crypto?.subtle;
    // SubtleCrypto refuses an empty password on some platforms: those go to the pure-JS PBKDF2, as do hashes it lacks.
    if (s && h.subtle && password.length > 0) {
      const key = await s.importKey('raw', password, 'PBKDF2', false, ['deriveBits']);
      const bits = await s.deriveBits({ name: 'PBKDF2', hash: h.subtle, salt, iterations }, key, length * 8);
      return new Uint8Array(bits);
    }
    return loaded().pbkdf2.pbkdf2Async(h.hash, password, salt, { c: iterations, dkLen: length });
  },
  hashLength(hash) {
    return Object.hasOwn(HASHES, hash) ? HASHES[hash]!.length : undefined;
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
