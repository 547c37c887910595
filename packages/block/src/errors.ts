/**
 * One error class for everything an image can do wrong. The `code` is stable
 * and meant for programs; the message is for people and always names the
 * format, and where it can, the file, the field and the offset.
 */

/** Stable error codes. New codes may be added; existing ones never change meaning. */
export const ERROR_CODES = {
  /** The image's metadata contradicts itself, the spec or the file size. */
  CORRUPT: 'ERR_IMG_CORRUPT',
  /** A valid image that uses a feature this library does not implement. */
  UNSUPPORTED: 'ERR_IMG_UNSUPPORTED',
  /** Refused for safety: untrusted mode, format confusion, a reference to another file. */
  UNSAFE: 'ERR_IMG_UNSAFE',
  /** The caller asked for something impossible (bad size, bad option). */
  INVALID_ARG: 'ERR_IMG_INVALID_ARG',
  /** A write to an image or storage opened read-only. */
  READ_ONLY: 'ERR_IMG_READ_ONLY',
  /** The underlying storage failed. */
  IO: 'ERR_IMG_IO',
  /** A file or a referenced image (backing file, parent) could not be found. */
  NOT_FOUND: 'ERR_IMG_NOT_FOUND',
  /** The operation was cancelled through an AbortSignal. */
  ABORTED: 'ERR_IMG_ABORTED',
  /** The image or storage was used after close(). */
  CLOSED: 'ERR_IMG_CLOSED',
  /** A format name nobody registered, or bytes no registered format recognises. */
  UNKNOWN_FORMAT: 'ERR_IMG_UNKNOWN_FORMAT',
  /** Two images differ where they were required to be equal (compare, rebase checks). */
  MISMATCH: 'ERR_IMG_MISMATCH',
  /** A chain is too deep or has a cycle. */
  CHAIN: 'ERR_IMG_CHAIN',
  /** Another process (qemu, img) holds the image with a lock that excludes this open. */
  LOCKED: 'ERR_IMG_LOCKED',
  /** A command would write a file it also reads (same device and inode, through links or a chain). */
  SAME_FILE: 'ERR_IMG_SAME_FILE',
  /** The bytes are not an image of the format asked for (another format, or none). */
  WRONG_FORMAT: 'ERR_IMG_WRONG_FORMAT',
} as const;

export type ImageErrorCode = (typeof ERROR_CODES)[keyof typeof ERROR_CODES];

/** Structured context carried by every ImageError. */
export interface ImageErrorData {
  /** Storage name (usually a path) of the image the error is about. */
  file?: string;
  /** Format that raised it ("qcow2", "vhd", "raw", ...). */
  format?: string;
  /** The spec's name of the field at fault. */
  field?: string;
  /** Byte offset in the file (host offset) where the bad value sits. */
  offset?: number;
  expected?: unknown;
  actual?: unknown;
  [key: string]: unknown;
}

const MARK = Symbol.for('@img/block.ImageError');

export interface ImageErrorOptions {
  data?: ImageErrorData;
  cause?: unknown;
}

/**
 * The error every package throws for image problems.
 *
 * @example
 * ```ts
 * try { await openQcow2(storage); }
 * catch (e) { if (ImageError.isInstance(e) && e.code === 'ERR_IMG_CORRUPT') ... }
 * ```
 */
export class ImageError extends Error {
  readonly code: ImageErrorCode;
  readonly data: ImageErrorData;

  constructor(code: ImageErrorCode, message: string, options: ImageErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ImageError';
    this.code = code;
    this.data = options.data ?? {};
    Object.defineProperty(this, MARK, { value: true });
  }

  /** True for ImageErrors from any copy of this package (works across duplicated installs). */
  static isInstance(value: unknown): value is ImageError {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[MARK] === true;
  }
}

/** Formats an offset the way messages show it: hex with a 0x prefix. */
export function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

/**
 * Text an image supplies (a backing file's name, a tar member's, a header
 * field), as a message quotes it: control characters written as `\xNN`,
 * so that the message stays one line and no terminal escape in a hostile
 * image reaches the screen.
 */
export function shown(text: unknown): string {
  const s = String(text);
  let clean = true;
  for (let i = 0; i < s.length && clean; i++) {
    const c = s.charCodeAt(i);
    clean = !(c < 0x20 || (c >= 0x7f && c <= 0x9f));
  }
  if (clean) return s;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += c < 0x20 || (c >= 0x7f && c <= 0x9f) ? `\\x${c.toString(16).padStart(2, '0')}` : s[i];
  }
  return out;
}

