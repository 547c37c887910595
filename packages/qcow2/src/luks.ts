/**
 * The LUKS1 header a qcow2 image keeps in its encryption header clusters
 * (spec: "Full disk encryption header pointer"; the LUKS on-disk format
 * 1.2.1): parsed and bounded before anything is sized by it, described as
 * `qemu-img info` describes it, and unlocked with a passphrase (PBKDF2 of
 * the passphrase opens a key slot, whose key material, merged by the
 * anti-forensic splitter, is the master key if its digest matches).
 */
import { corrupt, hex, invalidArg, readU32Be, unsupported, utf8Decode } from '@img/block';
import type { Qcow2CryptoPrimitives } from './crypto-primitives.js';
import { CIPHER_ALGORITHMS, isCipherAlgorithm, type CipherAlgorithm } from './block-cipher.js';
import { essivKeyValid, SECTOR, SectorCipher, validKeyBytes, type CipherMode, type CipherSpec, type IvGenerator } from './sector-cipher.js';

const FORMAT = 'qcow2';

/** The partition header's size: 208 bytes of fields and 8 key slots of 48. */
export const LUKS_HEADER_SIZE = 592;
const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]; // "LUKS\xba\xbe"
const SLOT_ACTIVE = 0x00ac71f3;
const SLOT_DISABLED = 0x0000dead;
const SLOTS = 8;
/** The splitter's stripes: the spec's value, the only one qemu and cryptsetup accept. */
export const LUKS_STRIPES = 4000;
const DIGEST_BYTES = 20;
/**
 * The most PBKDF2 iterations a slot or the digest may ask for before the
 * passphrase is tried: qemu's default (2 s of hashing) gives a few million
 * on today's machines; a hostile header's 4 G would hash for hours.
 */
export const MAX_PBKDF2_ITERATIONS = 1 << 25;

export interface LuksKeySlot {
  active: boolean;
  iterations: number;
  salt: Uint8Array;
  /** Bytes from the start of the LUKS header. */
  keyOffset: number;
  stripes: number;
}

export interface LuksHeader {
  /** Where the LUKS header is in the image file. */
  at: number;
  cipherName: string;
  cipherModeText: string;
  hash: string;
  /** Bytes from the start of the LUKS header (informational in qcow2). */
  payloadOffset: number;
  /** Bytes of the master key. */
  keyBytes: number;
  /** The cipher as qemu-img info names it: `aes-256`, `xts`, `plain64`, ... (any cipher, decrypted or not). */
  names: { cipherAlg: string; cipherMode: string; ivgenAlg?: string; ivgenHashAlg?: string };
  /** How img decrypts it; undefined for a cipher img does not (the image opens and describes itself, its data does not read). */
  spec: CipherSpec | undefined;
  mkDigest: Uint8Array;
  mkDigestSalt: Uint8Array;
  mkDigestIterations: number;
  uuid: string;
  slots: LuksKeySlot[];
}

function text(b: Uint8Array, at: number, length: number): string {
  const field = b.subarray(at, at + length);
  const nul = field.indexOf(0);
  return utf8Decode(nul < 0 ? field : field.subarray(0, nul));
}

/** "xts-plain64" / "cbc-essiv:sha256" as a mode and IV generator; undefined where img cannot decrypt it (qemu needs the IV generator named, for ecb too). */
function parseMode(mode: string): { mode: CipherMode; ivgen: IvGenerator; ivgenHash?: string } | undefined {
  const m = /^(ecb|cbc|xts|ctr)-(plain|plain64|essiv)(?::([a-z0-9]+))?$/.exec(mode);
  if (!m) return undefined;
  const ivgen = m[2] as IvGenerator;
  // essiv needs its hash; plain and plain64 ignore one (qemu-img create -o encrypt.ivgen-alg=plain64,encrypt.ivgen-hash-alg=sha256 writes "xts-plain64:sha256" and reads it).
  if (ivgen === 'essiv' && m[3] === undefined) return undefined;
  return { mode: m[1] as CipherMode, ivgen, ...(ivgen === 'essiv' ? { ivgenHash: m[3]! } : {}) };
}

