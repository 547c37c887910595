/**
 * Incremental SHA-256, SHA-512 and SHA-1 (FIPS 180-4) for OVA manifests,
 * written here so the package's core needs no Node API. Input is taken in
 * pieces of any length; memory use is one 64-byte block.
 */

/** An incremental hash. */
export interface Hasher {
  update(data: Uint8Array): void;
  /** The digest as lowercase hex; the hasher is done after it. */
  hex(): string;
}

const K256 = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc,
  0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624,
  0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

abstract class BlockHash implements Hasher {
  /** Bytes per block: 64 (SHA-1, SHA-256) or 128 (SHA-512). */
  readonly #size: number;
  protected readonly block: Uint8Array;
  #fill = 0;
  #length = 0;
  protected abstract compress(b: Uint8Array, at: number): void;
  protected abstract state(): Uint32Array;

  constructor(blockSize = 64) {
    this.#size = blockSize;
    this.block = new Uint8Array(blockSize);
  }

  update(data: Uint8Array): void {
    const size = this.#size;
    this.#length += data.length;
    let p = 0;
    if (this.#fill > 0) {
      const n = Math.min(size - this.#fill, data.length);
      this.block.set(data.subarray(0, n), this.#fill);
      this.#fill += n;
      p = n;
      if (this.#fill < size) return;
      this.compress(this.block, 0);
      this.#fill = 0;
    }
    for (; p + size <= data.length; p += size) this.compress(data, p);
    this.block.set(data.subarray(p), 0);
    this.#fill = data.length - p;
  }

  hex(): string {
    const size = this.#size;
    const bits = this.#length * 8;
    // The length field is the block's last 8 bytes (SHA-512's is 16; its upper half stays zero below 2^64 bits).
    const lengthBytes = size / 8;
    const pad = new Uint8Array((this.#fill < size - lengthBytes ? size : 2 * size) - this.#fill);
    pad[0] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    return Array.from(this.state(), (w) => w.toString(16).padStart(8, '0')).join('');
  }
}

class Sha256 extends BlockHash {
  #h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  #w = new Uint32Array(64);
  protected state(): Uint32Array {
    return this.#h;
  }
  protected compress(b: Uint8Array, at: number): void {
    const w = this.#w;
    for (let i = 0; i < 16; i++) w[i] = (b[at + 4 * i]! << 24) | (b[at + 4 * i + 1]! << 16) | (b[at + 4 * i + 2]! << 8) | b[at + 4 * i + 3]!;
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15]!;
      const y = w[i - 2]!;
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) | 0;
    }
    const h = this.#h;
    let a = h[0]!,
      bb = h[1]!,
      c = h[2]!,
      d = h[3]!,
      e = h[4]!,
      f = h[5]!,
      g = h[6]!,
      hh = h[7]!;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K256[i]! + w[i]!) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = bb;
      bb = a;
      a = (t1 + t2) | 0;
    }
    h[0] = h[0]! + a;
    h[1] = h[1]! + bb;
    h[2] = h[2]! + c;
    h[3] = h[3]! + d;
    h[4] = h[4]! + e;
    h[5] = h[5]! + f;
    h[6] = h[6]! + g;
    h[7] = h[7]! + hh;
  }
}

class Sha1 extends BlockHash {
  #h = new Uint32Array([0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0]);
  #w = new Uint32Array(80);
  protected state(): Uint32Array {
    return this.#h;
  }
  protected compress(b: Uint8Array, at: number): void {
    const w = this.#w;
    for (let i = 0; i < 16; i++) w[i] = (b[at + 4 * i]! << 24) | (b[at + 4 * i + 1]! << 16) | (b[at + 4 * i + 2]! << 8) | b[at + 4 * i + 3]!;
    for (let i = 16; i < 80; i++) {
      const x = w[i - 3]! ^ w[i - 8]! ^ w[i - 14]! ^ w[i - 16]!;
      w[i] = (x << 1) | (x >>> 31);
    }
    const h = this.#h;
    let a = h[0]!,
      bb = h[1]!,
      c = h[2]!,
      d = h[3]!,
      e = h[4]!;
    for (let i = 0; i < 80; i++) {
      const f = i < 20 ? (bb & c) | (~bb & d) : i < 40 ? bb ^ c ^ d : i < 60 ? (bb & c) | (bb & d) | (c & d) : bb ^ c ^ d;
      const k = i < 20 ? 0x5a827999 : i < 40 ? 0x6ed9eba1 : i < 60 ? 0x8f1bbcdc : 0xca62c1d6;
      const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]!) | 0;
      e = d;
      d = c;
      c = (bb << 30) | (bb >>> 2);
      bb = a;
      a = t;
    }
    h[0] = h[0]! + a;
    h[1] = h[1]! + bb;
    h[2] = h[2]! + c;
    h[3] = h[3]! + d;
    h[4] = h[4]! + e;
  }
}

