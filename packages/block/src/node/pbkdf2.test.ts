// The native PBKDF2 (OpenSSL's SHA block functions, found at run time) against node:crypto's, derivation by
// derivation: every hash it offers, passwords shorter and longer than a hash block (the HMAC key is hashed
// then), empty ones, 1 to 7 output blocks, a short last block, and its refusals (undefined: the caller
// falls back).
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { nativeStatus } from './native-loader.js';
import { nativePbkdf2, nativePbkdf2Hashes } from './pbkdf2.js';

const status = nativeStatus();
// Node itself carries or links OpenSSL: where the helper is loaded, it finds the SHA functions.
if (process.env.CI && process.platform === 'linux' && status.loaded && nativePbkdf2Hashes().length !== 4) throw new Error(`CI: the native helper must find OpenSSL's SHA functions (has: ${nativePbkdf2Hashes().join(', ')})`);

describe.runIf(nativePbkdf2Hashes().length > 0)('native PBKDF2', () => {
  it('offers sha1, sha256, sha384 and sha512', () => {
    expect(nativePbkdf2Hashes().sort()).toEqual(['sha1', 'sha256', 'sha384', 'sha512']);
  });

  it('derives what node:crypto derives', async () => {
    for (const hash of nativePbkdf2Hashes()) {
      for (const [passwordBytes, saltBytes, iterations, length] of [
        [0, 32, 1, 20],
        [8, 4, 2, 64],
        [2, 32, 1000, 64],
        [64, 32, 3, 128],
        [65, 7, 10, 33],
        [129, 1, 5, 1],
        [200, 0, 17, 448],
        [11, 32, 4000, 1024],
      ] as const) {
        const password = new Uint8Array(randomBytes(passwordBytes));
        const salt = new Uint8Array(randomBytes(saltBytes));
        const ours = await nativePbkdf2(password, salt, iterations, length, hash);
        expect(Buffer.from(ours!).equals(pbkdf2Sync(password, salt, iterations, length, hash)), `${hash} ${passwordBytes}/${saltBytes}/${iterations}/${length}`).toBe(true);
      }
    }
  });

  it('answers undefined where it cannot: another hash, a length over 1024 bytes, iterations out of range', () => {
    const p = new Uint8Array(4);
    expect(nativePbkdf2(p, p, 1, 16, 'md5')).toBeUndefined();
    expect(nativePbkdf2(p, p, 1, 1025, 'sha256')).toBeUndefined();
    expect(nativePbkdf2(p, p, 0, 16, 'sha256')).toBeUndefined();
    expect(nativePbkdf2(p, p, 2 ** 31, 16, 'sha256')).toBeUndefined();
    expect(nativePbkdf2(p, p, 1.5, 16, 'sha256')).toBeUndefined();
  });

  it('runs derivations side by side and leaves the event loop free', async () => {
    const password = new Uint8Array(randomBytes(9));
    const salt = new Uint8Array(randomBytes(32));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const results = await Promise.all([nativePbkdf2(password, salt, 200000, 64, 'sha256'), nativePbkdf2(password, salt, 200000, 64, 'sha512')]);
    clearInterval(timer);
    expect(Buffer.from(results[0]!).equals(pbkdf2Sync(password, salt, 200000, 64, 'sha256'))).toBe(true);
    expect(Buffer.from(results[1]!).equals(pbkdf2Sync(password, salt, 200000, 64, 'sha512'))).toBe(true);
    expect(ticks).toBeGreaterThan(0);
  });
});