/**
 * Parses the LUKS header at the start of `area` (the encryption header
 * clusters, `length` bytes of them at `offset` in the image) and checks
 * every bound the key slots and the unlocking depend on.
 */
export function parseLuksHeader(area: Uint8Array, offset: number, length: number, file: string): LuksHeader {
  const bad = (message: string, at: number, field: string, actual?: unknown) => corrupt(FORMAT, file, `LUKS header at ${hex(offset)}: ${message}`, { field, offset: offset + at, actual });
  if (length < LUKS_HEADER_SIZE || area.length < LUKS_HEADER_SIZE) throw bad(`the encryption header is ${length} bytes, shorter than a LUKS header (${LUKS_HEADER_SIZE})`, 0, 'encryption header length', length);
  if (!MAGIC.every((c, i) => area[i] === c)) throw bad('no LUKS magic ("LUKS\\xba\\xbe")', 0, 'LUKS magic');
  const version = (area[6]! << 8) | area[7]!;
  if (version !== 1) throw unsupported(FORMAT, file, `LUKS header at ${hex(offset)} is version ${version}; only LUKS1 is defined for qcow2`, { field: 'LUKS version', offset: offset + 6, actual: version });
  const cipherName = text(area, 8, 32);
  const cipherModeText = text(area, 40, 32);
  const hash = text(area, 72, 32);
  const payloadSectors = readU32Be(area, 104);
  const keyBytes = readU32Be(area, 108);
  const mkDigestIterations = readU32Be(area, 164);
  const uuid = text(area, 168, 40);
  // Any cipher is described (qemu-img info shows what it cannot open too); img decrypts those of block-cipher.ts in the modes of sector-cipher.ts.
  const general = /^([a-z0-9]+)(?:-([a-z0-9]+)(?::([a-z0-9]+))?)?$/.exec(cipherModeText);
  if (!/^[a-z0-9]+$/.test(cipherName) || !general) throw bad(`the cipher "${cipherName}" in mode "${cipherModeText}" is not a LUKS cipher name`, 8, 'LUKS cipher', `${cipherName}-${cipherModeText}`);
  const xtsLike = general[1] === 'xts';
  if (keyBytes === 0 || keyBytes > 128 || (xtsLike && keyBytes % 2 !== 0)) throw bad(`key_bytes ${keyBytes} is not a key size of ${cipherName}-${general[1]}`, 108, 'LUKS key_bytes', keyBytes);
  const mode = isCipherAlgorithm(cipherName) ? parseMode(cipherModeText) : undefined;
  // XTS of a 64-bit block cipher (cast5) is no mode at all: described, not decrypted, as qemu refuses it.
  const spec = mode && isCipherAlgorithm(cipherName) && (mode.mode !== 'xts' || CIPHER_ALGORITHMS[cipherName].blockBytes === 16) ? { cipher: cipherName, ...mode, keyBytes } : undefined;
  if (spec && !validKeyBytes(spec.cipher, spec.mode, keyBytes)) throw bad(`key_bytes ${keyBytes} is not a key size of ${cipherName}-${spec.mode}`, 108, 'LUKS key_bytes', keyBytes);
  const names = {
    cipherAlg: `${cipherName}-${(xtsLike ? keyBytes / 2 : keyBytes) * 8}`,
    cipherMode: general[1]!,
    ...(general[2] !== undefined ? { ivgenAlg: general[2] } : {}),
    // qemu-img info names the IV hash of essiv only (a plain64 one is in the header, and unused).
    ...(general[3] !== undefined && general[2] === 'essiv' ? { ivgenHashAlg: general[3] } : {}),
  };
  if (mkDigestIterations === 0) throw bad('mk_digest_iter is 0', 164, 'LUKS mk_digest_iter', 0);
  const splitSectors = materialBytes(keyBytes) / SECTOR;
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < SLOTS; i++) {
    const at = 208 + i * 48;
    const state = readU32Be(area, at);
    if (state !== SLOT_ACTIVE && state !== SLOT_DISABLED) throw bad(`key slot ${i} is neither active nor disabled (${hex(state)})`, at, 'LUKS key slot active', state);
    const slot: LuksKeySlot = {
      active: state === SLOT_ACTIVE,
      iterations: readU32Be(area, at + 4),
      salt: area.slice(at + 8, at + 40),
      keyOffset: readU32Be(area, at + 40) * SECTOR,
      stripes: readU32Be(area, at + 44),
    };
    if (slot.stripes !== LUKS_STRIPES) throw bad(`key slot ${i} has ${slot.stripes} stripes (LUKS uses ${LUKS_STRIPES})`, at + 44, 'LUKS key slot stripes', slot.stripes);
    const end = slot.keyOffset + splitSectors * SECTOR;
    if (slot.keyOffset < LUKS_HEADER_SIZE || end > length) {
      throw bad(`key slot ${i}'s key material (${hex(slot.keyOffset)}, ${splitSectors} sectors) lies outside the encryption header area (${length} bytes)`, at + 40, 'LUKS key material offset', slot.keyOffset);
    }
    for (let j = 0; j < i; j++) {
      const o = slots[j]!;
      if (slot.keyOffset < o.keyOffset + splitSectors * SECTOR && o.keyOffset < end) throw bad(`the key material of key slots ${j} and ${i} overlap`, at + 40, 'LUKS key material offset', slot.keyOffset);
    }
    if (slot.active && slot.iterations === 0) throw bad(`active key slot ${i} has 0 iterations`, at + 4, 'LUKS key slot iterations', 0);
    slots.push(slot);
  }
  return {
    at: offset,
    cipherName,
    cipherModeText,
    hash,
    payloadOffset: payloadSectors * SECTOR,
    keyBytes,
    names,
    spec,
    mkDigest: area.slice(112, 112 + DIGEST_BYTES),
    mkDigestSalt: area.slice(132, 164),
    mkDigestIterations,
    uuid,
    slots,
  };
}

