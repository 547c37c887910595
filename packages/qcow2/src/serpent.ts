/**
 * Serpent (Anderson, Biham, Knudsen; an AES finalist), in its bit-sliced
 * form: a block is four little-endian 32-bit words, 32 rounds of round-key
 * XOR, S-box (bit-sliced circuits, serpent-sboxes.ts) and linear
 * transform. Bytes are taken in the order Linux's dm-crypt, nettle (qemu's
 * cipher backend here) and cryptsetup use: key and block as little-endian
 * words. Keys of 16, 24 or 32 bytes; the 33 round keys are made once per key.
 */
import { SERPENT_INVERSE_CIRCUITS, SERPENT_SBOX_CIRCUITS } from './serpent-sboxes.js';

const PHI = 0x9e3779b9;
const ROUNDS = 32;

const [s0, s1, s2, s3, s4, s5, s6, s7] = SERPENT_SBOX_CIRCUITS as [Circuit, Circuit, Circuit, Circuit, Circuit, Circuit, Circuit, Circuit];
const [si0, si1, si2, si3, si4, si5, si6, si7] = SERPENT_INVERSE_CIRCUITS as [Circuit, Circuit, Circuit, Circuit, Circuit, Circuit, Circuit, Circuit];
type Circuit = (x: Int32Array) => void;

const rotl = (x: number, n: number) => (x << n) | (x >>> (32 - n));
const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));

/** The linear transform between rounds, on the four words in place. */
function linear(x: Int32Array): void {
  let x0 = rotl(x[0]!, 13);
  let x2 = rotl(x[2]!, 3);
  let x1 = x[1]! ^ x0 ^ x2;
  let x3 = x[3]! ^ x2 ^ (x0 << 3);
  x1 = rotl(x1, 1);
  x3 = rotl(x3, 7);
  x0 = x0 ^ x1 ^ x3;
  x2 = x2 ^ x3 ^ (x1 << 7);
  x[0] = rotl(x0, 5);
  x[1] = x1;
  x[2] = rotl(x2, 22);
  x[3] = x3;
}

/** The inverse of {@link linear}. */
function inverseLinear(x: Int32Array): void {
  let x2 = rotr(x[2]!, 22);
  let x0 = rotr(x[0]!, 5);
  let x1 = x[1]!;
  let x3 = x[3]!;
  x2 = x2 ^ x3 ^ (x1 << 7);
  x0 = x0 ^ x1 ^ x3;
  x3 = rotr(x3, 7);
  x1 = rotr(x1, 1);
  x3 = x3 ^ x2 ^ (x0 << 3);
  x1 = x1 ^ x0 ^ x2;
  x[0] = rotr(x0, 13);
  x[1] = x1;
  x[2] = rotr(x2, 3);
  x[3] = x3;
}

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

  #addKey(round: number): void {
    const x = this.#x;
    const k = this.#k;
    const o = 4 * round;
    x[0]! ^= k[o]!;
    x[1]! ^= k[o + 1]!;
    x[2]! ^= k[o + 2]!;
    x[3]! ^= k[o + 3]!;
  }

  // The rounds eight at a time, each S-box called from a place of its own (one target per call site keeps them inlined).
  encryptBlock(b: Uint8Array, at: number): void {
    const x = this.#load(b, at);
    for (let r = 0; r < ROUNDS; r += 8) {
      this.#addKey(r);
      s0(x);
      linear(x);
      this.#addKey(r + 1);
      s1(x);
      linear(x);
      this.#addKey(r + 2);
      s2(x);
      linear(x);
      this.#addKey(r + 3);
      s3(x);
      linear(x);
      this.#addKey(r + 4);
      s4(x);
      linear(x);
      this.#addKey(r + 5);
      s5(x);
      linear(x);
      this.#addKey(r + 6);
      s6(x);
      linear(x);
      this.#addKey(r + 7);
      s7(x);
      if (r + 7 < ROUNDS - 1) linear(x);
    }
    this.#addKey(ROUNDS);
    this.#store(b, at);
  }

  decryptBlock(b: Uint8Array, at: number): void {
    const x = this.#load(b, at);
    this.#addKey(ROUNDS);
    for (let r = ROUNDS - 8; r >= 0; r -= 8) {
      if (r + 7 < ROUNDS - 1) inverseLinear(x);
      si7(x);
      this.#addKey(r + 7);
      inverseLinear(x);
      si6(x);
      this.#addKey(r + 6);
      inverseLinear(x);
      si5(x);
      this.#addKey(r + 5);
      inverseLinear(x);
      si4(x);
      this.#addKey(r + 4);
      inverseLinear(x);
      si3(x);
      this.#addKey(r + 3);
      inverseLinear(x);
      si2(x);
      this.#addKey(r + 2);
      inverseLinear(x);
      si1(x);
      this.#addKey(r + 1);
      inverseLinear(x);
      si0(x);
      this.#addKey(r);
    }
    this.#store(b, at);
  }
}
