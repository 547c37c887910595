/**
 * Twofish (Schneier et al.; an AES finalist): a 16-round Feistel network
 * on four little-endian 32-bit words, whose function g is the fixed
 * permutations q0 and q1 chained with key bytes and mixed by an MDS
 * matrix. Per key, g is computed once into four 256-word tables (one per
 * input byte) and the 40 round keys are made, so a block costs table
 * look-ups and additions. Keys of 16, 24 or 32 bytes.
 */

/** The 4-bit permutations q0 and q1 are built from (Twofish paper, 4.3.5): four of these each. */
const Q_TABLES: readonly (readonly (readonly number[])[])[] = [
  [
    [0x8, 0x1, 0x7, 0xd, 0x6, 0xf, 0x3, 0x2, 0x0, 0xb, 0x5, 0x9, 0xe, 0xc, 0xa, 0x4],
    [0xe, 0xc, 0xb, 0x8, 0x1, 0x2, 0x3, 0x5, 0xf, 0x4, 0xa, 0x6, 0x7, 0x0, 0x9, 0xd],
    [0xb, 0xa, 0x5, 0xe, 0x6, 0xd, 0x9, 0x0, 0xc, 0x8, 0xf, 0x3, 0x2, 0x4, 0x7, 0x1],
    [0xd, 0x7, 0xf, 0x4, 0x1, 0x2, 0x6, 0xe, 0x9, 0xb, 0x3, 0x0, 0x8, 0x5, 0xc, 0xa],
  ],
  [
    [0x2, 0x8, 0xb, 0xd, 0xf, 0x7, 0x6, 0xe, 0x3, 0x1, 0x9, 0x4, 0x0, 0xa, 0xc, 0x5],
    [0x1, 0xe, 0x2, 0xb, 0x4, 0xc, 0x3, 0x7, 0x6, 0xd, 0xa, 0x5, 0xf, 0x9, 0x0, 0x8],
    [0x4, 0xc, 0x7, 0x5, 0x1, 0x6, 0x9, 0xa, 0x0, 0xe, 0xd, 0x8, 0x2, 0xb, 0x3, 0xf],
    [0xb, 0x9, 0x5, 0x1, 0xc, 0x3, 0xd, 0xe, 0x6, 0x4, 0x7, 0xf, 0x2, 0x0, 0x8, 0xa],
  ],
];

/** The MDS matrix over GF(2^8) mod x^8+x^6+x^5+x^3+1. */
const MDS: readonly (readonly number[])[] = [
  [0x01, 0xef, 0x5b, 0x5b],
  [0x5b, 0xef, 0xef, 0x01],
  [0xef, 0x5b, 0x01, 0xef],
  [0xef, 0x01, 0xef, 0x5b],
];
const MDS_POLY = 0x169;

/** The Reed-Solomon matrix that makes the S key words, over GF(2^8) mod x^8+x^6+x^3+x^2+1. */
const RS: readonly (readonly number[])[] = [
  [0x01, 0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e],
  [0xa4, 0x56, 0x82, 0xf3, 0x1e, 0xc6, 0x68, 0xe5],
  [0x02, 0xa1, 0xfc, 0xc1, 0x47, 0xae, 0x3d, 0x19],
  [0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e, 0x03],
];
const RS_POLY = 0x14d;

/** Product in GF(2^8) modulo `poly`. */
function gfMul(a: number, b: number, poly: number): number {
  let r = 0;
  for (; b; b >>>= 1) {
    if (b & 1) r ^= a;
    a <<= 1;
    if (a & 0x100) a ^= poly;
  }
  return r;
}

const ror4 = (x: number) => ((x >>> 1) | (x << 3)) & 15;

/** q0 and q1 as 256-byte tables, made on first use. */
let q: [Uint8Array, Uint8Array] | undefined;