/** `qemu-img info`'s "encrypt" object for a LUKS image (keys as qemu names them). */
export function describeLuks(h: LuksHeader): Record<string, unknown> {
  const out: Record<string, unknown> = {
    ...(h.names.ivgenAlg !== undefined ? { 'ivgen-alg': h.names.ivgenAlg } : {}),
    'hash-alg': h.hash,
    'cipher-alg': h.names.cipherAlg,
    uuid: h.uuid,
  };
  if (h.names.ivgenHashAlg !== undefined) out['ivgen-hash-alg'] = h.names.ivgenHashAlg;
  out.format = 'luks';
  out['cipher-mode'] = h.names.cipherMode;
  out.slots = h.slots.map((s) => (s.active ? { active: true, iters: s.iterations, 'key-offset': s.keyOffset, stripes: s.stripes } : { active: false, 'key-offset': s.keyOffset }));
  out['payload-offset'] = h.payloadOffset;
  out['master-key-iters'] = h.mkDigestIterations;
  return out;
}

/** The anti-forensic merge: the stripes folded through the hash diffuser into one key. */
function afMerge(crypto: Qcow2CryptoPrimitives, hash: string, split: Uint8Array, keyBytes: number, stripes: number): Uint8Array {
  const digestBytes = crypto.hashLength(hash)!;
  const d = new Uint8Array(keyBytes);
  const counter = new Uint8Array(4);
  for (let s = 0; s < stripes - 1; s++) {
    const stripe = split.subarray(s * keyBytes, (s + 1) * keyBytes);
    for (let i = 0; i < keyBytes; i++) d[i]! ^= stripe[i]!;
    // Diffuse: each digest-sized piece becomes the hash of its index (big-endian) and itself, cut to its length.
    for (let at = 0, n = 0; at < keyBytes; at += digestBytes, n++) {
      const piece = d.subarray(at, Math.min(keyBytes, at + digestBytes));
      new DataView(counter.buffer).setUint32(0, n, false);
      const input = new Uint8Array(4 + piece.length);
      input.set(counter, 0);
      input.set(piece, 4);
      piece.set(crypto.digest(hash, input).subarray(0, piece.length));
    }
  }
  const last = split.subarray((stripes - 1) * keyBytes, stripes * keyBytes);
  for (let i = 0; i < keyBytes; i++) d[i]! ^= last[i]!;
  return d;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Refuses a header img cannot unlock on this platform, or whose iterations are past the bound, before any PBKDF2 runs. */
export function checkUnlockable(crypto: Qcow2CryptoPrimitives, h: LuksHeader, file: string): asserts h is LuksHeader & { spec: CipherSpec } {
  if (!h.spec) {
    throw unsupported(
      FORMAT,
      file,
      `the LUKS cipher "${h.cipherName}-${h.cipherModeText}" is not one img decrypts (aes, serpent or twofish in ecb, cbc, xts or ctr mode, cast5 in ecb, cbc or ctr; IVs plain, plain64 or essiv:hash): the image describes itself, its data does not read`,
      {
        field: 'LUKS cipher',
        offset: h.at + 8,
        actual: `${h.cipherName}-${h.cipherModeText}`,
      },
    );
  }
  const hashes = [h.hash, ...(h.spec.ivgenHash !== undefined ? [h.spec.ivgenHash] : [])];
  for (const name of hashes) {
    if (crypto.hashLength(name) === undefined) throw unsupported(FORMAT, file, `the LUKS header names the hash "${name}", which this platform's crypto (${crypto.name}) does not have`, { field: 'LUKS hash_spec', offset: h.at + (name === h.hash ? 72 : 40), actual: name });
  }
  if (h.spec.ivgenHash !== undefined && !essivKeyValid(h.spec.cipher, crypto.hashLength(h.spec.ivgenHash)!)) {
    throw unsupported(FORMAT, file, `essiv:${h.spec.ivgenHash} gives a ${crypto.hashLength(h.spec.ivgenHash)}-byte IV key, not a ${h.spec.cipher} key size`, { field: 'LUKS cipher_mode', offset: h.at + 40, actual: h.cipherModeText });
  }
  const tooMany = (what: string, n: number, at: number) => unsupported(FORMAT, file, `${what} asks for ${n} PBKDF2 iterations, more than img runs (${MAX_PBKDF2_ITERATIONS})`, { field: 'LUKS iterations', offset: h.at + at, actual: n });
  if (h.mkDigestIterations > MAX_PBKDF2_ITERATIONS) throw tooMany('the master key digest', h.mkDigestIterations, 164);
  h.slots.forEach((s, i) => {
    if (s.active && s.iterations > MAX_PBKDF2_ITERATIONS) throw tooMany(`key slot ${i}`, s.iterations, 208 + i * 48 + 4);
  });
}

/** The bytes of a slot's key material as stored (its stripes, to whole sectors). */
export function materialBytes(keyBytes: number): number {
  return Math.ceil((keyBytes * LUKS_STRIPES) / SECTOR) * SECTOR;
}

/** The master key `passphrase` opens through active slot `slot`, or undefined (the digest does not match). */
export async function openSlot(crypto: Qcow2CryptoPrimitives, h: LuksHeader & { spec: CipherSpec }, slot: LuksKeySlot, passphrase: Uint8Array, readArea: (at: number, length: number) => Promise<Uint8Array>): Promise<Uint8Array | undefined> {
  const keyBytes = h.spec.keyBytes;
  const slotKey = await crypto.pbkdf2(passphrase, slot.salt, slot.iterations, keyBytes, h.hash);
  const material = await readArea(slot.keyOffset, materialBytes(keyBytes));
  new SectorCipher(crypto, h.spec, slotKey).decrypt(0, material);
  const candidate = afMerge(crypto, h.hash, material, keyBytes, LUKS_STRIPES);
  const digest = await crypto.pbkdf2(candidate, h.mkDigestSalt, h.mkDigestIterations, DIGEST_BYTES, h.hash);
  return equalBytes(digest, h.mkDigest) ? candidate : undefined;
}

/**
 * The master key the passphrase unlocks, trying each active slot in turn;
 * `readArea(at, length)` reads bytes of the encryption header area.
 * ERR_IMG_INVALID_ARG when no slot opens.
 */
export async function unlockMasterKey(crypto: Qcow2CryptoPrimitives, h: LuksHeader, passphrase: Uint8Array, readArea: (at: number, length: number) => Promise<Uint8Array>, file: string): Promise<Uint8Array> {
  checkUnlockable(crypto, h, file);
  const active = h.slots.filter((s) => s.active);
  for (const s of active) {
    const key = await openSlot(crypto, h, s, passphrase, readArea);
    if (key) return key;
  }
  throw invalidArg(FORMAT, `${file}: the passphrase unlocks none of the image's ${active.length} active LUKS key slot${active.length === 1 ? '' : 's'} (wrong passphrase?)`, { file, field: 'passphrase' });
}

/** {@link unlockMasterKey}, as the cipher of the data. */
export async function unlockLuks(crypto: Qcow2CryptoPrimitives, h: LuksHeader, passphrase: Uint8Array, readArea: (at: number, length: number) => Promise<Uint8Array>, file: string): Promise<SectorCipher> {
  const key = await unlockMasterKey(crypto, h, passphrase, readArea, file);
  return new SectorCipher(crypto, h.spec!, key);
}

/** A key slot sealed under `passphrase`: its salt, iterations and encrypted key material (the master key split in 4000 stripes). */
export async function sealSlot(crypto: Qcow2CryptoPrimitives, spec: CipherSpec, hash: string, master: Uint8Array, passphrase: Uint8Array, iterations: number): Promise<{ salt: Uint8Array; iterations: number; material: Uint8Array }> {
  const salt = crypto.randomBytes(32);
  const slotKey = await crypto.pbkdf2(passphrase, salt, iterations, spec.keyBytes, hash);
  const material = new Uint8Array(materialBytes(spec.keyBytes));
  material.set(afSplit(crypto, hash, master, LUKS_STRIPES));
  new SectorCipher(crypto, spec, slotKey).encrypt(0, material);
  return { salt, iterations, material };
}

/** A key slot's 48 bytes in the LUKS header: state, iterations, salt, key material offset (sectors), stripes. */
export function slotEntry(active: boolean, keyOffset: number, sealed?: { salt: Uint8Array; iterations: number }): Uint8Array {
  const out = new Uint8Array(48);
  const v = new DataView(out.buffer);
  v.setUint32(0, active ? SLOT_ACTIVE : SLOT_DISABLED);
  if (sealed) {
    v.setUint32(4, sealed.iterations);
    out.set(sealed.salt, 8);
  }
  v.setUint32(40, keyOffset / SECTOR);
  v.setUint32(44, LUKS_STRIPES);
  return out;
}

/** Where slot `i`'s 48 bytes are in the LUKS header. */
export function slotEntryOffset(i: number): number {
  return 208 + i * 48;
}

/** The bytes of one slot's key material area: its stripes, to a 4 KiB boundary (qemu's layout). */
function slotAreaBytes(keyBytes: number): number {
  return Math.ceil((keyBytes * LUKS_STRIPES) / 4096) * 4096;
}

/** The bytes of the encryption header area of a new image (the payload offset): 4 KiB of header, then 8 slots. */
export function luksAreaBytes(keyBytes: number): number {
  return 4096 + SLOTS * slotAreaBytes(keyBytes);
}

/** What a new LUKS header is made with. */
export interface LuksCreateSpec {
  spec: CipherSpec;
  hash: string;
  /** Milliseconds of PBKDF2 each key slot takes to open (qemu's iter-time; default 2000). */
  iterTimeMs: number;
  /**
   * A hash named after a plain or plain64 IV generator in the cipher mode
   * ("xts-plain64:sha256"), which they do not use: qemu-img create writes
   * one where encrypt.ivgen-hash-alg is given with them.
   */
  unusedIvgenHash?: string;
}

/** The hashes qemu takes for LUKS (its QCryptoHashAlgorithm names). */
export const LUKS_HASHES: readonly string[] = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'];

/** The cipher options of a new LUKS header, as qemu-img takes them (`-o` values; qcow2 spells them `encrypt.*`). */
export interface LuksCipherOptions {
  cipherAlg?: unknown;
  cipherMode?: unknown;
  ivgenAlg?: unknown;
  ivgenHashAlg?: unknown;
  hashAlg?: unknown;
  iterTime?: unknown;
}

/** The digest lengths of {@link LUKS_HASHES}, for essiv's IV key (it is the whole digest). */
const LUKS_HASH_BYTES: Readonly<Record<string, number>> = { md5: 16, sha1: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64, ripemd160: 20 };

/** The `cipher-alg` values qemu-img 7.2 takes here, as cipher and key bytes (one key; xts takes two). */
const CREATE_CIPHERS: Readonly<Record<string, { cipher: CipherAlgorithm; bytes: number }>> = Object.fromEntries(
  (Object.entries(CIPHER_ALGORITHMS) as [CipherAlgorithm, (typeof CIPHER_ALGORITHMS)['aes']][]).flatMap(([cipher, c]) => c.keyBytes.map((bytes) => [`${cipher}-${bytes * 8}`, { cipher, bytes }])),
);
const MODES: readonly string[] = ['ecb', 'cbc', 'xts', 'ctr'];
/** The names qemu's essiv refusals give the ciphers. */
const ESSIV_NAMES: Readonly<Record<CipherAlgorithm, string>> = { aes: 'AES', serpent: 'Serpent', twofish: 'Twofish', cast5: 'CAST5' };

/**
 * The header a new LUKS image is made with, from qemu-img's options, checked
 * with qemu's defaults (aes-256, xts, plain64, sha256, 2000 ms) and refused
 * where qemu-img 7.2 refuses: aes, serpent and twofish of 128, 192 or 256
 * bits and cast5-128, in ecb, cbc, xts (not cast5: its blocks are 8 bytes)
 * or ctr mode; a 192-bit key only in xts (qemu-img 7.2 aborts on the others);
 * essiv only with a hash whose digest is a key size of the cipher (its IV
 * cipher is keyed with the digest). An IV hash beside plain or plain64 is
 * kept for the cipher mode's name, unused, as qemu-img writes it. `format`
 * and `prefix` ("encrypt." for qcow2) name the refusals.
 */
export function luksCreateSpecOf(o: LuksCipherOptions, format: string, prefix: string): LuksCreateSpec {
  const name = (key: string) => `${prefix}${key}`;
  const alg = String(o.cipherAlg ?? 'aes-256');
  const known = Object.hasOwn(CREATE_CIPHERS, alg) ? CREATE_CIPHERS[alg] : undefined;
  if (known === undefined) {
    if (/^(des|3des)$/.test(alg)) throw unsupported(format, undefined, `${name('cipher-alg')}=${alg}: qemu-img 7.2 here does not support it (Algorithm '${alg}' not supported), nor does img`, { field: name('cipher-alg'), actual: alg });
    throw invalidArg(format, `invalid ${name('cipher-alg')} "${alg}" (${Object.keys(CREATE_CIPHERS).join(', ')})`, { field: name('cipher-alg'), actual: alg });
  }
  const { cipher, bytes } = known;
  const mode = String(o.cipherMode ?? 'xts');
  if (!MODES.includes(mode)) throw invalidArg(format, `invalid ${name('cipher-mode')} "${mode}" (${MODES.join(', ')})`, { field: name('cipher-mode'), actual: mode });
  if (mode === 'xts' && CIPHER_ALGORITHMS[cipher].blockBytes !== 16) {
    throw invalidArg(format, `${name('cipher-mode')}=xts needs a cipher of 16-byte blocks, and ${alg} has ${CIPHER_ALGORITHMS[cipher].blockBytes}-byte ones (qemu-img: Unsupported cipher mode xts): use ecb, cbc or ctr`, { field: name('cipher-mode'), actual: mode });
  }
  // 24-byte keys in 4000 stripes are 187.5 sectors of key material: LUKS pads them, qemu-img 7.2 aborts on them (xts keys are 48 bytes: whole sectors).
  if (bytes === 24 && mode !== 'xts') {
    throw unsupported(format, undefined, `${alg} in ${mode} mode makes key material of 187.5 sectors, which qemu-img 7.2 aborts on (an assertion) when it makes or opens the image: use a 128- or 256-bit key, or xts`, { field: name('cipher-alg') });
  }
  const ivgen = String(o.ivgenAlg ?? 'plain64');
  if (ivgen !== 'plain' && ivgen !== 'plain64' && ivgen !== 'essiv') throw invalidArg(format, `invalid ${name('ivgen-alg')} "${ivgen}" (plain, plain64 or essiv)`, { field: name('ivgen-alg'), actual: ivgen });
  const ivgenHash = o.ivgenHashAlg === undefined ? undefined : String(o.ivgenHashAlg);
  if (ivgenHash !== undefined && !LUKS_HASHES.includes(ivgenHash)) throw invalidArg(format, `invalid ${name('ivgen-hash-alg')} "${ivgenHash}" (${LUKS_HASHES.join(', ')})`, { field: name('ivgen-hash-alg'), actual: ivgenHash });
  if (ivgen === 'essiv') {
    const hash = ivgenHash ?? 'sha256';
    const digest = LUKS_HASH_BYTES[hash]!;
    if (!essivKeyValid(cipher, digest)) {
      const sizes = CIPHER_ALGORITHMS[cipher].keyBytes;
      throw invalidArg(
        format,
        `${name('ivgen-hash-alg')}=${hash} gives a ${digest}-byte digest, and essiv keys ${cipher} with it (${sizes.join(', ')} bytes: ${sizes.includes(32) ? 'sha256' : 'md5'}, say); qemu-img: ${
          cipher === 'cast5' ? `Cipher ${alg} not supported with essiv` : `No ${ESSIV_NAMES[cipher]} cipher with key size ${digest} available`
        }`,
        { field: name('ivgen-hash-alg'), actual: hash },
      );
    }
  }
  const iterTime = Number(o.iterTime ?? 2000);
  if (!Number.isFinite(iterTime) || iterTime <= 0) throw invalidArg(format, `invalid ${name('iter-time')} "${String(o.iterTime)}" (milliseconds above 0)`, { field: name('iter-time') });
  return {
    spec: { cipher, mode: mode as CipherMode, ivgen, ...(ivgen === 'essiv' ? { ivgenHash: ivgenHash ?? 'sha256' } : {}), keyBytes: mode === 'xts' ? bytes * 2 : bytes },
    hash: String(o.hashAlg ?? 'sha256'),
    iterTimeMs: iterTime,
    ...(ivgenHash !== undefined && ivgen !== 'essiv' ? { unusedIvgenHash: ivgenHash } : {}),
  };
}

/** The anti-forensic split: `stripes` stripes, all random but the last, which merges with them into `key`. */
function afSplit(crypto: Qcow2CryptoPrimitives, hash: string, key: Uint8Array, stripes: number): Uint8Array {
  const keyBytes = key.length;
  const split = new Uint8Array(keyBytes * stripes);
  split.set(crypto.randomBytes(keyBytes * (stripes - 1)));
  // The merge of the random stripes alone, then the last stripe is what turns it into the key.
  const randomOnly = split.slice();
  randomOnly.fill(0, (stripes - 1) * keyBytes);
  const merged = afMerge(crypto, hash, randomOnly, keyBytes, stripes);
  const last = split.subarray((stripes - 1) * keyBytes);
  for (let i = 0; i < keyBytes; i++) last[i] = merged[i]! ^ key[i]!;
  return split;
}

/** PBKDF2 iterations that take `ms` on this machine (at least `floor`), from a short timed run. */
export async function iterationsFor(crypto: Qcow2CryptoPrimitives, hash: string, keyBytes: number, ms: number, floor: number): Promise<number> {
  const probe = 20000;
  const started = performance.now();
  await crypto.pbkdf2(new Uint8Array(16), new Uint8Array(32), probe, keyBytes, hash);
  const perMs = probe / Math.max(0.05, performance.now() - started);
  return Math.min(MAX_PBKDF2_ITERATIONS, Math.max(floor, Math.round(perMs * ms)));
}

function writeText(out: Uint8Array, at: number, length: number, text: string): void {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length >= length) throw new RangeError(`"${text}" does not fit in ${length} bytes`);
  out.set(bytes, at);
}