/** floor(root(n * 2^(64 * degree))) for degree 2 or 3, by Newton's method on integers. */
function integerRoot(n: bigint, degree: 2n | 3n): bigint {
  let x = 1n << (degree === 2n ? 96n : 72n);
  for (;;) {
    const next = ((degree - 1n) * x + n / x ** (degree - 1n)) / degree;
    if (next >= x) break;
    x = next;
  }
  while (x ** degree > n) x--;
  while ((x + 1n) ** degree <= n) x++;
  return x;
}

/** The first 64 bits of the fractional parts of the square (degree 2) or cube (3) roots of the first `count` primes, as hi/lo words (FIPS 180-4 sections 4.2.3 and 5.3.5). */
function rootConstants(count: number, degree: 2n | 3n): Uint32Array {
  const out = new Uint32Array(count * 2);
  const mask = (1n << 64n) - 1n;
  for (let found = 0, p = 2; found < count; p++) {
    let prime = true;
    for (let d = 2; d * d <= p; d++) if (p % d === 0) prime = false;
    if (!prime) continue;
    const word = integerRoot(BigInt(p) << (64n * degree), degree) & mask;
    out[2 * found] = Number(word >> 32n);
    out[2 * found + 1] = Number(word & 0xffffffffn);
    found++;
  }
  return out;
}

let K512: Uint32Array | undefined;

