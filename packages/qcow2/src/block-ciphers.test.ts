// Serpent, Twofish and CAST-128 against their published known answers: the NESSIE vectors for Serpent (in
// the little-endian byte order of Linux, nettle and cryptsetup), the Twofish paper's test vectors and its
// chained 49-step "intermediate value" tables, and RFC 2144's examples and maintenance test for CAST-128.
// Every block function is also checked to undo itself, and the bit-sliced Serpent circuits against their tables.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { seededBytes } from '@img/testkit';
import { Cast5 } from './cast5.js';
import { Serpent } from './serpent.js';
import { SERPENT_INVERSE_CIRCUITS, SERPENT_SBOX_CIRCUITS, SERPENT_SBOXES } from './serpent-sboxes.js';
import { Twofish } from './twofish.js';
import { blockCipher, CIPHER_ALGORITHMS, type CipherAlgorithm } from './block-cipher.js';
import { nodeCryptoPrimitives } from './node/crypto.js';

const hex = (s: string) => new Uint8Array(Buffer.from(s.replace(/ /g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');

type Block = { blockBytes: number; encryptBlock(b: Uint8Array, at: number): void; decryptBlock(b: Uint8Array, at: number): void };

/** Encrypts `pt` under `c`, checks it against `ct`, and decrypts it back. */
function known(c: Block, pt: string, ct: string): void {
  const b = hex(pt);
  c.encryptBlock(b, 0);
  expect(toHex(b)).toBe(ct.toLowerCase());
  c.decryptBlock(b, 0);
  expect(toHex(b)).toBe(pt.toLowerCase());
}

describe('Serpent', () => {
  it('its bit-sliced S-box circuits are the tables, and their inverses', () => {
    const x = new Int32Array(4);
    for (let s = 0; s < 8; s++) {
      for (let v = 0; v < 16; v++) {
        // Nibble v in bit 5 of the words (any one bit position would do), and its complement in bit 9.
        for (let i = 0; i < 4; i++) x[i] = (((v >> i) & 1) << 5) | ((((15 - v) >> i) & 1) << 9);
        SERPENT_SBOX_CIRCUITS[s]!(x);
        const out = (bit: number) => [0, 1, 2, 3].reduce((n, i) => n | (((x[i]! >>> bit) & 1) << i), 0);
        expect(out(5), `S${s}(${v})`).toBe(SERPENT_SBOXES[s]![v]);
        expect(out(9), `S${s}(${15 - v})`).toBe(SERPENT_SBOXES[s]![15 - v]);
        SERPENT_INVERSE_CIRCUITS[s]!(x);
        expect(out(5), `S${s} inverse`).toBe(v);
      }
    }
  });

  it('its circuits and written-out rounds are what scripts/serpent-circuits.mjs makes of the tables', () => {
    const script = fileURLToPath(new URL('../scripts/serpent-circuits.mjs', import.meta.url));
    expect(spawnSync(process.execPath, [script, '--check'], { encoding: 'utf8' })).toMatchObject({ status: 0, stdout: '' });
  });

  it.each([
    // NESSIE sets 1-4, vector 0 (key, plaintext, ciphertext).
    ['80000000000000000000000000000000', '00000000000000000000000000000000', '264E5481EFF42A4606ABDA06C0BFDA3D'],
    ['00000000000000000000000000000000', '80000000000000000000000000000000', 'A3B35DE7C358DDD82644678C64B8BCBB'],
    ['00000000000000000000000000000000', '00000000000000000000000000000000', '3620B17AE6A993D09618B8768266BAE9'],
    ['01010101010101010101010101010101', '01010101010101010101010101010101', '5107E36DBE81D9996D1EF7F3656FFC63'],
    ['000102030405060708090a0b0c0d0e0f', '00112233445566778899aabbccddeeff', '563e2cf8740a27c164804560391e9b27'],
    ['800000000000000000000000000000000000000000000000', '00000000000000000000000000000000', '9e274ead9b737bb21efcfca548602689'],
    ['000000000000000000000000000000000000000000000000', '80000000000000000000000000000000', '23f5f432ad687e0d4574c16459618abb'],
    ['000000000000000000000000000000000000000000000000', '00000000000000000000000000000000', 'a583ef976a292b406bbd5dc8256b0442'],
    ['000102030405060708090a0b0c0d0e0f1011121314151617', '00112233445566778899aabbccddeeff', '6ab816c82de53b93005008afa2246a02'],
    ['8000000000000000000000000000000000000000000000000000000000000000', '00000000000000000000000000000000', 'a223aa1288463c0e2be38ebd825616c0'],
    ['0000000000000000000000000000000000000000000000000000000000000000', '80000000000000000000000000000000', '8314675e8ad5c3ecd83d852bcf7f566e'],
    ['0000000000000000000000000000000000000000000000000000000000000000', '00000000000000000000000000000000', '49672ba898d98df95019180445491089'],
    ['1111111111111111111111111111111111111111111111111111111111111111', '11111111111111111111111111111111', 'a482eaa5d5771f2fdb2ea1a5f141b9e2'],
    ['000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', '00112233445566778899aabbccddeeff', '2868b7a2d28ecd5e4fdefac3c4330074'],
  ])('NESSIE: key %s', (key, pt, ct) => known(new Serpent(hex(key)), pt, ct));
});

describe('Twofish', () => {
  it.each([
    // The paper's test vectors, one per key size (plaintext zero).
    ['00000000000000000000000000000000', '9F589F5CF6122C32B6BFEC2F2AE8C35A'],
    ['0123456789ABCDEFFEDCBA98765432100011223344556677', 'CFD1D2E5A9BE9CDF501F13B892BD2248'],
    ['0123456789ABCDEFFEDCBA987654321000112233445566778899AABBCCDDEEFF', '37527BE0052334B89F0CFCCAE87CFA20'],
  ])('paper: key %s', (key, ct) => known(new Twofish(hex(key)), '00000000000000000000000000000000', ct));

  it.each([
    // The paper's 49-step chains from a zero key and block: each step's key is the last plaintext followed by the old key (cut to size), its plaintext the last ciphertext.
    [16, '5D9D4EEFFA9151575524F115815A12E0'],
    [24, 'E75449212BEEF9F4A390BD860A640941'],
    [32, '37FE26FF1CF66175F5DDF4C33B97A205'],
  ])('paper: the 49-step chain of %i-byte keys', (keyBytes, last) => {
    let key = new Uint8Array(keyBytes);
    let pt = new Uint8Array(16);
    let ct = new Uint8Array(16);
    for (let i = 0; i < 49; i++) {
      ct = pt.slice();
      new Twofish(key).encryptBlock(ct, 0);
      const next = new Uint8Array(keyBytes);
      next.set(pt);
      next.set(key.subarray(0, keyBytes - 16), 16);
      key = next;
      pt = ct;
    }
    expect(toHex(ct)).toBe(last.toLowerCase());
  });
});

describe('CAST-128', () => {
  it.each([
    // RFC 2144, B.1: 128-, 80- and 40-bit keys.
    ['01 23 45 67 12 34 56 78 23 45 67 89 34 56 78 9A', '238B4FE5847E44B2'],
    ['01 23 45 67 12 34 56 78 23 45', 'EB6A711A2C02271B'],
    ['01 23 45 67 12', '7AC816D16E9B302E'],
  ])('RFC 2144 B.1: key %s', (key, ct) => known(new Cast5(hex(key)), '0123456789ABCDEF', ct));

  it('RFC 2144 B.2: the full maintenance test (a million rounds of keying each half by the other)', () => {
    const a = hex('0123456712345678234567893456789A');
    const b = hex('0123456712345678234567893456789A');
    for (let i = 0; i < 1_000_000; i++) {
      const kb = new Cast5(b);
      kb.encryptBlock(a, 0);
      kb.encryptBlock(a, 8);
      const ka = new Cast5(a);
      ka.encryptBlock(b, 0);
      ka.encryptBlock(b, 8);
    }
    expect(toHex(a)).toBe('eea9d0a249fd3ba6b3436fb89d6dca92');
    expect(toHex(b)).toBe('b2c95eb00c31ad7180ac05b8e83d696e');
  }, 120_000);
});

describe('block ciphers', () => {
  it('each cipher, at each key size, decrypts what it encrypts (ECB and CBC), at odd offsets too', () => {
    for (const [name, { blockBytes, keyBytes }] of Object.entries(CIPHER_ALGORITHMS) as [CipherAlgorithm, (typeof CIPHER_ALGORITHMS)['aes']][]) {
      for (const n of keyBytes) {
        const c = blockCipher(nodeCryptoPrimitives, name, seededBytes(n, n));
        expect(c.blockBytes).toBe(blockBytes);
        const data = seededBytes(blockBytes * 8, 3);
        const odd = new Uint8Array(data.length + 1).subarray(1);
        odd.set(data);
        c.encrypt(odd);
        expect(toHex(odd)).not.toBe(toHex(data));
        c.decrypt(odd);
        expect(toHex(odd), `${name}-${n * 8}`).toBe(toHex(data));
        // CBC: the first block is the cipher of itself XOR the IV, each next one of itself XOR the block before.
        const iv = seededBytes(blockBytes, 9);
        const cbc = data.slice();
        c.cbcEncrypt(iv, cbc);
        const first = data.slice(0, blockBytes).map((v, i) => v ^ iv[i]!);
        c.encrypt(first);
        expect(toHex(cbc.subarray(0, blockBytes))).toBe(toHex(first));
        const second = data.slice(blockBytes, 2 * blockBytes).map((v, i) => v ^ cbc[i]!);
        c.encrypt(second);
        expect(toHex(cbc.subarray(blockBytes, 2 * blockBytes))).toBe(toHex(second));
      }
    }
    expect(() => blockCipher(nodeCryptoPrimitives, 'cast5', new Uint8Array(8))).toThrow(RangeError);
    expect(() => blockCipher(nodeCryptoPrimitives, 'serpent', new Uint8Array(20))).toThrow(RangeError);
  });
});
