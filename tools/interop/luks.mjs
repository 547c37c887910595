// LUKS encryption in the campaign: the qcow2 encrypt.* create options that
// both qemu-img 7.2 and img take, drawn at random, and the passphrase both
// tools are given (lib.mjs spells it on their command lines).
import { SECRET_ID } from './lib.mjs';

/** Every value the write cases try for each encrypt.* option (`img create -f qcow2 -o help`). */
export const LUKS_VALUES = {
  'encrypt.format': ['luks'],
  'encrypt.key-secret': [SECRET_ID],
  'encrypt.cipher-alg': ['aes-128', 'aes-192', 'aes-256', 'serpent-128', 'serpent-192', 'serpent-256', 'twofish-128', 'twofish-192', 'twofish-256', 'cast5-128'],
  'encrypt.cipher-mode': ['xts', 'cbc', 'ecb', 'ctr'],
  'encrypt.ivgen-alg': ['plain', 'plain64', 'essiv'],
  // essiv keys the cipher with the digest: 16 bytes (md5) or 32 (sha256, not cast5); sha1, sha224, sha384 and sha512 are refused by both tools.
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
 * `force` fixing some: the luks format's draws (luksFormatOptions, every
 * cipher and mode qemu-img 7.2 writes) under the encrypt. prefix. Each
 * option not forced is left out (its default) now and then; iter-time is
 * always given: the default, 2 s of PBKDF2 per open, would use up the
 * case's budget.
 */