/** Prefix for messages: "qcow2: a.qcow2: " or "qcow2: " when the name is unknown. */
export function where(format: string, file?: string): string {
  return file ? `${format}: ${shown(file)}: ` : `${format}: `;
}

/** Shorthand for the most common error: metadata that cannot be right. */
export function corrupt(format: string, file: string | undefined, message: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.CORRUPT, where(format, file) + shown(message), { data: { format, file, ...data } });
}

/**
 * A valid image using something this code does not implement: ERR_IMG_UNSUPPORTED, the message prefixed with format
 * and file. Lines given as an array stay lines (qemu-img prints some refusals over two); each is quoted as shown().
 */
export function unsupported(format: string, file: string | undefined, message: string | readonly string[], data: ImageErrorData = {}): ImageError {
  const text = typeof message === 'string' ? shown(message) : message.map(shown).join('\n');
  return new ImageError(ERROR_CODES.UNSUPPORTED, where(format, file) + text, { data: { format, file, ...data } });
}

/** Something an untrusted image asks for that is refused (a file it names, a layout that could harm): ERR_IMG_UNSAFE. */
export function unsafe(format: string, file: string | undefined, message: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.UNSAFE, where(format, file) + shown(message), { data: { format, file, ...data } });
}

/** A misuse of the API (a bad option or argument, named in `data.field`): ERR_IMG_INVALID_ARG. */
export function invalidArg(format: string, message: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.INVALID_ARG, where(format) + shown(message), { data: { format, ...data } });
}

/** A change asked of an image opened read-only: ERR_IMG_READ_ONLY. */
export function readOnlyError(format: string, file: string | undefined): ImageError {
  return new ImageError(ERROR_CODES.READ_ONLY, where(format, file) + 'image is open read-only', { data: { format, file } });
}

/**
 * A writable open asked of a storage opened read-only (ERR_IMG_READ_ONLY):
 * the fix is in how the storage was opened, and the message says so.
 */
export function readOnlyStorageError(format: string, file: string | undefined): ImageError {
  return new ImageError(ERROR_CODES.READ_ONLY, where(format, file) + 'cannot open the image for writing: its storage was opened read-only (open it writable, e.g. FileStorage.open(path, { readOnly: false }))', { data: { format, file, field: 'readOnly' } });
}

/** A storage or image used after close(). */
/** A Disk used after its close(): "qcow2: a.qcow2: disk is closed". */
export function diskClosedError(format: string, file: string | undefined): ImageError {
  return new ImageError(ERROR_CODES.CLOSED, where(format, file) + 'disk is closed', { data: { format, file } });
}

/** A storage or other object `name` used after close(): ERR_IMG_CLOSED. */
export function closedError(name: string): ImageError {
  return new ImageError(ERROR_CODES.CLOSED, `${name}: used after close()`, { data: { file: name } });
}

/**
 * An operation stopped by its AbortSignal: ERR_IMG_ABORTED, the signal's
 * reason as `cause`. `what` names the operation ("rebase aborted");
 * default "operation".
 */
export function abortError(signal: AbortSignal | undefined, what = 'operation'): ImageError {
  return new ImageError(ERROR_CODES.ABORTED, `${what} aborted`, { cause: signal?.reason });
}

/**
 * A storage (`file` is its name) used after its close(), in the storage's
 * own words (`message` is the whole sentence, "a.img: file is closed"):
 * ERR_IMG_CLOSED.
 */
export function storageClosedError(file: string, message: string): ImageError {
  return new ImageError(ERROR_CODES.CLOSED, message, { data: { file } });
}

/**
 * A write, trim or resize asked of a storage (`file` is its name) opened
 * read-only, in the storage's own words (`message` is the whole sentence):
 * ERR_IMG_READ_ONLY.
 */
export function storageReadOnlyError(file: string, message: string): ImageError {
  return new ImageError(ERROR_CODES.READ_ONLY, message, { data: { file } });
}

/**
 * A commit into a backing image (`backing`) of `file` that is open
 * read-only: ERR_IMG_READ_ONLY, naming the option that opens it writable.
 */
export function backingReadOnlyError(format: string, file: string | undefined, backing: string): ImageError {
  return new ImageError(ERROR_CODES.READ_ONLY, where(format, file) + `the backing image ${shown(backing)} is open read-only (open with backingWritable)`, { data: { file: backing } });
}

/**
 * A misuse of the API that belongs to no format (the message has no
 * format prefix): ERR_IMG_INVALID_ARG, the argument named in `data.field`
 * where there is one; `cause` is an underlying error, if any.
 */
