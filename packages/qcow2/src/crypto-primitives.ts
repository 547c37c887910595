/**
 * The cryptography under encrypted images (LUKS and the old AES method), as
 * the platform provides it. sector-cipher.ts and luks.ts own the format's
 * rules (modes, IVs, key slots); a `Qcow2CryptoPrimitives` only runs the
 * block cipher, the hashes and PBKDF2. Everywhere the pure-JS ones of
 * web-crypto.ts (with SubtleCrypto's PBKDF2) are installed from the start;
 * Node's entry replaces them with node:crypto's (node/crypto.ts), which are
 * faster. {@link setQcow2CryptoPrimitives} installs others, or none
 * (undefined): an encrypted image then still opens and shows what
 * `img info` shows, but its data does not read.
 */
import type { Qcow2CryptoPrimitives } from './crypto-interface.js';
import { webCryptoPrimitives } from './web-crypto.js';

export type { Qcow2CryptoPrimitives } from './crypto-interface.js';

let current: Qcow2CryptoPrimitives | undefined = webCryptoPrimitives;

/** The primitives in use, or undefined where none are installed. */
export function qcow2CryptoPrimitives(): Qcow2CryptoPrimitives | undefined {
  return current;
}

/** The primitives in use, ready for their synchronous calls ({@link Qcow2CryptoPrimitives.prepare} awaited), or undefined. */
export async function readyCryptoPrimitives(): Promise<Qcow2CryptoPrimitives | undefined> {
  const c = current;
  await c?.prepare?.();
  return c;
}

/** Installs the primitives encrypted images are read with; returns the previous ones. */
export function setQcow2CryptoPrimitives(next: Qcow2CryptoPrimitives | undefined): Qcow2CryptoPrimitives | undefined {
  const previous = current;
  current = next;
  return previous;
}