export function luksOptions(r, force = {}) {
  const own = {};
  for (const [k, v] of Object.entries(force)) if (k.startsWith('encrypt.') && k !== 'encrypt.format' && k !== 'encrypt.key-secret') own[k.slice('encrypt.'.length)] = v;
  const o = { 'encrypt.format': 'luks', 'encrypt.key-secret': SECRET_ID };
  for (const [k, v] of Object.entries(luksFormatOptions(r, luksCipherSet('all'), own))) if (k !== 'key-secret') o[`encrypt.${k}`] = v;
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

// qemu's luks format (`qemu-img create -f luks`): the same LUKS header with
// its options unprefixed (`cipher-alg=`, `key-secret=`), over a cipher table
// wider than encrypted qcow2's draws.

/**
 * Every cipher qemu-img 7.2 writes into a LUKS header, with its key and
 * block sizes in bytes; img reads and writes them all (`--luks-ciphers all`,
 * the default; `aes` draws AES in xts and cbc only, what img decrypted
 * before session 29).
 */
export const LUKS_CIPHER_ALGS = [
  { alg: 'aes-128', key: 16, block: 16 },
  { alg: 'aes-192', key: 24, block: 16 },
  { alg: 'aes-256', key: 32, block: 16 },
  { alg: 'serpent-128', key: 16, block: 16 },
  { alg: 'serpent-192', key: 24, block: 16 },
  { alg: 'serpent-256', key: 32, block: 16 },
  { alg: 'twofish-128', key: 16, block: 16 },
  { alg: 'twofish-192', key: 24, block: 16 },
  { alg: 'twofish-256', key: 32, block: 16 },
  { alg: 'cast5-128', key: 16, block: 8 },
];

/** The cipher modes, as the algorithms above: xts takes two keys and a 16-byte block. */
export const LUKS_CIPHER_MODES = [{ mode: 'xts' }, { mode: 'cbc' }, { mode: 'ecb' }, { mode: 'ctr' }];

/** The cipher algorithms and modes of `--luks-ciphers aes|all`. */
export function luksCipherSet(which) {
  if (which !== 'aes' && which !== 'all') throw new Error(`--luks-ciphers: aes or all, not ${which}`);
  const all = which === 'all';
  return { algs: LUKS_CIPHER_ALGS.filter((c) => all || c.alg.startsWith('aes')).map((c) => c.alg), modes: LUKS_CIPHER_MODES.filter((m) => all || m.mode === 'xts' || m.mode === 'cbc').map((m) => m.mode) };
}

const cipherRow = (alg) => LUKS_CIPHER_ALGS.find((c) => c.alg === alg);

/**
 * Whether qemu-img 7.2 makes and opens a LUKS header of this cipher and
 * mode: xts needs a 16-byte block (cast5 has 8); and the key material
 * (the key, twice for xts, in 4000 stripes) must fill whole sectors: a
 * 24-byte key outside xts is 187.5 sectors, on which qemu-img aborts
 * (an assertion in crypto/block.c).
 */
export function luksCipherFits(alg, mode) {
  const c = cipherRow(alg);
  if (!c) return false;
  if (mode === 'xts' && c.block !== 16) return false;
  return ((mode === 'xts' ? 2 : 1) * c.key * 4000) % 512 === 0;
}

/** essiv keys the same cipher with the hash's digest: md5 (16 bytes) fits every cipher, sha256 (32) all but cast5. */
const essivFits = (alg, hash) => hash === 'md5' || (hash === 'sha256' && !alg.startsWith('cast5'));

/** What qemu-img and img write for a luks option left out. */
export const LUKS_FORMAT_DEFAULTS = { 'cipher-alg': 'aes-256', 'cipher-mode': 'xts', 'ivgen-alg': 'plain64', 'ivgen-hash-alg': 'sha256', 'hash-alg': 'sha256' };

/** Every value the write cases try for each `img create -f luks -o help` option, over a cipher set (luksCipherSet). */
export function luksFormatValues(set) {
  const v = {};
  for (const [k, list] of Object.entries(LUKS_VALUES)) if (k !== 'encrypt.format' && k !== 'encrypt.cipher-alg' && k !== 'encrypt.cipher-mode') v[k.slice('encrypt.'.length)] = list;
  return { ...v, 'cipher-alg': set.algs, 'cipher-mode': set.modes };
}

/**
 * Random luks create options (name -> value, unprefixed) valid for
 * qemu-img 7.2, drawn from a cipher set, with `force` fixing some. As
 * luksOptions: each option not forced is left out (its default) now and
 * then, and iter-time is always given. A cipher and mode that do not fit
 * (luksCipherFits) are mended on the side not forced; essiv gets a hash that
 * fits its cipher.
 */
export function luksFormatOptions(r, set, force = {}) {
  const values = luksFormatValues(set);
  const pick = (key) => (key in force ? force[key] : r.chance(0.25) ? undefined : r.pick(values[key]));
  const o = { 'key-secret': SECRET_ID };
  for (const key of ['cipher-alg', 'cipher-mode', 'ivgen-alg', 'ivgen-hash-alg', 'hash-alg']) {
    const v = pick(key);
    if (v !== undefined) o[key] = v;
  }
  const alg = () => o['cipher-alg'] ?? LUKS_FORMAT_DEFAULTS['cipher-alg'];
  const mode = () => o['cipher-mode'] ?? LUKS_FORMAT_DEFAULTS['cipher-mode'];
  if (!luksCipherFits(alg(), mode())) {
    if ('cipher-alg' in force || !('cipher-mode' in force)) {
      const modes = set.modes.filter((m) => luksCipherFits(alg(), m));
      if (modes.length) o['cipher-mode'] = r.pick(modes);
      else o['cipher-alg'] = r.pick(set.algs.filter((a) => luksCipherFits(a, mode())));
    } else o['cipher-alg'] = r.pick(set.algs.filter((a) => luksCipherFits(a, mode())));
  }
  if ('ivgen-hash-alg' in force && !('ivgen-alg' in force)) o['ivgen-alg'] = 'essiv';
  if (o['ivgen-alg'] === 'essiv') {
    const hash = o['ivgen-hash-alg'] ?? LUKS_FORMAT_DEFAULTS['ivgen-hash-alg'];
    if (!essivFits(alg(), hash)) {
      if ('ivgen-hash-alg' in force) o['cipher-alg'] = r.pick(set.algs.filter((a) => essivFits(a, hash) && luksCipherFits(a, mode())));
      else o['ivgen-hash-alg'] = 'md5';
    }
  } else if (!('ivgen-hash-alg' in force) && r.chance(0.5)) delete o['ivgen-hash-alg'];
  o['iter-time'] = force['iter-time'] ?? r.pick(ITER_TIMES);
  return o;
}

/** The luks options with iter-time `t` (a retry after qemu-img failed to time PBKDF2), as one `-o` string. */
export const luksWithIterTime = (o, t) => optionList({ ...o, 'iter-time': t }).join(',');

/** The format-specific data qemu-img info must show for luks options `o` (as expectedEncrypt, unprefixed). */
export function expectedLuks(o) {
  const want = {};
  for (const [k, v] of Object.entries(LUKS_FORMAT_DEFAULTS)) want[k] = o[k] ?? v;
  if (want['ivgen-alg'] !== 'essiv') delete want['ivgen-hash-alg'];
  return want;
}