export function invalidUsage(message: string, data: ImageErrorData = {}, cause?: unknown): ImageError {
  return new ImageError(ERROR_CODES.INVALID_ARG, message, { data, cause });
}

/**
 * A format name no registry knows: ERR_IMG_UNKNOWN_FORMAT,
 * 'unknown format "x"', followed by the known names when `known` is given.
 */
export function unknownFormatError(name: string, known?: readonly string[]): ImageError {
  const list = known ? ` (known: ${known.join(', ')})` : '';
  return new ImageError(ERROR_CODES.UNKNOWN_FORMAT, `unknown format "${shown(name)}"${list}`, { data: { actual: name, ...(known ? { expected: [...known] } : {}) } });
}

/**
 * A name inside an untrusted image (`kind`: "backing", "parent", ...) that
 * a resolver refuses to open: ERR_IMG_UNSAFE; `file` is the image that
 * names it.
 */
export function untrustedReferenceError(file: string, kind: string, name: string): ImageError {
  return new ImageError(ERROR_CODES.UNSAFE, `${file}: refusing to open ${kind} "${shown(name)}" named inside an untrusted image`, { data: { file, field: kind, actual: name } });
}

/** An image stream that produced another number of bytes than it announced: ERR_IMG_IO, naming the format written. */
export function streamLengthError(format: string, announced: number, produced: number): ImageError {
  return new ImageError(ERROR_CODES.IO, `${format}: the stream announced ${announced} bytes but produced ${produced}`, { data: { format, expected: announced, actual: produced } });
}

/** Throws ERR_IMG_ABORTED if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Another process holds the image: `file` is the path, `hint` says who may hold it. */
export function lockedError(file: string, message: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.LOCKED, `${shown(file)}: ${shown(message)}`, { data: { file, ...data } });
}

/** A command would write `written`, which is (or is linked to) `read`, a file it reads. */
export function sameFileError(written: string, read: string, role: string, data: ImageErrorData = {}): ImageError {
  const alias = written === read ? '' : ` (the same file as ${read})`;
  return new ImageError(ERROR_CODES.SAME_FILE, `${written}: refusing to write the ${role}${alias}: it is also read by this command, and writing it would destroy it`, {
    data: { file: written, actual: read, field: role, ...data },
  });
}

/**
 * A file opened twice in this process where one of the opens writes
 * (`path` is the name of the open refused, `held` the open that holds the
 * file, `write` whether the refused one writes): ERR_IMG_SAME_FILE,
 * saying which open holds it and which access conflicts. Another process
 * holding the file is {@link lockedError}.
 */
export function sameFileOpenError(path: string, held: { path: string; write: boolean }, write: boolean): ImageError {
  const alias = held.path === path ? '' : `the same file as ${held.path}, `;
  const holds = held.write ? 'open for writing' : 'open read-only';
  const second = !write ? 'a second, read-only open would read bytes the other one changes' : held.write ? 'a second open for writing would make two writers of one image' : 'a second open for writing would change the bytes the other one reads';
  return new ImageError(ERROR_CODES.SAME_FILE, `${path}: ${alias}already ${holds} in this process (a FileStorage not closed yet); ${second}: close the other first`, {
    data: { file: path, actual: held.path, field: 'open', expected: write ? 'write' : 'read', heldFor: held.write ? 'write' : 'read' },
  });
}

/** The bytes are not a `format` image; `looksLike` names what they seem to be instead. */
export function wrongFormat(format: string, file: string | undefined, looksLike?: string, data: ImageErrorData = {}): ImageError {
  const tail = looksLike ? `: it looks like ${looksLike}` : '';
  return new ImageError(ERROR_CODES.WRONG_FORMAT, where(format, file) + `not a ${format} image${tail}`, { data: { format, file, ...(looksLike ? { actual: looksLike } : {}), ...data } });
}

/**
 * A file opened by name is not something an image can live in (a FIFO, a
 * socket, a character device): "a.img: is a FIFO, not an image file".
 * `kind` says what it is, with its article; `detail`, when given, follows
 * after a colon (what would have made it usable).
 */
export function notAnImageFile(file: string, kind: string, data: ImageErrorData = {}, cause?: unknown, detail?: string): ImageError {
  return new ImageError(ERROR_CODES.INVALID_ARG, `${file}: is ${kind}, not an image file${detail ? `: ${detail}` : ''}`, { data: { file, field: 'file type', actual: kind, ...data }, cause });
}

