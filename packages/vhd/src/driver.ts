/** vhdDriver: the FormatDriver @img/convert registers for "vhd" (alias "vpc"). */
import type { DriverCreateOptions, FormatDriver, Storage } from '@img/block';
import { driverOptions, invalidArg, optionHelp } from '@img/block';
import { createVhdFresh } from './bulk-writer.js';
import { checkVhd } from './check.js';
import { createVhd, vhdCreateOptionsFrom, VHD_CREATE_OPTIONS, VHD_TYPED_CREATE_KEYS, type VhdCreateOptions } from './create.js';
import { COALESCE_COOKIE, FOOTER_COOKIE, readCookie } from './footer.js';
import type { VhdDisk } from './disk.js';
import { openVhd, vhdOpenOptionsFrom } from './open.js';
import { isAbsolutePath } from './parent-locator.js';
import { readVhdStream } from './read-stream.js';
import { createVhdStream, vhdStreamOptionsFrom } from './stream.js';

/** The VHD cookie, or the mark of an interrupted coalesce (so that such an image is opened as a VHD, which refuses it, never as raw). */
function hasCookie(bytes: Uint8Array | undefined, at: number): boolean {
  if (!bytes || at < 0 || at + 8 > bytes.length) return false;
  const c = readCookie(bytes, at);
  return c === FOOTER_COOKIE || c === COALESCE_COOKIE;
}

/** 100 if "conectix" is at offset 0 or starts the last 512 (or 511) bytes. */
export function probeVhd(head: Uint8Array, size: number, tail?: Uint8Array): number {
  if (hasCookie(head, 0)) return 100;
  if (tail && tail.length >= 512 && hasCookie(tail, tail.length - 512)) return 100;
  if (tail && tail.length >= 511 && hasCookie(tail, tail.length - 511)) return 100;
  // Small files: the tail may be inside head.
  if (size <= head.length && size >= 511 && (hasCookie(head, size - 512) || hasCookie(head, size - 511))) return 100;
  return 0;
}

async function create(storage: Storage, given: DriverCreateOptions): Promise<VhdDisk> {
  const options = driverOptions('vhd', VHD_CREATE_OPTIONS, given, { extra: VHD_TYPED_CREATE_KEYS }) as DriverCreateOptions;
  const typed: VhdCreateOptions = vhdCreateOptionsFrom(options);
  const backing = options.backingFile;
  const backingFormat = options.backingFormat;
  if (backingFormat !== undefined && backingFormat !== 'vhd' && backingFormat !== 'vpc') {
    throw invalidArg('vhd', `the parent of a differencing VHD must be a VHD, not ${backingFormat}`, { field: 'backing_fmt' });
  }
  if (backing !== undefined && !typed.parent) {
    const resolver = options.resolver;
    if (!resolver) throw invalidArg('vhd', 'a differencing disk needs a resolver to open its parent (pass resolver: fileResolver)', { field: 'backing_file' });
    const parentStorage = await resolver({ name: backing, kind: 'parent', from: storage, writable: false });
    const disk = await openVhd(parentStorage, { resolver }).catch(async (e: unknown) => {
      await parentStorage.close().catch(() => undefined);
      throw e;
    });
    typed.parent = { disk, relativePath: backing, ...(isAbsolutePath(parentStorage.name) ? { absolutePath: parentStorage.name } : {}) };
    typed.type = 'differencing';
  }
  if (options.resolver) typed.resolver = options.resolver;
  return createVhd(storage, typed);
}

/**
 * The VHD format driver: name "vhd", alias "vpc". Its create, createFresh
 * and stream take options under typed keys (`blockSize`, `type`) or `-o`
 * names (`block_size`, `subformat`).
 *
 * @example
 * ```ts
 * const registry = new FormatRegistry([rawDriver, vhdDriver]);
 * ```
 */
export const vhdDriver: FormatDriver = {
  name: 'vhd',
  aliases: ['vpc'],
  probe: probeVhd,
  open: async (storage, options) => openVhd(storage, vhdOpenOptionsFrom(options ?? {})),
  create,
  check: (storage, options) => checkVhd(storage, options),
  stream: async (source, options) => createVhdStream(source, vhdStreamOptionsFrom(options)),
  readStream: async (input, options) => readVhdStream(input, options),
  createFresh: (storage, options) => createVhdFresh(storage, options),
  createOptions: optionHelp(VHD_CREATE_OPTIONS),
  createOptionTable: VHD_CREATE_OPTIONS,
};
