/**
 * Serpent (Anderson, Biham, Knudsen; an AES finalist), in its bit-sliced
 * form: a block is four little-endian 32-bit words, 32 rounds of round-key
 * XOR, S-box (bit-sliced circuits, serpent-sboxes.ts) and linear
 * transform (serpent-rounds.ts). Bytes are taken in the order Linux's dm-crypt, nettle (qemu's
 * cipher backend here) and cryptsetup use: key and block as little-endian
 * words. Keys of 16, 24 or 32 bytes; the 33 round keys are made once per key.
 */
import { serpentDecryptWords, serpentEncryptWords } from './serpent-rounds.js';
import { SERPENT_SBOX_CIRCUITS } from './serpent-sboxes.js';

const PHI = 0x9e3779b9;
const ROUNDS = 32;

const rotl = (x: number, n: number) => (x << n) | (x >>> (32 - n));
/** Serpent keyed once (its 33 round keys), encrypting and decrypting 16-byte blocks in place. */
export class Serpent {
  readonly blockBytes = 16;
  /** Round key i is words 4i..4i+3. */
  readonly #k = new Int32Array(4 * (ROUNDS + 1));
  /** The block's four words while a block is worked on (one per cipher: no allocation per block). */
  readonly #x = new Int32Array(4);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`a Serpent key is 16, 24 or 32 bytes, not ${key.length}`);
    // A short key is padded to 256 bits with a 1 bit after it, then zeros.
    const padded = new Uint8Array(32);
    padded.set(key);
    if (key.length < 32) padded[key.length] = 1;
    // The prekeys w[-8..131], w[-8..-1] the key's words; w[i] = (w[i-8] ^ w[i-5] ^ w[i-3] ^ w[i-1] ^ phi ^ i) <<< 11.
    const w = new Int32Array(8 + 4 * (ROUNDS + 1));
    for (let i = 0; i < 8; i++) w[i] = padded[i * 4]! | (padded[i * 4 + 1]! << 8) | (padded[i * 4 + 2]! << 16) | (padded[i * 4 + 3]! << 24);
    for (let i = 8; i < w.length; i++) w[i] = rotl(w[i - 8]! ^ w[i - 5]! ^ w[i - 3]! ^ w[i - 1]! ^ PHI ^ (i - 8), 11);
    // Round key i is the prekeys 4i..4i+3 through S-box (3 - i) mod 8.
    const x = this.#x;
    for (let i = 0; i <= ROUNDS; i++) {
      x.set(w.subarray(8 + 4 * i, 12 + 4 * i));
      SERPENT_SBOX_CIRCUITS[(((3 - i) % 8) + 8) % 8]!(x);
      this.#k.set(x, 4 * i);
    }
  }

  #load(b: Uint8Array, at: number): Int32Array {
    const x = this.#x;
    for (let i = 0; i < 4; i++, at += 4) x[i] = b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24);
    return x;
  }

  #store(b: Uint8Array, at: number): void {
    const x = this.#x;
    for (let i = 0; i < 4; i++, at += 4) {
      const v = x[i]!;
      b[at] = v;
      b[at + 1] = v >>> 8;
      b[at + 2] = v >>> 16;
      b[at + 3] = v >>> 24;
    }
  }

  encryptBlock(b: Uint8Array, at: number): void {
    serpentEncryptWords(this.#k, this.#load(b, at));
    this.#store(b, at);
  }

  decryptBlock(b: Uint8Array, at: number): void {
    serpentDecryptWords(this.#k, this.#load(b, at));
    this.#store(b, at);
  }

  /** Every block of `b` (whole blocks), each on its own: the loop in each cipher's class, so that its block call has one target. */
  encryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 16) this.encryptBlock(b, at);
  }

  decryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 16) this.decryptBlock(b, at);
  }
}