function qTables(): [Uint8Array, Uint8Array] {
  q ??= Q_TABLES.map((t) => {
    const out = new Uint8Array(256);
    for (let x = 0; x < 256; x++) {
      let a = x >>> 4;
      let b = x & 15;
      for (let round = 0; round < 2; round++) {
        const a1 = a ^ b;
        const b1 = a ^ ror4(b) ^ ((8 * a) & 15);
        a = t[2 * round]![a1]!;
        b = t[2 * round + 1]![b1]!;
      }
      out[x] = (b << 4) | a;
    }
    return out;
  }) as [Uint8Array, Uint8Array];
  return q;
}

/** Which q each byte of h goes through, from the last key word to the first (the paper's h, figure 2): rows l3, l2, l1, l0, then a final q. */
const H_CHAIN: readonly (readonly number[])[] = [
  [1, 0, 0, 1],
  [1, 1, 0, 0],
  [0, 1, 0, 1],
  [0, 0, 1, 1],
  [1, 0, 1, 0],
];

/** Byte j of word w. */
const byte = (w: number, j: number) => (w >>> (8 * j)) & 0xff;

/** h without the MDS: byte j of x through the q chain, XORed with byte j of the key words l[k-1]..l[0]. */
function hByte(x: number, j: number, l: readonly number[]): number {
  const [q0, q1] = qTables();
  const qs = [q0, q1];
  let y = x;
  // With k key words, the chain starts at row 4 - k (k = 4 uses all of them).
  for (let row = 4 - l.length; row < 4; row++) y = qs[H_CHAIN[row]![j]!]![y]! ^ byte(l[3 - row]!, j);
  return qs[H_CHAIN[4]![j]!]![y]!;
}

/** MDS column j times `v`, as a word. */
function mdsColumn(j: number, v: number): number {
  let w = 0;
  for (let i = 0; i < 4; i++) w |= gfMul(MDS[i]![j]!, v, MDS_POLY) << (8 * i);
  return w;
}

/** The function h of the paper: word x and key words l, through q, the key bytes and the MDS matrix. */
function h(x: number, l: readonly number[]): number {
  let w = 0;
  for (let j = 0; j < 4; j++) w ^= mdsColumn(j, hByte(byte(x, j), j, l));
  return w;
}

const rotl = (x: number, n: number) => (x << n) | (x >>> (32 - n));
const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));

/** Twofish keyed once (g's tables and the round keys), encrypting and decrypting 16-byte blocks in place. */
export class Twofish {
  readonly blockBytes = 16;
  /** K0..K39: input whitening, output whitening, then two per round. */
  readonly #k = new Int32Array(40);
  /** g as four tables, one per input byte: g(x) = t0[x0] ^ t1[x1] ^ t2[x2] ^ t3[x3]. */
  readonly #t0 = new Int32Array(256);
  readonly #t1 = new Int32Array(256);
  readonly #t2 = new Int32Array(256);
  readonly #t3 = new Int32Array(256);

  constructor(key: Uint8Array) {
    if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`a Twofish key is 16, 24 or 32 bytes, not ${key.length}`);
    const k = key.length / 8;
    const m: number[] = [];
    for (let i = 0; i < 2 * k; i++) m.push(key[4 * i]! | (key[4 * i + 1]! << 8) | (key[4 * i + 2]! << 16) | (key[4 * i + 3]! << 24));
    const even = m.filter((_, i) => i % 2 === 0);
    const odd = m.filter((_, i) => i % 2 === 1);
    // S_i = RS times key bytes 8i..8i+7; g uses them last to first.
    const s: number[] = [];
    for (let i = 0; i < k; i++) {
      let w = 0;
      for (let r = 0; r < 4; r++) {
        let v = 0;
        for (let c = 0; c < 8; c++) v ^= gfMul(RS[r]![c]!, key[8 * i + c]!, RS_POLY);
        w |= v << (8 * r);
      }
      s.unshift(w);
    }
    const rho = 0x01010101;
    for (let i = 0; i < 20; i++) {
      const a = h(Math.imul(2 * i, rho), even);
      const b = rotl(h(Math.imul(2 * i + 1, rho), odd), 8);
      this.#k[2 * i] = a + b;
      this.#k[2 * i + 1] = rotl((a + 2 * b) | 0, 9);
    }
    const tables = [this.#t0, this.#t1, this.#t2, this.#t3];
    for (let j = 0; j < 4; j++) {
      const t = tables[j]!;
      for (let x = 0; x < 256; x++) t[x] = mdsColumn(j, hByte(x, j, s));
    }
  }

