/**
 * node:crypto's primitives for encrypted images (OpenSSL's AES, hashes and
 * PBKDF2; PBKDF2 runs on libuv's thread pool, in @img/block's native
 * helper where it is loaded).
 */
import { createRequire } from 'node:module';
import { nativePbkdf2 } from '@img/block/node';
import { setQcow2CryptoPrimitives, type Qcow2CryptoPrimitives } from '../crypto-primitives.js';

type NodeCrypto = typeof import('node:crypto');
let crypto: NodeCrypto | undefined;

/**
 * node:crypto, loaded at the first use: loading it starts OpenSSL, which
 * every command paid at start-up (about 2 ms) for the few images that are
 * encrypted.
 */
function nodeCrypto(): NodeCrypto {
  return (crypto ??= createRequire(import.meta.url)('node:crypto') as NodeCrypto);
}

function aesName(key: Uint8Array, mode: 'ecb' | 'cbc'): string {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`an AES key is 16, 24 or 32 bytes, not ${key.length}`);
  return `aes-${key.length * 8}-${mode}`;
}

function run(cipher: ReturnType<NodeCrypto['createCipheriv']>, data: Uint8Array): Uint8Array {
  cipher.setAutoPadding(false);
  const head = cipher.update(data);
  const tail = cipher.final();
  return tail.length ? new Uint8Array(Buffer.concat([head, tail])) : new Uint8Array(head.buffer, head.byteOffset, head.length);
}

const hashLengths = new Map<string, number | undefined>();

/** node:crypto as {@link Qcow2CryptoPrimitives}. */
export const nodeCryptoPrimitives: Qcow2CryptoPrimitives = {
  name: 'node',
  aesBlocks(key, direction, data) {
    const name = aesName(key, 'ecb');
    const { createCipheriv, createDecipheriv } = nodeCrypto();
    return run(direction === 'encrypt' ? createCipheriv(name, key, null) : createDecipheriv(name, key, null), data);
  },
  aesCbcEncrypt(key, iv, data) {
    return run(nodeCrypto().createCipheriv(aesName(key, 'cbc'), key, iv), data);
  },
  pbkdf2(password, salt, iterations, length, hash) {
    // The native helper's, where it has the hash: about four times faster (see @img/block/node's nativePbkdf2).
    const native = nativePbkdf2(password, salt, iterations, length, hash);
    if (native) return native;
    return new Promise((resolve, reject) => {
      nodeCrypto().pbkdf2(password, salt, iterations, length, hash, (err, key) => (err ? reject(err) : resolve(new Uint8Array(key.buffer, key.byteOffset, key.length))));
    });
  },
  hashLength(hash) {
    if (!hashLengths.has(hash)) {
      hashLengths.set(hash, nodeCrypto().getHashes().includes(hash) ? this.digest(hash, new Uint8Array(0)).length : undefined);
    }
    return hashLengths.get(hash);
  },
  digest(hash, data) {
    // A hash the platform lacks throws here; callers ask hashLength first.
    const out = nodeCrypto().createHash(hash).update(data).digest();
    return new Uint8Array(out.buffer, out.byteOffset, out.length);
  },
  randomBytes(length) {
    const b = nodeCrypto().randomBytes(length);
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  },
};

/** Installs node:crypto's primitives (the package's Node entry does). */
export function installNodeCryptoPrimitives(): Qcow2CryptoPrimitives | undefined {
  return setQcow2CryptoPrimitives(nodeCryptoPrimitives);
}
