/**
 * CAST-128 (CAST5, RFC 2144): a 64-bit block cipher, the one LUKS cipher
 * qemu names with 8-byte blocks (cast5-128: 16-byte keys, 16 rounds; the
 * RFC's shorter keys, 5 to 10 bytes with 12 rounds and 11 to 15 bytes with
 * 16, are keyed too, for its test vectors). The 32 subkeys are made once
 * per key; a block is two big-endian words through 16 Feistel rounds of
 * the RFC's three round functions.
 */
import { CAST5_SBOXES } from './cast5-sboxes.js';

/** S1-S8, unpacked from their hex on first use. */
let boxes: Uint32Array[] | undefined;

function sboxes(): Uint32Array[] {
  boxes ??= CAST5_SBOXES.map((hex) => {
    const box = new Uint32Array(256);
    for (let i = 0; i < 256; i++) box[i] = parseInt(hex.slice(i * 8, i * 8 + 8), 16);
    return box;
  });
  return boxes;
}

/**
 * The key schedule's four steps (RFC 2144, 2.4), as [target word, source word, the four S5-S8 index bytes, the fifth S-box and its byte]:
 * bytes 0-15 are x0..xF, 16-31 z0..zF. Each step rewrites one word of z (or x) from the other half.
 */
const Z_FROM_X: readonly (readonly number[])[] = [
  [16, 0, 0xd, 0xf, 0xc, 0xe, 6, 0x8],
  [20, 8, 16, 18, 17, 19, 7, 0xa],
  [24, 12, 23, 22, 21, 20, 4, 0x9],
  [28, 4, 26, 25, 27, 24, 5, 0xb],
];
const X_FROM_Z: readonly (readonly number[])[] = [
  [0, 24, 21, 23, 20, 22, 6, 16],
  [4, 16, 0, 2, 1, 3, 7, 18],
  [8, 20, 7, 6, 5, 4, 4, 17],
  [12, 28, 0xa, 9, 0xb, 8, 5, 19],
];
/** The four subkeys each step yields: the S5-S8 index bytes and the fifth S-box and its byte (RFC 2144, 2.4), in the order the steps run. */
const KEYS_FROM_Z: readonly (readonly number[])[] = [
  [24, 25, 23, 22, 4, 18],
  [26, 27, 21, 20, 5, 22],
  [28, 29, 19, 18, 6, 25],
  [30, 31, 17, 16, 7, 28],
];
const KEYS_FROM_X: readonly (readonly number[])[] = [
  [3, 2, 0xc, 0xd, 4, 0x8],
  [1, 0, 0xe, 0xf, 5, 0xd],
  [7, 6, 0x8, 0x9, 6, 0x3],
  [5, 4, 0xa, 0xb, 7, 0x7],
];
const KEYS_FROM_Z2: readonly (readonly number[])[] = [
  [19, 18, 28, 29, 4, 25],
  [17, 16, 30, 31, 5, 28],
  [23, 22, 24, 25, 6, 18],
  [21, 20, 26, 27, 7, 22],
];
const KEYS_FROM_X2: readonly (readonly number[])[] = [
  [0x8, 0x9, 0x7, 0x6, 4, 0x3],
  [0xa, 0xb, 0x5, 0x4, 5, 0x7],
  [0xc, 0xd, 0x3, 0x2, 6, 0x8],
  [0xe, 0xf, 0x1, 0x0, 7, 0xd],
];

/** Byte n of the key schedule's state: bytes 0-15 are x0..xF, 16-31 z0..zF, four to a big-endian word. */
function byteOf(w: Uint32Array, n: number): number {
  return (w[n >>> 2]! >>> (24 - 8 * (n & 3))) & 0xff;
}

