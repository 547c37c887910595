/**
 * createLuks: a new luks image, as `qemu-img create -f luks` makes one: a
 * LUKS1 header whose slot 0 holds a new random master key under the
 * passphrase (PBKDF2 iterations timed to `iterTime` ms), slots 1-7
 * disabled, the key material of each slot at 4 KiB boundaries, and the
 * payload (the guest disk) after them; the file is the payload offset
 * plus the size, nothing of the payload written. Only the header's
 * non-zero blocks are written, so the file is as sparse as qemu's.
 */
import { driverOptions, invalidArg, isAllZero, preallocateRange, unsupported, utf8Encode, type CreateOptions, type OptionTable, type Storage } from '@img/block';
import { createLuksArea, luksCreateSpecOf, readyCryptoPrimitives, type LuksCreateSpec } from '@img/qcow2/luks';
import { LuksDisk } from './disk.js';
import { LuksImage } from './image.js';
import { FORMAT, luksCall } from './luks-errors.js';
import { readLuksVolume } from './header.js';

/** Options of {@link createLuks}: qemu-img's `-o` options of the luks format, under typed keys. */
export interface LuksCreateOptions extends CreateOptions {
  /** The passphrase of key slot 0 (required). */
  passphrase?: string | Uint8Array;
  /** qemu-img's `key-secret`: the id of a `--object secret` (the command line resolves it to `passphrase`). */
  keySecret?: string;
  /** aes-256 (default), aes-128, aes-192, serpent-128/192/256, twofish-128/192/256 or cast5-128 (192-bit keys in xts mode only). */
  cipherAlg?: string;
  /** xts (default), cbc, ecb or ctr (cast5: not xts). */
  cipherMode?: string;
  /** plain64 (default), plain or essiv. */
  ivgenAlg?: string;
  /** The hash essiv keys its IV cipher with (default sha256); beside plain or plain64 it is only named in the cipher mode, as qemu-img writes it. */
  ivgenHashAlg?: string;
  /** The hash of PBKDF2 and the anti-forensic splitter (default sha256). */
  hashAlg?: string;
  /** Milliseconds of PBKDF2 a key slot takes to open (default 2000). */
  iterTime?: number;
  /**
   * off (default) and metadata leave the file sparse; falloc and full give
   * the whole file its space (fallocate, or zeros), as qemu-img's luks
   * create does with them. Either way the unwritten payload reads as the
   * decryption of whatever the file holds there, as with qemu.
   */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
}

/** qemu-img's luks create options, in its `-o help` order and words. */
export const LUKS_CREATE_OPTIONS: OptionTable = [
  { key: 'cipherAlg', name: 'cipher-alg', kind: 'str', help: 'Name of encryption cipher algorithm' },
  { key: 'cipherMode', name: 'cipher-mode', kind: 'str', help: 'Name of encryption cipher mode' },
  { key: 'hashAlg', name: 'hash-alg', kind: 'str', help: 'Name of encryption hash algorithm' },
  { key: 'iterTime', name: 'iter-time', kind: 'num', help: 'Time to spend in PBKDF in milliseconds' },
  { key: 'ivgenAlg', name: 'ivgen-alg', kind: 'str', help: 'Name of IV generator algorithm' },
  { key: 'ivgenHashAlg', name: 'ivgen-hash-alg', kind: 'str', help: 'Name of IV generator hash algorithm' },
  { key: 'keySecret', name: 'key-secret', kind: 'str', help: 'ID of the secret that provides the keyslot passphrase' },
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  // qemu-img takes it as an option of the file underneath (its -o help lists it under "the protocol level").
  { key: 'preallocation', name: 'preallocation', kind: 'str', help: 'off (default), metadata, falloc or full: falloc and full give the whole file its space' },
];

const PREALLOCATIONS = ['off', 'metadata', 'falloc', 'full'] as const;

/** Typed keys create takes beyond the table. */
export const LUKS_TYPED_CREATE_KEYS: readonly string[] = ['passphrase'];

/** The cipher, hash and PBKDF2 time of a new header, checked as encrypted qcow2's are (no passphrase needed: measure uses it too). */
export function luksCreateSpec(o: Record<string, unknown>): LuksCreateSpec {
  return luksCreateSpecOf(o, FORMAT, '');
}

