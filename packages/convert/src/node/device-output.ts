/**
 * A conversion onto a block device in an image format (qcow2), as
 * `qemu-img convert -O qcow2 src.img /dev/vg/lv` writes one: the device is
 * neither created, truncated nor removed; the image is laid out from its
 * start and ends where its last cluster does, and the device's bytes past
 * it stay as they were. The device is not assumed to read as zeros
 * (Storage.fixedSize: the format writes every byte of metadata it relies
 * on). An image that needs more than the device holds is refused before
 * anything is written where the format can measure it (qemu-img measure),
 * and fails with the device named where a write would pass its end.
 * An NBD export is written the same way (qemu-img convert -O qcow2 into
 * nbd://, as oVirt's image uploads put qcow2 onto a raw export of a
 * logical volume). `-O raw` onto a device or into an export is
 * nbd-output.ts's: the disk's bytes as they are.
 */
import { statSync } from 'node:fs';
import { ImageError, invalidArg, ioError, unsupported, type Disk, type FormatRegistry, type Storage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { NbdStorage } from '@img/nbd';
import { convertInto, type ConvertDiskOptions, type ConvertResult } from '../convert.js';
import type { ExistingOutputKind } from './nbd-output.js';

/**
 * The formats img writes onto a block device as images. qemu-img also
 * takes vpc and vmdk there, but what it leaves does not read back (7.2: a
 * vpc whose disk compares different from its source, a vmdk whose grains
 * point past the end it believes the file has), so img refuses them.
 */
export const DEVICE_IMAGE_FORMATS: readonly string[] = ['qcow2'];

/** What of a conversion's options applies to an image written onto a block device (those of ConvertFileOptions). */
export interface DeviceOutputOptions extends ConvertDiskOptions {
  output: string;
  dstFormat: string;
  registry: FormatRegistry;
}

/** Whether `path` names a block device (following links); false where it names nothing yet. */
export function isBlockDevicePath(path: string): boolean {
  try {
    return statSync(path, { throwIfNoEntry: false })?.isBlockDevice() ?? false;
  } catch {
    // Not reachable (EACCES, ENOTDIR): creating it fails in its own words later.
    return false;
  }
}

/**
 * Refuses (ERR_IMG_UNSUPPORTED, before the source is opened) a format img
 * does not write onto a block device: raw (nbd-output.ts) and
 * {@link DEVICE_IMAGE_FORMATS} are written there, nothing else.
 */
export function checkDeviceFormat(registry: FormatRegistry, format: string, output: string, kind: ExistingOutputKind = 'device'): void {
  const name = registry.require(format).name;
  if (name === 'raw' || DEVICE_IMAGE_FORMATS.includes(name)) return;
  const where = kind === 'nbd' ? 'into an NBD export' : 'onto a block device';
  const instead = kind === 'nbd' ? `write it into a file, or serve a ${name} file with img serve -w` : 'write it into a file instead';
  throw unsupported(name, output, `img writes ${where} as raw or ${DEVICE_IMAGE_FORMATS.join(', ')} only, not ${name}: a ${name} image needs a file that grows (qemu-img's leaves one that does not read back; ${instead})`, {
    field: 'format',
    actual: name,
  });
}

/**
 * The space the image of `source` needs on `output` (the format's measure,
 * qemu-img measure's "required"), or undefined where it cannot be told
 * before writing: a format with no measure, a compressed output or an
 * overlay, which store less than the source's data.
 */
async function requiredBytes(source: Disk, options: DeviceOutputOptions): Promise<number | undefined> {
  const driver = options.registry.require(options.dstFormat);
  if (!driver.measure || options.compress || options.backingFile !== undefined) return undefined;
  const measured = await driver.measure({ size: source.size, source, options: options.createOptions ?? {} });
  return measured.required;
}

/**
 * A write that passed the end of the device (ENOSPC) as the device's
 * error: the image did not fit. Other errors are passed on.
 */
function deviceFullError(output: string, what: string, format: string, capacity: number, e: unknown): unknown {
  if (!ImageError.isInstance(e) || e.data.errno !== 'ENOSPC') return e;
  return ioError(output, `${what} is ${capacity} bytes, too small for the ${format} image of the source: no space left on device (ENOSPC)`, { errno: 'ENOSPC', field: 'size', actual: capacity }, e);
}

/**
 * Writes `source` onto the block device `output` as a new image of
 * `options.dstFormat` (one of {@link DEVICE_IMAGE_FORMATS}, checked by
 * {@link checkDeviceFormat}). A device smaller than the image needs is
 * refused before anything is written (ERR_IMG_INVALID_ARG, naming the
 * device); the device node is never removed, whatever happens.
 */
export async function convertOntoDevice(source: Disk, options: DeviceOutputOptions, kind: ExistingOutputKind = 'device'): Promise<ConvertResult> {
  const driver = options.registry.require(options.dstFormat);
  const storage: Storage = kind === 'nbd' ? await NbdStorage.connect(options.output, { writable: true }) : await FileStorage.open(options.output, { readOnly: false, cache: 'unsafe' });
  const what = kind === 'nbd' ? 'the NBD export' : 'the block device';
  let capacity = 0;
  try {
    capacity = await storage.size();
    const required = await requiredBytes(source, options);
    if (required !== undefined && required > capacity) {
      throw invalidArg('convert', `${options.output}: ${what} is ${capacity} bytes, smaller than the ${required} bytes a ${driver.name} image of the source needs (img measure); ${kind === 'nbd' ? 'an export' : 'a device'} cannot grow`, {
        file: options.output,
        field: 'size',
        expected: required,
        actual: capacity,
      });
    }
    // The image written closes the storage (a second close changes nothing); a format that refused to create leaves it open.
    const { result } = await convertInto(source, driver, storage, { ...options, resolver: options.resolver ?? fileResolver, formats: options.formats ?? options.registry }, false);
    return result;
  } catch (e) {
    throw deviceFullError(options.output, what, driver.name, capacity, e);
  } finally {
    await storage.close().catch(() => undefined);
  }
}
