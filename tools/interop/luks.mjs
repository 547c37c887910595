// LUKS encryption in the campaign: the qcow2 encrypt.* create options that
// both qemu-img 7.2 and img take, drawn at random, and the passphrase both
// tools are given (lib.mjs spells it on their command lines).
import { SECRET_ID } from './lib.mjs';

/** Every value the write cases try for each encrypt.* option (`img create -f qcow2 -o help`). */
export const LUKS_VALUES = {
  'encrypt.format': ['luks'],
  'encrypt.key-secret': [SECRET_ID],
  'encrypt.cipher-alg': ['aes-128', 'aes-192', 'aes-256'],
  'encrypt.cipher-mode': ['xts', 'cbc'],
  'encrypt.ivgen-alg': ['plain', 'plain64', 'essiv'],
  // essiv keys AES with the digest: 16 bytes (md5) or 32 (sha256); sha1, sha224, sha384 and sha512 are refused by both tools.
  'encrypt.ivgen-hash-alg': ['sha256', 'md5'],
  'encrypt.hash-alg': ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'],
  'encrypt.iter-time': ['10', '50'],
};

/** PBKDF2 milliseconds: small, since every open of the image (a dozen per case) runs the slot's and the digest's iterations. */
export const ITER_TIMES = ['10', '20', '30', '50'];

/**
 * The encrypt.iter-time values qemu-img is given, one after another, while
 * it fails to time PBKDF2 (lib.mjs qemuLuks): on a loaded VM 4 in 10 tries
 * fail, so 8 tries leave about 1 preparation in 1500 skipped.
 */
export const RETRY_ITER_TIMES = ['10', '20', '30', '50', '15', '25', '40', '35'];

/** What qemu-img and img write when an option is left out (qemu's defaults). */
const DEFAULTS = { 'encrypt.cipher-alg': 'aes-256', 'encrypt.cipher-mode': 'xts', 'encrypt.ivgen-alg': 'plain64', 'encrypt.ivgen-hash-alg': 'sha256', 'encrypt.hash-alg': 'sha256' };

/**
 * Random encrypt.* options (name -> value) valid for both tools, with
 * `force` fixing some. Each option not forced is left out (its default)
 * now and then. aes-192 goes with xts only: in cbc mode its key material
 * is 187.5 sectors, and qemu-img 7.2 aborts on an assertion opening such an
 * image. ivgen-hash-alg beside plain or plain64 is stored in the cipher
 * name ("xts-plain64:sha256") by both tools and not used. iter-time is always
 * given: the default, 2 s of PBKDF2 per open, would use up the case's
 * budget.
 */
export function luksOptions(r, force = {}) {
  const pick = (key) => (key in force ? force[key] : r.chance(0.25) ? undefined : r.pick(LUKS_VALUES[key]));
  const o = { 'encrypt.format': 'luks', 'encrypt.key-secret': SECRET_ID };
  for (const key of ['encrypt.cipher-alg', 'encrypt.cipher-mode', 'encrypt.ivgen-alg', 'encrypt.ivgen-hash-alg', 'encrypt.hash-alg']) {
    const v = pick(key);
    if (v !== undefined) o[key] = v;
  }
  if ((o['encrypt.cipher-alg'] ?? DEFAULTS['encrypt.cipher-alg']) === 'aes-192' && o['encrypt.cipher-mode'] === 'cbc') {
    if ('encrypt.cipher-alg' in force) o['encrypt.cipher-mode'] = 'xts';
    else o['encrypt.cipher-alg'] = r.pick(['aes-128', 'aes-256']);
  }
  if ('encrypt.ivgen-hash-alg' in force) o['encrypt.ivgen-alg'] = 'essiv';
  // Beside plain or plain64 the hash is kept half the time: both tools write it into the cipher name, unused.
  if (o['encrypt.ivgen-alg'] !== 'essiv' && r.chance(0.5)) delete o['encrypt.ivgen-hash-alg'];
  o['encrypt.iter-time'] = force['encrypt.iter-time'] ?? r.pick(ITER_TIMES);
  return o;
}

/** `name=value` strings of an options object, in its order. */
export const optionList = (o) => Object.entries(o).map(([k, v]) => `${k}=${v}`);

/**
 * The encrypt block qemu-img info must show for options `o`: the asked
 * values, or the defaults where none was asked (ivgen-hash-alg only with
 * essiv, as qemu-img info prints it).
 */
export function expectedEncrypt(o) {
  const want = { format: 'luks' };
  for (const [k, v] of Object.entries(DEFAULTS)) want[k.slice('encrypt.'.length)] = o[k] ?? v;
  if (want['ivgen-alg'] !== 'essiv') delete want['ivgen-hash-alg'];
  return want;
}

/**
 * A passphrase: letters, digits and punctuation that need no quoting in
 * `--object secret,data=` (no comma), sometimes with a non-ASCII letter, so
 * that the two tools must agree on its UTF-8 bytes.
 */
export function luksPassphrase(r) {
  const chars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+';
  let p = '';
  for (let n = 6 + r.int(20); n > 0; n--) p += chars[r.int(chars.length)];
  return r.chance(0.3) ? `${p}\u00e9\u00df` : p;
}

/** qcow2 options img refuses beside LUKS (README: not supported by img): a raw data file, preallocation. */
const NOT_WITH_LUKS = [/^data_file_raw=on$/, /^preallocation=(metadata|falloc|full)$/];

/** Whether the other qcow2 options of a case (`name=value` strings) leave room for LUKS in img. */
export const luksFits = (opts) => !opts.some((o) => NOT_WITH_LUKS.some((re) => re.test(o)));
