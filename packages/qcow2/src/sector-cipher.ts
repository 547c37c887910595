/**
 * Sector encryption as LUKS (and qcow2's old AES method) use it: a block
 * cipher (block-cipher.ts) in ECB, CBC, XTS or CTR mode over 512-byte
 * sectors, each with its own IV made from its sector number (plain: the
 * low 32 bits, plain64: all 64, little-endian; essiv: plain64 encrypted
 * under a hash of the key), cut to the cipher's block (8 bytes for
 * CAST-128), as qemu does. Each mode is built from the cipher's ECB over a
 * whole run of sectors at once (one call for the tweaks, IVs or counters,
 * one for the data), instead of a cipher object per sector: for AES that
 * is one platform call each, its hot path.
 */
import type { Qcow2CryptoPrimitives } from './crypto-interface.js';
import { blockCipher, CIPHER_ALGORITHMS, type BlockCipher, type CipherAlgorithm } from './block-cipher.js';

/** The unit of encryption: each 512-byte sector has its own IV. */
export const SECTOR = 512;
/** XTS's block (it is defined for 16-byte ciphers only). */
const XTS_BLOCK = 16;

export type { CipherAlgorithm } from './block-cipher.js';
/** The block cipher modes of LUKS volumes. */
export type CipherMode = 'ecb' | 'cbc' | 'xts' | 'ctr';
/** How a sector number becomes its IV. */
export type IvGenerator = 'plain' | 'plain64' | 'essiv';

/** What a key encrypts with: a cipher, a mode, and how IVs are made. */
export interface CipherSpec {
  cipher: CipherAlgorithm;
  mode: CipherMode;
  ivgen: IvGenerator;
  /** essiv: the hash of the key that keys the IV cipher. */
  ivgenHash?: string;
  /** Bytes of key (XTS: both halves). */
  keyBytes: number;
}

/** Whether `cipher` takes `keyBytes` of key in `mode` (XTS: two keys of a size the cipher takes, and a 16-byte block). */
export function validKeyBytes(cipher: CipherAlgorithm, mode: CipherMode, keyBytes: number): boolean {
  const c = CIPHER_ALGORITHMS[cipher];
  if (mode === 'xts') return c.blockBytes === XTS_BLOCK && c.keyBytes.includes(keyBytes / 2);
  return c.keyBytes.includes(keyBytes);
}

/**
 * Whether essiv works for `cipher` with a hash of `digestBytes`: its IV cipher is the same cipher keyed with
 * the whole digest (qemu's rule, after dm-crypt: aes-128 with essiv:sha256 makes its IVs with aes-256), so the
 * digest must be one of the cipher's key sizes.
 */
export function essivKeyValid(cipher: CipherAlgorithm, digestBytes: number): boolean {
  return CIPHER_ALGORITHMS[cipher].keyBytes.includes(digestBytes);
}

/** XORs `src` into `dst` (equal lengths). */
function xorInto(dst: Uint8Array, src: Uint8Array): void {
  if (dst.byteOffset % 4 === 0 && src.byteOffset % 4 === 0 && dst.length % 4 === 0) {
    const d = new Uint32Array(dst.buffer, dst.byteOffset, dst.length / 4);
    const s = new Uint32Array(src.buffer, src.byteOffset, src.length / 4);
    for (let i = 0; i < d.length; i++) d[i]! ^= s[i]!;
    return;
  }
  for (let i = 0; i < dst.length; i++) dst[i]! ^= src[i]!;
}

/** The sectors' plain64 (or plain) IVs, `size` bytes each: the sector number, little-endian, cut to the size. */
function plainIvs(first: number, count: number, bits: 32 | 64, size: number): Uint8Array {
  const out = new Uint8Array(count * size);
  const v = new DataView(out.buffer);
  for (let i = 0; i < count; i++) {
    const s = first + i;
    v.setUint32(i * size, s % 2 ** 32, true);
    if (bits === 64 && size >= 8) v.setUint32(i * size + 4, Math.floor(s / 2 ** 32), true);
  }
  return out;
}

/** Whether this platform stores a Uint32Array's words little-endian (XTS's tweaks are little-endian numbers). */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * XORs every 16-byte block of `data` (whole sectors) with its XTS tweak:
 * sector i's block j gets t0[i] times x^j in GF(2^128) (little-endian,
 * reduced by x^128 + x^7 + x^2 + x + 1). The tweaks are made as they are
 * used, in registers, so the pass before the block cipher and the one
 * after it read and write the data once each and allocate nothing.
 */
