/**
 * The block ciphers LUKS volumes name, behind one shape: a key scheduled
 * once, then whole blocks encrypted or decrypted in place (ECB, the
 * building block of every mode in sector-cipher.ts) and CBC encryption,
 * which is serial. AES runs on the platform's primitives (node:crypto's
 * OpenSSL, or @noble in a browser), which take a run of blocks per call;
 * Serpent, Twofish and CAST-128 are pure TypeScript (serpent.ts,
 * twofish.ts, cast5.ts), the same in Node and in browsers.
 */
import type { Qcow2CryptoPrimitives } from './crypto-interface.js';
import { Cast5 } from './cast5.js';
import { Serpent } from './serpent.js';
import { Twofish } from './twofish.js';

/** The ciphers of a LUKS header's cipher_name that img decrypts. */
export type CipherAlgorithm = 'aes' | 'serpent' | 'twofish' | 'cast5';

/** Each cipher's block and the key sizes qemu takes for it (its aes-128, serpent-192, cast5-128, ...). */
export const CIPHER_ALGORITHMS: Readonly<Record<CipherAlgorithm, { blockBytes: 8 | 16; keyBytes: readonly number[] }>> = {
  aes: { blockBytes: 16, keyBytes: [16, 24, 32] },
  serpent: { blockBytes: 16, keyBytes: [16, 24, 32] },
  twofish: { blockBytes: 16, keyBytes: [16, 24, 32] },
  cast5: { blockBytes: 8, keyBytes: [16] },
};

/** Whether `name` is a cipher img decrypts. */
export function isCipherAlgorithm(name: string): name is CipherAlgorithm {
  return Object.hasOwn(CIPHER_ALGORITHMS, name);
}

/** A block cipher under one key. Lengths are whole blocks. */
export interface BlockCipher {
  readonly blockBytes: number;
  /** Each block on its own (ECB), in place. */
  encrypt(data: Uint8Array): void;
  decrypt(data: Uint8Array): void;
  /** CBC encryption from `iv` (one block), in place. */
  cbcEncrypt(iv: Uint8Array, data: Uint8Array): void;
}

/** A pure-TypeScript cipher's block functions: one block at `at`, or every block. */
interface BlockFunction {
  readonly blockBytes: number;
  encryptBlock(b: Uint8Array, at: number): void;
  decryptBlock(b: Uint8Array, at: number): void;
  encryptBlocks(b: Uint8Array): void;
  decryptBlocks(b: Uint8Array): void;
}

/** ECB and CBC over a cipher's one-block functions. */
class PureBlockCipher implements BlockCipher {
  readonly blockBytes: number;
  readonly #f: BlockFunction;

  constructor(f: BlockFunction) {
    this.#f = f;
    this.blockBytes = f.blockBytes;
  }

  encrypt(data: Uint8Array): void {
    this.#f.encryptBlocks(data);
  }

  decrypt(data: Uint8Array): void {
    this.#f.decryptBlocks(data);
  }

  cbcEncrypt(iv: Uint8Array, data: Uint8Array): void {
    const n = this.blockBytes;
    for (let at = 0; at < data.length; at += n) {
      if (at === 0) for (let i = 0; i < n; i++) data[i]! ^= iv[i]!;
      else for (let i = 0; i < n; i++) data[at + i]! ^= data[at - n + i]!;
      this.#f.encryptBlock(data, at);
    }
  }
}

/** AES through the platform's primitives (the key is scheduled by them, per call: they are native, and take whole runs). */
class AesBlockCipher implements BlockCipher {
  readonly blockBytes = 16;
  readonly #crypto: Qcow2CryptoPrimitives;
  readonly #key: Uint8Array;

  constructor(crypto: Qcow2CryptoPrimitives, key: Uint8Array) {
    this.#crypto = crypto;
    this.#key = key;
  }

  encrypt(data: Uint8Array): void {
    data.set(this.#crypto.aesBlocks(this.#key, 'encrypt', data));
  }

  decrypt(data: Uint8Array): void {
    data.set(this.#crypto.aesBlocks(this.#key, 'decrypt', data));
  }

  cbcEncrypt(iv: Uint8Array, data: Uint8Array): void {
    data.set(this.#crypto.aesCbcEncrypt(this.#key, iv, data));
  }
}

/** `algorithm` keyed with `key` (one of its key sizes; a RangeError otherwise). */
export function blockCipher(crypto: Qcow2CryptoPrimitives, algorithm: CipherAlgorithm, key: Uint8Array): BlockCipher {
  if (!CIPHER_ALGORITHMS[algorithm].keyBytes.includes(key.length)) throw new RangeError(`a ${algorithm} key of ${key.length} bytes`);
  const own = key.slice();
  switch (algorithm) {
    case 'aes':
      return new AesBlockCipher(crypto, own);
    case 'serpent':
      return new PureBlockCipher(new Serpent(own));
    case 'twofish':
      return new PureBlockCipher(new Twofish(own));
    case 'cast5':
      return new PureBlockCipher(new Cast5(own));
  }
}