/** SHA-512 on 32-bit word pairs (hi, lo): no BigInt per block. */
class Sha512 extends BlockHash {
  #h = rootConstants(8, 2n);
  #w = new Int32Array(160);
  readonly #k = (K512 ??= rootConstants(80, 3n));
  constructor() {
    super(128);
  }
  protected state(): Uint32Array {
    return this.#h;
  }
  protected compress(b: Uint8Array, at: number): void {
    const w = this.#w;
    const k = this.#k;
    for (let i = 0; i < 32; i++) w[i] = (b[at + 4 * i]! << 24) | (b[at + 4 * i + 1]! << 16) | (b[at + 4 * i + 2]! << 8) | b[at + 4 * i + 3]!;
    for (let i = 16; i < 80; i++) {
      // sigma0 = rotr1 ^ rotr8 ^ shr7 of w[i-15]; sigma1 = rotr19 ^ rotr61 ^ shr6 of w[i-2].
      const xh = w[2 * (i - 15)]!;
      const xl = w[2 * (i - 15) + 1]!;
      const s0h = ((xh >>> 1) | (xl << 31)) ^ ((xh >>> 8) | (xl << 24)) ^ (xh >>> 7);
      const s0l = ((xl >>> 1) | (xh << 31)) ^ ((xl >>> 8) | (xh << 24)) ^ ((xl >>> 7) | (xh << 25));
      const yh = w[2 * (i - 2)]!;
      const yl = w[2 * (i - 2) + 1]!;
      const s1h = ((yh >>> 19) | (yl << 13)) ^ ((yl >>> 29) | (yh << 3)) ^ (yh >>> 6);
      const s1l = ((yl >>> 19) | (yh << 13)) ^ ((yh >>> 29) | (yl << 3)) ^ ((yl >>> 6) | (yh << 26));
      const lo = (s0l >>> 0) + (s1l >>> 0) + (w[2 * (i - 7) + 1]! >>> 0) + (w[2 * (i - 16) + 1]! >>> 0);
      w[2 * i] = s0h + s1h + w[2 * (i - 7)]! + w[2 * (i - 16)]! + Math.floor(lo / 0x100000000);
      w[2 * i + 1] = lo;
    }
    const h = this.#h;
    let ah = h[0]! | 0,
      al = h[1]! | 0,
      bh = h[2]! | 0,
      bl = h[3]! | 0,
      ch = h[4]! | 0,
      cl = h[5]! | 0,
      dh = h[6]! | 0,
      dl = h[7]! | 0;
    let eh = h[8]! | 0,
      el = h[9]! | 0,
      fh = h[10]! | 0,
      fl = h[11]! | 0,
      gh = h[12]! | 0,
      gl = h[13]! | 0,
      hh = h[14]! | 0,
      hl = h[15]! | 0;
    for (let i = 0; i < 80; i++) {
      // Sigma1(e) = rotr14 ^ rotr18 ^ rotr41; Ch(e, f, g); Sigma0(a) = rotr28 ^ rotr34 ^ rotr39; Maj(a, b, c).
      const S1h = ((eh >>> 14) | (el << 18)) ^ ((eh >>> 18) | (el << 14)) ^ ((el >>> 9) | (eh << 23));
      const S1l = ((el >>> 14) | (eh << 18)) ^ ((el >>> 18) | (eh << 14)) ^ ((eh >>> 9) | (el << 23));
      const chh = (eh & fh) ^ (~eh & gh);
      const chl = (el & fl) ^ (~el & gl);
      const t1l = (hl >>> 0) + (S1l >>> 0) + (chl >>> 0) + k[2 * i + 1]! + (w[2 * i + 1]! >>> 0);
      const t1h = hh + S1h + chh + k[2 * i]! + w[2 * i]! + Math.floor(t1l / 0x100000000);
      const S0h = ((ah >>> 28) | (al << 4)) ^ ((al >>> 2) | (ah << 30)) ^ ((al >>> 7) | (ah << 25));
      const S0l = ((al >>> 28) | (ah << 4)) ^ ((ah >>> 2) | (al << 30)) ^ ((ah >>> 7) | (al << 25));
      const mh = (ah & bh) ^ (ah & ch) ^ (bh & ch);
      const ml = (al & bl) ^ (al & cl) ^ (bl & cl);
      const t2l = (S0l >>> 0) + (ml >>> 0);
      const t2h = S0h + mh + Math.floor(t2l / 0x100000000);
      hh = gh;
      hl = gl;
      gh = fh;
      gl = fl;
      fh = eh;
      fl = el;
      const el2 = (dl >>> 0) + (t1l >>> 0);
      eh = (dh + (t1h | 0) + Math.floor(el2 / 0x100000000)) | 0;
      el = el2 | 0;
      dh = ch;
      dl = cl;
      ch = bh;
      cl = bl;
      bh = ah;
      bl = al;
      const al2 = (t1l >>> 0) + (t2l >>> 0);
      ah = ((t1h | 0) + (t2h | 0) + Math.floor(al2 / 0x100000000)) | 0;
      al = al2 | 0;
    }
    const add = (i: number, vh: number, vl: number) => {
      const lo = h[i + 1]! + (vl >>> 0);
      h[i] = h[i]! + vh + Math.floor(lo / 0x100000000);
      h[i + 1] = lo;
    };
    add(0, ah, al);
    add(2, bh, bl);
    add(4, ch, cl);
    add(6, dh, dl);
    add(8, eh, el);
    add(10, fh, fl);
    add(12, gh, gl);
    add(14, hh, hl);
  }
}

/** Digest algorithms of an OVA manifest. */
export type ManifestAlgorithm = 'sha1' | 'sha256' | 'sha512';

/** The hashers written here, which run anywhere (what newHasher answers unless the platform's are installed). */
export function portableHasher(algorithm: ManifestAlgorithm): Hasher {
  return algorithm === 'sha1' ? new Sha1() : algorithm === 'sha512' ? new Sha512() : new Sha256();
}

/** Makes the platform's hashers (Node's node:crypto, installed by its entry) or, with undefined, the portable ones serve newHasher. */
export type HasherFactory = (algorithm: ManifestAlgorithm) => Hasher;

let platform: HasherFactory | undefined;

/**
 * Installs the hashers every manifest in this realm is made and checked
 * with (the same digests, faster: Node's entry installs node:crypto's);
 * undefined goes back to the portable ones. Answers the factory it replaced.
 */
export function setManifestHashers(factory: HasherFactory | undefined): HasherFactory | undefined {
  const before = platform;
  platform = factory;
  return before;
}

/** A new incremental hasher for a manifest's algorithm: the platform's where installed, else the portable one. */
export function newHasher(algorithm: ManifestAlgorithm): Hasher {
  return platform ? platform(algorithm) : portableHasher(algorithm);
}