function xorTweaks(data: Uint8Array, t0: Uint8Array): void {
  const sectors = data.length / SECTOR;
  if (LITTLE_ENDIAN && data.byteOffset % 4 === 0 && t0.byteOffset % 4 === 0) {
    const d = new Uint32Array(data.buffer, data.byteOffset, data.length / 4);
    const t = new Uint32Array(t0.buffer, t0.byteOffset, sectors * 4);
    for (let i = 0, w = 0; i < sectors; i++) {
      let w0 = t[i * 4]!;
      let w1 = t[i * 4 + 1]!;
      let w2 = t[i * 4 + 2]!;
      let w3 = t[i * 4 + 3]!;
      for (let j = 0; j < SECTOR / XTS_BLOCK; j++, w += 4) {
        d[w]! ^= w0;
        d[w + 1]! ^= w1;
        d[w + 2]! ^= w2;
        d[w + 3]! ^= w3;
        const carry = w3 >>> 31;
        w3 = ((w3 << 1) | (w2 >>> 31)) >>> 0;
        w2 = ((w2 << 1) | (w1 >>> 31)) >>> 0;
        w1 = ((w1 << 1) | (w0 >>> 31)) >>> 0;
        w0 = ((w0 << 1) ^ (carry * 0x87)) >>> 0;
      }
    }
    return;
  }
  // Any alignment and byte order: the same, a byte at a time through DataViews.
  const dv = new DataView(data.buffer, data.byteOffset, data.length);
  const tv = new DataView(t0.buffer, t0.byteOffset, t0.length);
  for (let i = 0, at = 0; i < sectors; i++) {
    let w0 = tv.getUint32(i * XTS_BLOCK, true);
    let w1 = tv.getUint32(i * XTS_BLOCK + 4, true);
    let w2 = tv.getUint32(i * XTS_BLOCK + 8, true);
    let w3 = tv.getUint32(i * XTS_BLOCK + 12, true);
    for (let j = 0; j < SECTOR / XTS_BLOCK; j++, at += XTS_BLOCK) {
      dv.setUint32(at, dv.getUint32(at, true) ^ w0, true);
      dv.setUint32(at + 4, dv.getUint32(at + 4, true) ^ w1, true);
      dv.setUint32(at + 8, dv.getUint32(at + 8, true) ^ w2, true);
      dv.setUint32(at + 12, dv.getUint32(at + 12, true) ^ w3, true);
      const carry = w3 >>> 31;
      w3 = ((w3 << 1) | (w2 >>> 31)) >>> 0;
      w2 = ((w2 << 1) | (w1 >>> 31)) >>> 0;
      w1 = ((w1 << 1) | (w0 >>> 31)) >>> 0;
      w0 = ((w0 << 1) ^ (carry * 0x87)) >>> 0;
    }
  }
}

/**
 * CTR's counter blocks for whole sectors: sector i's block j is its IV plus j, a big-endian number the
 * width of the block (qemu's nettle and gcrypt backends count so).
 */
function counterBlocks(ivs: Uint8Array, count: number, block: number): Uint8Array {
  const perSector = SECTOR / block;
  const out = new Uint8Array(count * SECTOR);
  for (let i = 0; i < count; i++) {
    let at = i * SECTOR;
    out.set(ivs.subarray(i * block, (i + 1) * block), at);
    for (let j = 1; j < perSector; j++, at += block) {
      out.copyWithin(at + block, at, at + block);
      for (let b = at + 2 * block - 1; b >= at + block; b--) {
        const v = (out[b]! + 1) & 0xff;
        out[b] = v;
        if (v !== 0) break;
      }
    }
  }
  return out;
}

/** Encrypts and decrypts runs of whole sectors under one key. */
export class SectorCipher {
  readonly spec: CipherSpec;
  /** The data cipher (XTS: keyed with the first half). */
  readonly #data: BlockCipher;
  /** XTS: the tweak cipher (the second half). */
  readonly #tweak: BlockCipher | undefined;
  /** essiv: the IV cipher, keyed with the hash of the whole key. */
  readonly #iv: BlockCipher | undefined;
  readonly #block: number;

