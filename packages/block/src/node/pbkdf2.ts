/**
 * PBKDF2 by the native helper (native/pbkdf2.c): OpenSSL's SHA block
 * functions, found at run time, in a tight loop on precomputed HMAC
 * states, the output blocks of one derivation on threads of their own.
 * Opening a LUKS key slot costs what its iter-time asked of qemu's PBKDF2;
 * node:crypto's takes about twice that, this about half (a 64-byte
 * SHA-256 key is two blocks, derived side by side). The encrypted-image
 * code uses it where it is there and node:crypto's where it is not.
 */
import { nativeExports } from './native-loader.js';

type Pbkdf2 = (password: Uint8Array, salt: Uint8Array, iterations: number, length: number, hash: string) => Promise<ArrayBuffer>;

let native: { fn: Pbkdf2; hashes: ReadonlySet<string> } | null | undefined;

function load(): { fn: Pbkdf2; hashes: ReadonlySet<string> } | undefined {
  if (native === undefined) {
    const e = process.env.IMG_NATIVE_PBKDF2 === '0' ? undefined : nativeExports();
    native = e && typeof e.pbkdf2 === 'function' && typeof e.pbkdf2Hashes === 'function' ? { fn: e.pbkdf2 as Pbkdf2, hashes: new Set((e.pbkdf2Hashes as () => string[])()) } : null;
  }
  return native ?? undefined;
}

/** The hashes {@link nativePbkdf2} derives with here (some of sha1, sha256, sha384, sha512); empty without the helper or a libcrypto (IMG_NATIVE_PBKDF2=0 turns it off). */
export function nativePbkdf2Hashes(): string[] {
  return [...(load()?.hashes ?? [])];
}

/**
 * PBKDF2 with HMAC over `hash` (RFC 8018), `length` bytes, on a pool
 * thread (and one more thread per further output block, up to the CPUs);
 * undefined, having done nothing, where the helper cannot (no helper, no
 * libcrypto, another hash, a length over 1024 bytes or iterations past
 * 2^31-1): then use node:crypto's.
 *
 * @example
 * ```ts
 * import { nativePbkdf2 } from '@img/block/node';
 * const key = (await nativePbkdf2(new TextEncoder().encode('pw'), new Uint8Array(32), 100000, 64, 'sha256')) ?? fallback();
 * ```
 */
export function nativePbkdf2(password: Uint8Array, salt: Uint8Array, iterations: number, length: number, hash: string): Promise<Uint8Array> | undefined {
  const n = load();
  if (!n || !n.hashes.has(hash) || !Number.isInteger(iterations) || iterations < 1 || iterations > 0x7fffffff || !Number.isInteger(length) || length < 1 || length > 1024) return undefined;
  return n.fn(password, salt, iterations, length, hash).then((b) => new Uint8Array(b));
}
