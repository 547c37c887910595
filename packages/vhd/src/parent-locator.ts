/**
 * Parent locators (spec, "Parent Locator Entries" and "Platform Code"):
 * where a differencing disk records its parent's path, once per platform.
 * Pure string handling, no Node path module: the resolver turns names into
 * storages.
 */
import { utf8Decode, utf8Encode } from '@img/block';

/** Platform codes (spec). W2ru/W2ku/MacX are the current ones. */
export const PLATFORM_CODE = {
  /** Windows relative path, UTF-16LE. */
  W2RU: 'W2ru',
  /** Windows absolute path, UTF-16LE. */
  W2KU: 'W2ku',
  /** Mac OS X file URL, UTF-8. */
  MACX: 'MacX',
  /** Deprecated Windows relative path (single-byte). */
  WI2R: 'Wi2r',
  /** Deprecated Windows absolute path (single-byte). */
  WI2K: 'Wi2k',
  /** Mac OS alias blob (unsupported). */
  MAC: 'Mac ',
  NONE: '\0\0\0\0',
} as const;

/** Longest locator data we read: a 32767-character UTF-16 path and some slack. */
export const MAX_LOCATOR_DATA = 64 * 1024;

function decodeUtf16Le(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const c = bytes[i]! | (bytes[i + 1]! << 8);
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

function encodeUtf16Le(s: string): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[i * 2] = c & 0xff;
    out[i * 2 + 1] = c >> 8;
  }
  return out;
}

function decodeLatin1(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) {
    if (b === 0) break;
    s += String.fromCharCode(b);
  }
  return s;
}

/** Decodes locator data into the path as stored, or undefined for platforms we cannot use. */
export function decodeLocatorData(platformCode: string, data: Uint8Array): string | undefined {
  switch (platformCode) {
    case PLATFORM_CODE.W2RU:
    case PLATFORM_CODE.W2KU:
      return decodeUtf16Le(data);
    case PLATFORM_CODE.WI2R:
    case PLATFORM_CODE.WI2K:
      return decodeLatin1(data);
    case PLATFORM_CODE.MACX: {
      const s = utf8Decode(data).replace(/\0+$/, '');
      return s;
    }
    default:
      return undefined;
  }
}

/** Encodes a path as the locator data of a platform. */
export function encodeLocatorData(platformCode: string, path: string): Uint8Array {
  switch (platformCode) {
    case PLATFORM_CODE.W2RU:
    case PLATFORM_CODE.W2KU:
      return encodeUtf16Le(path);
    case PLATFORM_CODE.MACX:
      return utf8Encode(path);
    default:
      throw new RangeError(`cannot encode a locator for platform "${platformCode}"`);
  }
}

/**
 * Turns a stored locator path into a name for the resolver: backslashes
 * become slashes, ".\" prefixes go, file URLs become paths. Returns
 * undefined for names no resolver can use.
 */
export function locatorToName(platformCode: string, stored: string): string | undefined {
  let s = stored.trim();
  if (!s) return undefined;
  if (platformCode === PLATFORM_CODE.MACX || /^file:\/\//i.test(s)) {
    s = s.replace(/^file:\/\//i, '');
    if (s.toLowerCase().startsWith('localhost/')) s = s.slice('localhost'.length);
    try {
      s = decodeURIComponent(s);
    } catch {
      // Not percent-encoded after all: keep as is.
    }
    return s || undefined;
  }
  // Windows paths: a drive letter stays (a resolver on Windows may use it).
  s = s.replace(/\\/g, '/');
  return s;
}

/** A MacX file URL for an absolute path. */
export function pathToFileUrl(absolutePath: string): string {
  return 'file://' + encodeURI(absolutePath).replace(/[?#]/g, encodeURIComponent);
}

/** Windows-style relative form used in W2ru: ".\name" or "..\dir\name". */
export function toWindowsRelative(relative: string): string {
  const s = relative.replace(/\//g, '\\');
  return s.startsWith('.\\') || s.startsWith('..\\') ? s : '.\\' + s;
}

/** The last component of a slash- or backslash-separated path. */
export function baseName(path: string): string {
  const parts = path.split(/[\\/]/);
  return parts[parts.length - 1] ?? path;
}

/** Directory part of a slash-separated path ("" for a bare name). */
export function dirName(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : i === 0 ? '/' : path.slice(0, i);
}

/** Joins path parts with "/" and collapses "." and ".." (POSIX semantics, pure). */
export function joinPath(...parts: string[]): string {
  const joined = parts.filter((p) => p !== '').join('/');
  const absolute = joined.startsWith('/');
  const out: string[] = [];
  for (const seg of joined.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length && out[out.length - 1] !== '..') out.pop();
      else if (!absolute) out.push('..');
      continue;
    }
    out.push(seg);
  }
  const body = out.join('/');
  return absolute ? '/' + body : body || '.';
}

/** True for "/x", "C:\x", "C:/x", "\\server\x". */
export function isAbsolutePath(path: string): boolean {
  return path.startsWith('/') || /^[A-Za-z]:[\\/]/.test(path) || path.startsWith('\\\\');
}

/** The relative path from directory `fromDir` to `to` (both absolute, POSIX). */
export function relativePath(fromDir: string, to: string): string {
  const a = joinPath(fromDir).split('/').filter(Boolean);
  const b = joinPath(to).split('/').filter(Boolean);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const up = a.slice(i).map(() => '..');
  return [...up, ...b.slice(i)].join('/') || '.';
}