  #g(x: number): number {
    return this.#t0[x & 0xff]! ^ this.#t1[(x >>> 8) & 0xff]! ^ this.#t2[(x >>> 16) & 0xff]! ^ this.#t3[x >>> 24]!;
  }

  encryptBlock(b: Uint8Array, at: number): void {
    const k = this.#k;
    let r0 = word(b, at) ^ k[0]!;
    let r1 = word(b, at + 4) ^ k[1]!;
    let r2 = word(b, at + 8) ^ k[2]!;
    let r3 = word(b, at + 12) ^ k[3]!;
    for (let round = 0; round < 16; round += 2) {
      // Two rounds, the second with the halves' roles swapped (no swap of variables).
      let t0 = this.#g(r0);
      let t1 = this.#g(rotl(r1, 8));
      r2 = rotr(r2 ^ ((t0 + t1 + k[2 * round + 8]!) | 0), 1);
      r3 = rotl(r3, 1) ^ ((t0 + 2 * t1 + k[2 * round + 9]!) | 0);
      t0 = this.#g(r2);
      t1 = this.#g(rotl(r3, 8));
      r0 = rotr(r0 ^ ((t0 + t1 + k[2 * round + 10]!) | 0), 1);
      r1 = rotl(r1, 1) ^ ((t0 + 2 * t1 + k[2 * round + 11]!) | 0);
    }
    // The last swap undone: the output is R2, R3, R0, R1, whitened.
    setWord(b, at, r2 ^ k[4]!);
    setWord(b, at + 4, r3 ^ k[5]!);
    setWord(b, at + 8, r0 ^ k[6]!);
    setWord(b, at + 12, r1 ^ k[7]!);
  }

  decryptBlock(b: Uint8Array, at: number): void {
    const k = this.#k;
    let r2 = word(b, at) ^ k[4]!;
    let r3 = word(b, at + 4) ^ k[5]!;
    let r0 = word(b, at + 8) ^ k[6]!;
    let r1 = word(b, at + 12) ^ k[7]!;
    for (let round = 14; round >= 0; round -= 2) {
      let t0 = this.#g(r2);
      let t1 = this.#g(rotl(r3, 8));
      r0 = rotl(r0, 1) ^ ((t0 + t1 + k[2 * round + 10]!) | 0);
      r1 = rotr(r1 ^ ((t0 + 2 * t1 + k[2 * round + 11]!) | 0), 1);
      t0 = this.#g(r0);
      t1 = this.#g(rotl(r1, 8));
      r2 = rotl(r2, 1) ^ ((t0 + t1 + k[2 * round + 8]!) | 0);
      r3 = rotr(r3 ^ ((t0 + 2 * t1 + k[2 * round + 9]!) | 0), 1);
    }
    setWord(b, at, r0 ^ k[0]!);
    setWord(b, at + 4, r1 ^ k[1]!);
    setWord(b, at + 8, r2 ^ k[2]!);
    setWord(b, at + 12, r3 ^ k[3]!);
  }

  /** Every block of `b` (whole blocks), each on its own: the loop in each cipher's class, so that its block call has one target. */
  encryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 16) this.encryptBlock(b, at);
  }

  decryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 16) this.decryptBlock(b, at);
  }
}

function word(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24);
}

function setWord(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}