/** The 32 subkeys of a key of 5 to 16 bytes (zero-padded to 16): Km1..Km16, then Kr1..Kr16 (their low 5 bits are the rotations). */
function cast5Subkeys(key: Uint8Array): Uint32Array {
  const all = sboxes();
  const sk = [all[4]!, all[5]!, all[6]!, all[7]!];
  const [s5, s6, s7, s8] = sk as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  const padded = new Uint8Array(16);
  padded.set(key);
  const w = new Uint32Array(8);
  for (let i = 0; i < 4; i++) w[i] = ((padded[4 * i]! << 24) | (padded[4 * i + 1]! << 16) | (padded[4 * i + 2]! << 8) | padded[4 * i + 3]!) >>> 0;
  const out = new Uint32Array(32);
  let n = 0;
  const step = (rows: readonly (readonly number[])[]) => {
    for (const r of rows) {
      w[r[0]! >>> 2] = w[r[1]! >>> 2]! ^ s5[byteOf(w, r[2]!)]! ^ s6[byteOf(w, r[3]!)]! ^ s7[byteOf(w, r[4]!)]! ^ s8[byteOf(w, r[5]!)]! ^ sk[r[6]! - 4]![byteOf(w, r[7]!)]!;
    }
  };
  const keys = (rows: readonly (readonly number[])[]) => {
    for (const r of rows) out[n++] = s5[byteOf(w, r[0]!)]! ^ s6[byteOf(w, r[1]!)]! ^ s7[byteOf(w, r[2]!)]! ^ s8[byteOf(w, r[3]!)]! ^ sk[r[4]! - 4]![byteOf(w, r[5]!)]!;
  };
  // Twice through the four steps: the first 16 words are the masking keys, the next 16 the rotations.
  for (let half = 0; half < 2; half++) {
    step(Z_FROM_X);
    keys(KEYS_FROM_Z);
    step(X_FROM_Z);
    keys(KEYS_FROM_X);
    step(Z_FROM_X);
    keys(KEYS_FROM_Z2);
    step(X_FROM_Z);
    keys(KEYS_FROM_X2);
  }
  for (let i = 16; i < 32; i++) out[i] = out[i]! & 31;
  return out;
}

/** CAST-128 keyed once (its subkeys), encrypting and decrypting 8-byte blocks in place. */
export class Cast5 {
  readonly blockBytes = 8;
  readonly #km: Uint32Array;
  readonly #kr: Uint32Array;
  readonly #rounds: number;
  readonly #s1: Uint32Array;
  readonly #s2: Uint32Array;
  readonly #s3: Uint32Array;
  readonly #s4: Uint32Array;

  constructor(key: Uint8Array) {
    if (key.length < 5 || key.length > 16) throw new RangeError(`a CAST-128 key is 5 to 16 bytes, not ${key.length}`);
    const k = cast5Subkeys(key);
    this.#km = k.slice(0, 16);
    this.#kr = k.slice(16);
    // RFC 2144, 2.5: keys of 80 bits or fewer run 12 rounds.
    this.#rounds = key.length <= 10 ? 12 : 16;
    const s = sboxes();
    this.#s1 = s[0]!;
    this.#s2 = s[1]!;
    this.#s3 = s[2]!;
    this.#s4 = s[3]!;
  }

  /** The rounds, first to last or last to first: round i's f is of type 1, 2, 3 in turn (RFC 2144, 2.2), and the halves leave swapped. */
  #run(b: Uint8Array, at: number, forward: boolean): void {
    const s1 = this.#s1;
    const s2 = this.#s2;
    const s3 = this.#s3;
    const s4 = this.#s4;
    const km = this.#km;
    const kr = this.#kr;
    let l = (b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!;
    let r = (b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!;
    const n = this.#rounds;
    for (let j = 0; j < n; j++) {
      const i = forward ? j : n - 1 - j;
      const type = i % 3;
      let t = type === 0 ? (km[i]! + r) | 0 : type === 1 ? km[i]! ^ r : (km[i]! - r) | 0;
      const rot = kr[i]!;
      t = (t << rot) | (t >>> (32 - rot));
      const a = s1[t >>> 24]!;
      const c = s2[(t >>> 16) & 0xff]!;
      const d = s3[(t >>> 8) & 0xff]!;
      const e = s4[t & 0xff]!;
      const f = type === 0 ? ((a ^ c) - d + e) | 0 : type === 1 ? ((a - c + d) | 0) ^ e : (((a + c) | 0) ^ d) - e;
      const next = l ^ f;
      l = r;
      r = next;
    }
    b[at] = r >>> 24;
    b[at + 1] = r >>> 16;
    b[at + 2] = r >>> 8;
    b[at + 3] = r;
    b[at + 4] = l >>> 24;
    b[at + 5] = l >>> 16;
    b[at + 6] = l >>> 8;
    b[at + 7] = l;
  }

  encryptBlock(b: Uint8Array, at: number): void {
    this.#run(b, at, true);
  }

  decryptBlock(b: Uint8Array, at: number): void {
    this.#run(b, at, false);
  }

  /** Every block of `b` (whole blocks), each on its own: the loop in each cipher's class, so that its block call has one target. */
  encryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 8) this.encryptBlock(b, at);
  }

  decryptBlocks(b: Uint8Array): void {
    for (let at = 0; at < b.length; at += 8) this.decryptBlock(b, at);
  }
}