  constructor(crypto: Qcow2CryptoPrimitives, spec: CipherSpec, key: Uint8Array) {
    if (key.length !== spec.keyBytes || !validKeyBytes(spec.cipher, spec.mode, spec.keyBytes)) throw new RangeError(`a ${spec.cipher}-${spec.mode} key of ${key.length} bytes`);
    this.spec = spec;
    const half = key.length / 2;
    this.#data = blockCipher(crypto, spec.cipher, spec.mode === 'xts' ? key.subarray(0, half) : key);
    this.#tweak = spec.mode === 'xts' ? blockCipher(crypto, spec.cipher, key.subarray(half)) : undefined;
    this.#block = this.#data.blockBytes;
    // ECB has no IV (qemu makes none); essiv's IV cipher is the data cipher's family keyed with the hash.
    this.#iv = spec.ivgen === 'essiv' && spec.mode !== 'ecb' ? blockCipher(crypto, spec.cipher, crypto.digest(spec.ivgenHash!, key)) : undefined;
  }

  /** The IVs of `count` sectors from sector `first`, one block each. */
  #ivs(first: number, count: number): Uint8Array {
    const size = this.#block;
    if (!this.#iv) return plainIvs(first, count, this.spec.ivgen === 'plain' ? 32 : 64, size);
    // essiv: plain64 in the IV cipher's block, encrypted, cut (or zero-padded) to the data cipher's block.
    const ivBlock = this.#iv.blockBytes;
    const ivs = plainIvs(first, count, 64, ivBlock);
    this.#iv.encrypt(ivs);
    if (ivBlock === size) return ivs;
    const out = new Uint8Array(count * size);
    for (let i = 0; i < count; i++) out.set(ivs.subarray(i * ivBlock, i * ivBlock + Math.min(ivBlock, size)), i * size);
    return out;
  }

  /** XTS in either direction: each sector's first tweak (its IV under the tweak key), then tweak, block cipher, tweak. */
  #xts(first: number, data: Uint8Array, direction: 'encrypt' | 'decrypt'): void {
    const t0 = this.#ivs(first, data.length / SECTOR);
    this.#tweak!.encrypt(t0);
    xorTweaks(data, t0);
    if (direction === 'encrypt') this.#data.encrypt(data);
    else this.#data.decrypt(data);
    xorTweaks(data, t0);
  }

  /** CTR (its own inverse): the data XORed with the cipher of its counter blocks. */
  #ctr(first: number, data: Uint8Array): void {
    const count = data.length / SECTOR;
    const stream = counterBlocks(this.#ivs(first, count), count, this.#block);
    this.#data.encrypt(stream);
    xorInto(data, stream);
  }

  /** Decrypts whole sectors in place; `first` is the first one's number. */
  decrypt(first: number, data: Uint8Array): void {
    const count = this.#streamModes(first, data, 'decrypt');
    if (count === 0) return;
    // CBC: each block is the block cipher's inverse of it, XORed with the block before it (the IV for a sector's first).
    const block = this.#block;
    const ivs = this.#ivs(first, count);
    const before = new Uint8Array(data.length);
    for (let i = 0; i < count; i++) {
      const at = i * SECTOR;
      before.set(ivs.subarray(i * block, (i + 1) * block), at);
      before.set(data.subarray(at, at + SECTOR - block), at + block);
    }
    this.#data.decrypt(data);
    xorInto(data, before);
  }

  /** Encrypts whole sectors in place; `first` is the first one's number. */
  encrypt(first: number, data: Uint8Array): void {
    const count = this.#streamModes(first, data, 'encrypt');
    if (count === 0) return;
    const block = this.#block;
    const ivs = this.#ivs(first, count);
    for (let i = 0; i < count; i++) this.#data.cbcEncrypt(ivs.subarray(i * block, (i + 1) * block), data.subarray(i * SECTOR, (i + 1) * SECTOR));
  }

  /**
   * Checks that `data` is whole sectors and runs the modes whose two
   * directions share their code (xts, ecb, ctr); answers the sectors CBC,
   * whose directions differ, has left to do (0 once done).
   */
  #streamModes(first: number, data: Uint8Array, direction: 'encrypt' | 'decrypt'): number {
    const count = data.length / SECTOR;
    if (!Number.isInteger(count)) throw new RangeError(`${direction}: not whole sectors`);
    if (count === 0) return 0;
    switch (this.spec.mode) {
      case 'xts':
        this.#xts(first, data, direction);
        return 0;
      case 'ecb':
        if (direction === 'encrypt') this.#data.encrypt(data);
        else this.#data.decrypt(data);
        return 0;
      case 'ctr':
        this.#ctr(first, data);
        return 0;
      case 'cbc':
        return count;
    }
  }
}
