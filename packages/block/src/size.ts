/**
 * Sizes as people type them: plain bytes or a k/M/G/T/P/E suffix (powers
 * of 1024, as qemu-img), optionally followed by "B"/"iB".
 */
import { invalidArg } from './errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** Parses "64k", "1G", "1.5M", "4096". Throws ERR_IMG_INVALID_ARG on anything else. */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw invalidArg('size', `invalid ${what}: ${text}`);
    return text;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpeb]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw invalidArg('size', `invalid ${what} "${text}" (use bytes or a k, M, G, T suffix)`);
  const value = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  const bytes = Math.round(value);
  if (!Number.isSafeInteger(bytes)) throw invalidArg('size', `${what} "${text}" is too large`);
  if (m[1]!.includes('.') && bytes !== value) throw invalidArg('size', `${what} "${text}" is not a whole number of bytes`);
  return bytes;
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

/** Parses an on/off style flag as qemu-img options take them. */
export function parseBool(value: unknown, what: string): boolean {
  if (typeof value === 'boolean') return value;
  const s = String(value).toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(s)) return true;
  if (['off', 'false', 'no', '0'].includes(s)) return false;
  throw invalidArg('options', `invalid value "${String(value)}" for ${what} (on or off)`);
}
