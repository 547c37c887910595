/**
 * Sizes as people type them, read as qemu-img 7.2 reads them (checked
 * against it spelling by spelling in size.test.ts): plain bytes or one
 * b/k/M/G/T/P/E suffix (powers of 1024, either case) right after the
 * number, decimal with an optional fraction ("1.5G", "5.k") or hexadecimal
 * ("0x1000", also with a suffix), an optional leading "+" and leading
 * white space; nothing may follow the suffix ("1KB", "1KiB", "1 G" and
 * "1G " are refused, as qemu-img refuses them).
 */
import { invalidArg } from './errors.js';

const UNITS: Record<string, bigint> = { '': 1n, b: 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n, e: 1n << 60n };
const SIZE_TEXT = /^\s*\+?(?:0[xX]([0-9a-fA-F]+)|(\d+)(?:\.(\d*))?)([bkmgtpeBKMGTPE]?)$/;

/**
 * Parses "64k", "1G", "1.5M", "4096", "0x1000". A fraction is floored to
 * whole bytes ("0.3k" is 307), and refused with no suffix or "b" unless
 * it is zero ("1.0" is 1, "1.5" is an error), as qemu-img does. Throws
 * ERR_IMG_INVALID_ARG on anything else, or past 2^53 - 1 bytes.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw invalidArg('size', `invalid ${what}: ${text}`);
    return text;
  }
  const m = SIZE_TEXT.exec(text);
  if (!m) throw invalidArg('size', `invalid ${what} "${text}" (use bytes or a k, M, G, T, P, E suffix)`);
  const [, hex, whole, fraction = '', suffix = ''] = m;
  const unit = UNITS[suffix.toLowerCase()]!;
  let bytes = BigInt(hex !== undefined ? `0x${hex}` : whole!) * unit;
  if (/[1-9]/.test(fraction)) {
    if (unit === 1n) throw invalidArg('size', `${what} "${text}" is not a whole number of bytes`);
    bytes += (BigInt(fraction) * unit) / 10n ** BigInt(fraction.length);
  }
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidArg('size', `${what} "${text}" is too large: img takes sizes up to 2^53 - 1 bytes (8 PiB - 1), where qemu-img goes to 2^63 - 1`);
  }
  return Number(bytes);
}

const SIZE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * A byte count as qemu-img prints it for people (its size_to_str): the unit
 * is the largest power of 1024 that leaves a number below 1000 (so 1000 KiB
 * is "0.977 MiB", not "1000 KiB"), shown with three significant digits as
 * C's `%0.3g` would: "512 B", "100 MiB", "0.977 GiB", "1.5 GiB", "10 GiB".
 *
 * @example
 * ```ts
 * formatSize(100 * 2 ** 20); // "100 MiB"
 * formatSize(1000 * 1024);   // "0.977 MiB"
 * ```
 */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return `${bytes} B`;
  const value = Math.round(bytes);
  // The unit switches where value * 1024 / 1000 reaches the next power of 1024 (qemu's frexp rule).
  const scaled = value / (1000 / 1024);
  let exponent = 0; // frexp's: scaled < 2 ** exponent, and >= 2 ** (exponent - 1) when scaled > 0
  while (exponent < 1100 && 2 ** exponent <= scaled) exponent++;
  const unit = Math.min(SIZE_UNITS.length - 1, Math.trunc((exponent - 1) / 10));
  return `${formatG3(BigInt(value), BigInt(unit * 10))} ${SIZE_UNITS[unit]}`;
}

/**
 * `numerator / 2 ** shift` formatted as C's `%.3g`: three significant digits
 * rounded half to even on the exact value (the value is a dyadic rational,
 * so BigInt gives it exactly), trailing zeros dropped, and the exponent form
 * ("1e+03") where the decimal exponent is below -4 or above 2.
 */
function formatG3(numerator: bigint, shift: bigint): string {
  if (numerator === 0n) return '0';
  const denominator = 1n << shift;
  // Decimal exponent of the exact value: 10 ** e <= value < 10 ** (e + 1).
  let e = (numerator / denominator).toString().length - 1;
  if (numerator < denominator) {
    e = -1;
    while (numerator * 10n ** BigInt(-e) < denominator) e--;
  }
  // Three significant digits: digits = round(value * 10 ** (2 - e)).
  const num = e <= 2 ? numerator * 10n ** BigInt(2 - e) : numerator;
  const den = e <= 2 ? denominator : denominator * 10n ** BigInt(e - 2);
  let digits = num / den;
  const twiceRest = 2n * (num % den);
  if (twiceRest > den || (twiceRest === den && digits % 2n === 1n)) digits++;
  if (digits === 1000n) {
    digits = 100n;
    e++;
  }
  const text = digits.toString(); // three digits
  if (e < -4 || e >= 3) {
    const mantissa = trimZeros(`${text[0]}.${text.slice(1)}`);
    return `${mantissa}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  if (e >= 2) return text;
  if (e >= 0) return trimZeros(`${text.slice(0, e + 1)}.${text.slice(e + 1)}`);
  return trimZeros(`0.${'0'.repeat(-e - 1)}${text}`);
}

function trimZeros(decimal: string): string {
  return decimal.replace(/0+$/, '').replace(/\.$/, '');
}

/**
 * Parses an on/off flag exactly as qemu-img 7.2 takes boolean `-o` options:
 * `on`, `yes`, `true`, `y` and `off`, `no`, `false`, `n`, lower case only
 * (`ON` and `1` are refused, as qemu refuses them); a boolean passes as it is.
 * `what` is the option's `-o` name, used in qemu's refusal: "Parameter
 * 'lazy_refcounts' expects 'on' or 'off'".
 */
export function parseBool(value: unknown, what: string): boolean {
  if (typeof value === 'boolean') return value;
  const s = String(value);
  if (['on', 'yes', 'true', 'y'].includes(s)) return true;
  if (['off', 'no', 'false', 'n'].includes(s)) return false;
  throw invalidArg('options', `Parameter '${what}' expects 'on' or 'off'`, { field: what, actual: s });
}
