/**
 * Sector encryption as qcow2's two methods use it: AES in XTS or CBC mode
 * over 512-byte sectors, each with its own IV made from its sector number
 * (plain: the low 32 bits, plain64: all 64, little-endian; essiv: plain64
 * encrypted under a hash of the key). XTS and CBC decryption are built
 * from the platform's AES block function over a whole run of sectors at
 * once (one call for the tweaks or IVs, one for the data), instead of a
 * cipher object per sector.
 */
import type { Qcow2CryptoPrimitives } from './crypto-primitives.js';

/** The unit of encryption: each 512-byte sector has its own IV. */
export const SECTOR = 512;
const BLOCK = 16;

/** AES modes encrypted images use. */
export type CipherMode = 'xts' | 'cbc';
/** How a sector number becomes its IV. */
export type IvGenerator = 'plain' | 'plain64' | 'essiv';

/** What a key encrypts with: AES, a mode, and how IVs are made. */
export interface CipherSpec {
  mode: CipherMode;
  ivgen: IvGenerator;
  /** essiv: the hash of the key that keys the IV cipher. */
  ivgenHash?: string;
  /** Bytes of key (XTS: both halves). */
  keyBytes: number;
}

/** AES key sizes a mode takes (XTS: two keys). */
export function validKeyBytes(mode: CipherMode, keyBytes: number): boolean {
  const one = mode === 'xts' ? keyBytes / 2 : keyBytes;
  return one === 16 || one === 24 || one === 32;
}

/** XORs `src` into `dst` (equal lengths, multiples of 16). */
function xorInto(dst: Uint8Array, src: Uint8Array): void {
  if (dst.byteOffset % 4 === 0 && src.byteOffset % 4 === 0) {
    const d = new Uint32Array(dst.buffer, dst.byteOffset, dst.length / 4);
    const s = new Uint32Array(src.buffer, src.byteOffset, src.length / 4);
    for (let i = 0; i < d.length; i++) d[i]! ^= s[i]!;
    return;
  }
  for (let i = 0; i < dst.length; i++) dst[i]! ^= src[i]!;
}

/** The sectors' plain64 (or plain) IV blocks, one 16-byte block each. */
function plainIvs(first: number, count: number, bits: 32 | 64): Uint8Array {
  const out = new Uint8Array(count * BLOCK);
  const v = new DataView(out.buffer);
  for (let i = 0; i < count; i++) {
    const s = first + i;
    v.setUint32(i * BLOCK, s % 2 ** 32, true);
    if (bits === 64) v.setUint32(i * BLOCK + 4, Math.floor(s / 2 ** 32), true);
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
      for (let j = 0; j < SECTOR / BLOCK; j++, w += 4) {
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
    let w0 = tv.getUint32(i * BLOCK, true);
    let w1 = tv.getUint32(i * BLOCK + 4, true);
    let w2 = tv.getUint32(i * BLOCK + 8, true);
    let w3 = tv.getUint32(i * BLOCK + 12, true);
    for (let j = 0; j < SECTOR / BLOCK; j++, at += BLOCK) {
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

/** Encrypts and decrypts runs of whole sectors under one key. */
export class SectorCipher {
  readonly spec: CipherSpec;
  readonly #crypto: Qcow2CryptoPrimitives;
  /** The data key (XTS: the first half). */
  readonly #key: Uint8Array;
  /** XTS: the tweak key (the second half). */
  readonly #tweakKey: Uint8Array | undefined;
  /** essiv: the IV key, the hash of the whole key. */
  readonly #ivKey: Uint8Array | undefined;

  constructor(crypto: Qcow2CryptoPrimitives, spec: CipherSpec, key: Uint8Array) {
    if (key.length !== spec.keyBytes || !validKeyBytes(spec.mode, spec.keyBytes)) throw new RangeError(`a ${spec.mode} key of ${key.length} bytes`);
    this.spec = spec;
    this.#crypto = crypto;
    const half = key.length / 2;
    this.#key = spec.mode === 'xts' ? key.slice(0, half) : key.slice();
    this.#tweakKey = spec.mode === 'xts' ? key.slice(half) : undefined;
    this.#ivKey = spec.ivgen === 'essiv' ? crypto.digest(spec.ivgenHash!, key) : undefined;
  }

  /** The IVs of `count` sectors from sector `first`. */
  #ivs(first: number, count: number): Uint8Array {
    const plain = plainIvs(first, count, this.spec.ivgen === 'plain' ? 32 : 64);
    return this.#ivKey ? this.#crypto.aesBlocks(this.#ivKey, 'encrypt', plain) : plain;
  }

  /** XTS in either direction: each sector's first tweak (its IV under the tweak key), then tweak, block cipher, tweak. */
  #xts(first: number, data: Uint8Array, direction: 'encrypt' | 'decrypt'): void {
    const t0 = this.#crypto.aesBlocks(this.#tweakKey!, 'encrypt', this.#ivs(first, data.length / SECTOR));
    xorTweaks(data, t0);
    data.set(this.#crypto.aesBlocks(this.#key, direction, data));
    xorTweaks(data, t0);
  }

  /** Decrypts whole sectors in place; `first` is the first one's number. */
  decrypt(first: number, data: Uint8Array): void {
    const count = data.length / SECTOR;
    if (!Number.isInteger(count)) throw new RangeError('decrypt: not whole sectors');
    if (count === 0) return;
    if (this.spec.mode === 'xts') return this.#xts(first, data, 'decrypt');
    // CBC: each block is the block cipher's inverse of it, XORed with the block before it (the IV for a sector's first).
    const ivs = this.#ivs(first, count);
    const before = new Uint8Array(data.length);
    for (let i = 0; i < count; i++) {
      const at = i * SECTOR;
      before.set(ivs.subarray(i * BLOCK, (i + 1) * BLOCK), at);
      before.set(data.subarray(at, at + SECTOR - BLOCK), at + BLOCK);
    }
    data.set(this.#crypto.aesBlocks(this.#key, 'decrypt', data));
    xorInto(data, before);
  }

  /** Encrypts whole sectors in place; `first` is the first one's number. */
  encrypt(first: number, data: Uint8Array): void {
    const count = data.length / SECTOR;
    if (!Number.isInteger(count)) throw new RangeError('encrypt: not whole sectors');
    if (count === 0) return;
    if (this.spec.mode === 'xts') return this.#xts(first, data, 'encrypt');
    const ivs = this.#ivs(first, count);
    for (let i = 0; i < count; i++) {
      const sector = data.subarray(i * SECTOR, (i + 1) * SECTOR);
      sector.set(this.#crypto.aesCbcEncrypt(this.#key, ivs.subarray(i * BLOCK, (i + 1) * BLOCK), sector));
    }
  }
}