/** The options of a create, under typed keys (`-o` names accepted too), with the passphrase required. */
export function luksCreateOptionsFrom(given: object): { size: number; spec: LuksCreateSpec; passphrase: Uint8Array; preallocation: (typeof PREALLOCATIONS)[number] } {
  const o = driverOptions(FORMAT, LUKS_CREATE_OPTIONS, given, { extra: LUKS_TYPED_CREATE_KEYS });
  const size = o.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalidArg(FORMAT, `invalid size ${String(size)}`, { field: 'size' });
  const preallocation = o.preallocation ?? 'off';
  if (!(PREALLOCATIONS as readonly unknown[]).includes(preallocation)) {
    throw invalidArg(FORMAT, `Parameter 'preallocation' does not accept value '${String(preallocation)}' (off, metadata, falloc, full)`, { field: 'preallocation', actual: preallocation });
  }
  const spec = luksCreateSpec(o);
  const passphrase = o.passphrase;
  if (passphrase === undefined) {
    throw invalidArg(
      FORMAT,
      o.keySecret !== undefined
        ? `key-secret=${String(o.keySecret)} names a secret of the command line (--object secret,id=...); from code, give passphrase`
        : "Parameter 'key-secret' is required for cipher (the passphrase option; on the command line key-secret=ID with --object secret,id=ID,data=...)",
      { field: 'key-secret' },
    );
  }
  if (typeof passphrase !== 'string' && !(passphrase instanceof Uint8Array)) throw invalidArg(FORMAT, 'passphrase is a string or bytes', { field: 'passphrase' });
  return { size, spec, passphrase: typeof passphrase === 'string' ? utf8Encode(passphrase) : passphrase, preallocation: preallocation as (typeof PREALLOCATIONS)[number] };
}

/** The zero blocks of the header area are left unwritten (holes, as qemu leaves the key material of unused slots). */
const WRITE_BLOCK = 4096;

/**
 * Creates a luks image in `storage` (its old content is discarded) and
 * answers it open for writing, unlocked.
 *
 * @example
 * ```ts
 * await using disk = await createLuks(storage, { size: 1 << 30, passphrase: 'correct horse', iterTime: 500 });
 * await disk.write(0, bootSector);
 * ```
 */
export async function createLuks(storage: Storage, options: LuksCreateOptions): Promise<LuksDisk> {
  const { size, spec, passphrase, preallocation } = luksCreateOptionsFrom(options);
  const allocate = preallocation === 'falloc' || preallocation === 'full';
  const crypto = await readyCryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, storage.name, 'creating a LUKS image needs crypto primitives, and this platform has none installed (setQcow2CryptoPrimitives of @img/qcow2)', { field: 'cipher-alg' });
  for (const hash of [spec.hash, ...(spec.spec.ivgenHash !== undefined ? [spec.spec.ivgenHash] : [])]) {
    if (crypto.hashLength(hash) === undefined) throw unsupported(FORMAT, storage.name, `the hash "${hash}" is not one this platform's crypto (${crypto.name}) has`, { field: hash === spec.hash ? 'hash-alg' : 'ivgen-hash-alg', actual: hash });
  }
  const { area, cipher } = await luksCall(() => createLuksArea(crypto, spec, passphrase));
  if (area.length + size > Number.MAX_SAFE_INTEGER) throw invalidArg(FORMAT, `invalid size ${size}`, { field: 'size' });
  await storage.truncate(0);
  for (let at = 0; at < area.length; at += WRITE_BLOCK) {
    const block = area.subarray(at, Math.min(area.length, at + WRITE_BLOCK));
    // Preallocated: the header's zero blocks are written too, so that the whole file has its space.
    if (allocate || !isAllZero(block)) await storage.write(at, block);
  }
  await storage.truncate(area.length + size);
  if (allocate) await preallocateRange(storage, area.length, size, preallocation);
  await storage.flush();
  // Read back as any open reads it, so that the new image is held to the same bounds.
  const { header, payloadOffset } = await readLuksVolume(storage, area.length + size, storage.name);
  return new LuksDisk(new LuksImage({ storage, header, payloadOffset, fileSize: area.length + size, readOnly: false, cipher }));
}