/** A random (version 4) UUID in its text form. */
function randomUuid(crypto: Qcow2CryptoPrimitives): string {
  const b = crypto.randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A new LUKS1 header and its key material, laid out as qemu lays them out
 * (the header, then each slot's key material at 4 KiB boundaries, slot 0
 * holding the master key under `passphrase`, slots 1-7 disabled): the bytes
 * of the encryption header area (its length is the payload offset), and
 * the master key's cipher for the data.
 */
export async function createLuksArea(crypto: Qcow2CryptoPrimitives, c: LuksCreateSpec, passphrase: Uint8Array): Promise<{ area: Uint8Array; cipher: SectorCipher }> {
  const { spec, hash } = c;
  const keyBytes = spec.keyBytes;
  const slotBytes = slotAreaBytes(keyBytes);
  const payload = luksAreaBytes(keyBytes);
  const area = new Uint8Array(payload);
  const v = new DataView(area.buffer);
  const master = crypto.randomBytes(keyBytes);
  area.set(MAGIC, 0);
  v.setUint16(6, 1);
  writeText(area, 8, 32, spec.cipher);
  const modeHash = spec.ivgenHash ?? c.unusedIvgenHash;
  writeText(area, 40, 32, `${spec.mode}-${spec.ivgen}${modeHash !== undefined ? `:${modeHash}` : ''}`);
  writeText(area, 72, 32, hash);
  v.setUint32(104, payload / SECTOR);
  v.setUint32(108, keyBytes);
  // As qemu: the digest takes an eighth of the slot's time, at least 1000 iterations (LUKS's floor).
  const slotIterations = await iterationsFor(crypto, hash, keyBytes, c.iterTimeMs, 1000);
  const digestIterations = await iterationsFor(crypto, hash, DIGEST_BYTES, c.iterTimeMs / 8, 1000);
  const mkSalt = crypto.randomBytes(32);
  area.set(await crypto.pbkdf2(master, mkSalt, digestIterations, DIGEST_BYTES, hash), 112);
  area.set(mkSalt, 132);
  v.setUint32(164, digestIterations);
  writeText(area, 168, 40, randomUuid(crypto));
  for (let i = 0; i < SLOTS; i++) {
    const offset = 4096 + i * slotBytes;
    if (i !== 0) {
      area.set(slotEntry(false, offset), slotEntryOffset(i));
      continue;
    }
    const sealed = await sealSlot(crypto, spec, hash, master, passphrase, slotIterations);
    area.set(slotEntry(true, offset, sealed), slotEntryOffset(i));
    area.set(sealed.material, offset);
  }
  return { area, cipher: new SectorCipher(crypto, spec, master) };
}