/** A file the caller named does not exist; `cause` is the system's error. */
export function notFoundError(file: string, message: string, data: ImageErrorData = {}, cause?: unknown): ImageError {
  return new ImageError(ERROR_CODES.NOT_FOUND, `${shown(file)}: ${shown(message)}`, { data: { file, ...data }, cause });
}

/** The storage under an image failed (a system call returned an error); `cause` is the system's error. */
export function ioError(file: string, message: string, data: ImageErrorData = {}, cause?: unknown): ImageError {
  return new ImageError(ERROR_CODES.IO, `${shown(file)}: ${shown(message)}`, { data: { file, ...data }, cause });
}

/**
 * An image names a file that only a resolver can open (`what`, with its
 * article: "a backing file", "an external data file", "a parent") and the
 * caller gave none: ERR_IMG_INVALID_ARG. `skip` names the option that
 * opens the image without that file ("noBacking to read without it").
 * One wording for every format's backing chain.
 */
export function noResolverError(format: string, file: string | undefined, what: string, name: string, skip?: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.INVALID_ARG, where(format, file) + `the image has ${what} "${shown(name)}" but no resolver was given to open it (pass a resolver${skip ? `, or ${skip}` : ''})`, {
    data: { format, file, ...data },
  });
}

/** A backing chain (qcow2 backing files, VHD parents) with more images than `maxDepth` (the maxChainDepth option): ERR_IMG_CHAIN. */
export function chainTooDeepError(format: string, file: string | undefined, maxDepth: number, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.CHAIN, where(format, file) + `backing chain is longer than ${maxDepth} images (maxChainDepth)`, { data: { format, file, ...data } });
}

/**
 * A backing chain that comes back to an image already in it: ERR_IMG_CHAIN.
 * `what` names the image met again as the chain names it ('backing file
 * "b.qcow2" (/images/b.qcow2)', "parent unique id ...").
 */
export function chainCycleError(format: string, file: string | undefined, what: string, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.CHAIN, where(format, file) + `${shown(what)} is already in the chain: a cycle`, { data: { format, file, ...data } });
}

/**
 * A parent that is not the image the child was made over: the identity
 * the child recorded (`id.label`: VHD's "parent unique id", VMDK's
 * "parentCID") differs from the parent's own (`id.parentLabel`: "unique
 * id", "CID"): ERR_IMG_MISMATCH. `parent` names the parent file, `allow`
 * the option that opens it anyway; `data.field`, `expected` and `actual`
 * say which field of the child and what it holds. One wording for every
 * format's backing chain.
 */
export function parentMismatchError(format: string, file: string | undefined, parent: string, id: { label: string; parentLabel: string; expected: string; actual: string; allow: string }, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.MISMATCH, where(format, file) + `the parent ${shown(parent)} has ${id.parentLabel} ${id.actual}, but this image's ${id.label} is ${id.expected}: the parent changed after this image was made (${id.allow} opens it anyway)`, {
    data: { format, file, expected: id.expected, actual: id.actual, ...data },
  });
}

/**
 * A file an image names (`what`: "backing file", "external data file",
 * "parent") could not be opened for another reason than its absence (see
 * {@link missingFileError}): ERR_IMG_IO, the resolver's error as `cause`.
 */
export function cannotOpenError(format: string, file: string | undefined, what: string, name: string, cause: unknown, data: ImageErrorData = {}): ImageError {
  return new ImageError(ERROR_CODES.IO, where(format, file) + `cannot open ${what} "${shown(name)}": ${(cause as Error | undefined)?.message ?? String(cause)}`, { cause, data: { format, file, ...data } });
}

/**
 * A file an image names (backing file, parent, external data file) does
 * not exist: `file` is the image that names it, `name` the name as stored
 * and `resolved` the path it was looked for at (left out when the same).
 */
export function missingFileError(format: string, file: string | undefined, what: string, name: string, resolved?: string, options: { cause?: unknown; data?: ImageErrorData; alsoTried?: readonly string[] } = {}): ImageError {
  const at = resolved !== undefined && resolved !== name ? ` (resolved to ${shown(resolved)})` : '';
  const also = options.alsoTried?.length ? `; also looked for ${options.alsoTried.map(shown).join(', ')}` : '';
  return new ImageError(ERROR_CODES.NOT_FOUND, where(format, file) + `${what} "${shown(name)}"${at} does not exist${also}`, {
    cause: options.cause,
    data: { format, file, field: what, expected: name, ...(resolved !== undefined ? { actual: resolved } : {}), ...options.data },
  });
}
