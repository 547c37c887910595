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

/** "1 GiB", "64 KiB", "977 KiB", like qemu-img's human output. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${bytes} B`;
  const digits = v < 10 ? 2 : v < 100 ? 1 : 0;
  const text = v.toFixed(digits).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}

/** Parses an on/off style flag as qemu-img options take them. */
export function parseBool(value: unknown, what: string): boolean {
  if (typeof value === 'boolean') return value;
  const s = String(value).toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(s)) return true;
  if (['off', 'false', 'no', '0'].includes(s)) return false;
  throw invalidArg('options', `invalid value "${String(value)}" for ${what} (on or off)`);
}
