/**
 * What the subcommands of img share: the Handler shape, common options, opening an image.
 */
import { imageOpenOptions, missingSecretError, type ImageOpts } from '../qemu-objects.js';
import { isAbsolute } from 'node:path';
import { invalidArg, unsupported, type BackingOpenOptions, type Disk, type FormatRegistry } from '@img/block';
import { UsageError, type Io } from '../common.js';
import { openImageFile, type OpenImageOptions } from '../../node.js';
import { warnIfRawReadInFull } from '../native-notice.js';
import { qemuFormatName } from '../info-human.js';

/** A subcommand: its arguments after the name, the process streams; resolves to the exit status. */
export type Handler = (argv: string[], io: Io) => Promise<number>;

/** Options every subcommand takes. */
export const common = {
  f: { type: 'string' },
  output: { type: 'string' },
  untrusted: { type: 'boolean' },
  'force-format': { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * The options of {@link common} but --output, for the commands that print no JSON (amend, bitmap, commit, compare,
 * create, dd, rebase, resize, serve): there, as in qemu-img, --output is an unknown option, not one silently ignored
 * (dd reads it as a prefix of qemu-img 10.1's --output-format).
 */
export const commonNoOutput = {
  f: common.f,
  untrusted: common.untrusted,
  'force-format': common['force-format'],
  debug: common.debug,
  help: common.help,
} as const;

/** -U / --force-share (qemu-img's): read an image without taking its locks, for the commands that only read. */
export const shareOption = { 'force-share': { type: 'boolean', short: 'U' } } as const;

/** The --output value: human (default) or json. */
export function outputMode(value: string | undefined): 'human' | 'json' {
  if (value === undefined || value === 'human') return 'human';
  if (value === 'json') return 'json';
  throw new UsageError(`--output must be human or json, not "${value}"`);
}

/** The single file argument of a command. */
export function onePath(positionals: string[], what = '<file>'): string {
  if (positionals.length !== 1) throw new UsageError(`expected ${what}`);
  return positionals[0]!;
}

/**
 * Opens an image as the read-only commands do (-f, --untrusted, --force-format, -U), refusing an encrypted one
 * given without its passphrase as qemu-img does ({@link refuseWithoutSecret}).
 * Given `io` (the commands that read the data), a raw file without the native helper gets its one warning.
 */
export async function openForCommand(path: string, values: { f?: string; untrusted?: boolean; 'force-format'?: boolean; 'force-share'?: boolean }, readOnly = true, io?: Io, more: Pick<OpenImageOptions, 'direct' | 'cache' | 'noBacking'> = {}): Promise<Disk> {
  const opened = imageOpenOptions(path, values.f);
  const disk = await openImageFile(path, {
    ...more,
    ...opened,
    readOnly,
    untrusted: values.untrusted ?? false,
    forceFormat: values['force-format'] ?? false,
    forceShare: values['force-share'] ?? false,
  });
  try {
    await refuseWithoutSecret(disk, path, opened);
  } catch (e) {
    await disk.close().catch(() => undefined);
    throw e;
  }
  if (io) warnIfRawReadInFull(io, 'img', disk.format, path);
  return disk;
}

/**
 * As qemu-img, which opens an encrypted image only with its secret (info, which reads no data, alone opens it
 * without): refuses `disk` (missingSecretError) where it, or a backing file of its open chain, is encrypted and no
 * passphrase reached it. img opens such an image and maps it, and only its reads fail: map, measure and compare
 * answered from its metadata where qemu-img does not open it. A backing file without a passphrase of its own
 * (backing.encrypt.key-secret) is given the one of the image above it, as the formats open it.
 */
export async function refuseWithoutSecret(disk: Disk, path: string, opened: ImageOpts): Promise<void> {
  let keyed = false;
  let options: BackingOpenOptions | undefined = opened;
  let depth = 0;
  for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer), depth++) {
    keyed ||= options?.passphrase !== undefined;
    if (!keyed && (await layer.info?.())?.encrypted) throw missingSecretError(layer.format, path, depth === 0 ? undefined : { name: layer.storage.name, depth });
    options = options?.backing;
  }
}

/**
 * A name stored in an image, read from where the image is (qemu's
 * path_combine): absolute names as they are, relative ones after the
 * image's directory as the image's path spells it ("dir/base.qcow2").
 */
export function combinePath(imagePath: string, name: string): string {
  if (isAbsolute(name)) return name;
  return imagePath.slice(0, imagePath.lastIndexOf('/') + 1) + name;
}

/** The backing image (qcow2) or parent (VHD) of an open disk, if it has one open. */
export function backingOf(disk: Disk): Disk | undefined {
  return disk.backing ?? (disk as { parent?: Disk }).parent;
}

/** -q / --quiet (qemu-img's): print nothing on stdout; errors still go to stderr and the exit status is unchanged. */
export const quietOption = { quiet: { type: 'boolean', short: 'q' } } as const;

/** The streams a command writes to, with stdout silenced when it runs quietly (-q). */
export function quietIo(io: Io, quiet: boolean | undefined): Io {
  return quiet ? { ...io, stdout: () => {} } : io;
}

/**
 * The one value given among several spellings of an option (qemu-img 7.2's
 * letter, 10.1's letter or long name): pairs of (spelling, value). Two
 * spellings with different values are a usage error naming both.
 */
export function oneOf(...pairs: Array<string | undefined>): string | undefined {
  let chosen: { name: string; value: string } | undefined;
  for (let i = 0; i < pairs.length; i += 2) {
    const name = pairs[i]!;
    const value = pairs[i + 1];
    if (value === undefined) continue;
    if (chosen && chosen.value !== value) throw new UsageError(`${chosen.name} and ${name} are the same option: give it once`);
    chosen ??= { name, value };
  }
  return chosen?.value;
}

/**
 * The backing format to store in an image, from -F as the user spelt it: a
 * format img knows (ERR_IMG_UNKNOWN_FORMAT otherwise, before anything is
 * written), under qemu's name ("vpc" for "vhd"), since qemu opens the
 * backing file by the name stored; a format qemu has no driver for (ova)
 * is refused (ERR_IMG_UNSUPPORTED).
 */
export function storedBackingFormat(registry: FormatRegistry, format: string): string;
/** As above; no format given (undefined) stores none. */
export function storedBackingFormat(registry: FormatRegistry, format: string | undefined): string | undefined;
/** The implementation of the overloads above. */
export function storedBackingFormat(registry: FormatRegistry, format: string | undefined): string | undefined {
  if (format === undefined) return undefined;
  const name = registry.require(format).name;
  // img reads an OVA as a disk, qemu has no driver for one: an overlay naming it would not open in qemu-img.
  if (!QEMU_BACKING_FORMATS.includes(name)) {
    throw unsupported(name, undefined, `an ${name} cannot be a backing file: qemu has no driver for it, so qemu-img could not open the image; convert its disk first (img convert -O qcow2 <file>.${name} base.qcow2) and use that`, { field: 'backing_fmt', actual: name });
  }
  return qemuFormatName(name);
}

/** The formats img writes as a backing format that qemu opens too. */
const QEMU_BACKING_FORMATS: readonly string[] = ['raw', 'qcow2', 'vhd', 'vmdk', 'luks'];

/** Formats whose images name a backing file's format beside its name (qemu-img writes no backing file there without one). */
const RECORDS_BACKING_FORMAT: readonly string[] = ['qcow2', 'vmdk'];

/**
 * Refuses, as qemu-img 7.2 does, to give an image of `format` the backing
 * file `backing` without its format (-F): the format would otherwise be
 * guessed from the backing file's bytes each time the image is opened.
 * `detected` (the format the backing file was opened as) goes into the hint.
 */
export function requireBackingFormat(format: string, path: string, backing: string, backingFormat: string | undefined, detected?: string): void {
  if (backingFormat !== undefined || !RECORDS_BACKING_FORMAT.includes(format)) return;
  const hint =
    detected === undefined
      ? 'pass -F with its format'
      : QEMU_BACKING_FORMATS.includes(detected)
        ? `${backing} is ${qemuFormatName(detected)}: pass -F ${qemuFormatName(detected)}`
        : `${backing} is ${detected}, which cannot be a backing file: convert its disk first (img convert -O qcow2 ${backing} base.qcow2)`;
  throw invalidArg(format, `${path}: Backing file specified without backing format (${hint})`, { file: path, field: 'backing format' });
}
