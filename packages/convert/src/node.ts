/**
 * The file-level API the commands use: open an image file by format,
 * convert a file into a new one. Node only (uses the file system).
 */
import { rm } from 'node:fs/promises';
import { ERROR_CODES, ImageError, type Disk, type FormatRegistry, type Resolver } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { convertDisk, type ConvertDiskOptions, type ConvertResult } from './convert.js';
import { defaultRegistry } from './formats.js';
import { checkDeclaredFormat, probeStorage } from './probe.js';
import { inspectImage, unsafeSummary } from './inspect.js';

/** A resolver for untrusted images: any name inside the image is refused. */
export const refusingResolver: Resolver = async (request) => {
  throw new ImageError(ERROR_CODES.UNSAFE, `${request.from.name}: refusing to open ${request.kind} "${request.name}" named inside an untrusted image`, {
    data: { file: request.from.name, field: request.kind, actual: request.name },
  });
};

export interface OpenImageOptions {
  /** Declared format; when omitted the format is probed (and reported). */
  format?: string;
  readOnly?: boolean;
  registry?: FormatRegistry;
  /** Accept bytes that look like another format than the declared one. */
  forceFormat?: boolean;
  untrusted?: boolean;
  resolver?: Resolver;
  /** Do not open backing files or parents. */
  noBacking?: boolean;
  /** Open backing files / parents writable (commit). */
  backingWritable?: boolean;
}

/** Opens an image file. With no format given, probes it (raw only if nothing else matches). */
export async function openImageFile(path: string, options: OpenImageOptions = {}): Promise<Disk> {
  const registry = options.registry ?? defaultRegistry();
  const readOnly = options.readOnly ?? true;
  const storage = await FileStorage.open(path, { readOnly });
  try {
    let format = options.format;
    if (options.untrusted) {
      // Untrusted: inspect first and refuse anything unsafe, whatever --force-format says.
      const report = await inspectImage(storage, { registry, ...(format !== undefined ? { format } : {}) });
      if (!report.safe) {
        throw new ImageError(ERROR_CODES.UNSAFE, `${path}: refusing an untrusted image: ${unsafeSummary(report)}`, {
          data: { file: path, findings: report.findings },
        });
      }
      format = report.format ?? format ?? 'raw';
    } else if (format === undefined) {
      format = (await probeStorage(registry, storage))[0]?.format ?? 'raw';
    } else if (!options.forceFormat) {
      await checkDeclaredFormat(registry, storage, format);
    }
    const driver = registry.require(format);
    return await driver.open(storage, {
      readOnly,
      formats: registry,
      untrusted: options.untrusted ?? false,
      resolver: options.untrusted ? refusingResolver : (options.resolver ?? fileResolver),
      noBacking: options.noBacking ?? false,
      backingWritable: options.backingWritable ?? false,
    });
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

export interface ConvertFileOptions extends ConvertDiskOptions {
  srcFormat: string;
  dstFormat: string;
  input: string;
  output: string;
  registry?: FormatRegistry;
  forceFormat?: boolean;
  untrusted?: boolean;
  /** Keep a half-written output after a failure (default: remove it). */
  keepPartial?: boolean;
  /** Convert this internal snapshot (id or name) of the source instead of its current state (-l). */
  snapshot?: string;
}

interface SnapshotCapable extends Disk {
  openSnapshot(idOrName: string): Promise<Disk>;
}

/** Opens snapshot `name` of `disk` (formats with internal snapshots). */
export async function openDiskSnapshot(disk: Disk, name: string): Promise<Disk> {
  const s = disk as Partial<SnapshotCapable>;
  if (typeof s.openSnapshot !== 'function') {
    throw new ImageError(ERROR_CODES.UNSUPPORTED, `${disk.format}: ${disk.storage.name}: this format has no internal snapshots`, { data: { file: disk.storage.name } });
  }
  return s.openSnapshot.call(disk, name);
}

/**
 * Converts `input` (of `srcFormat`) into a new file `output` of `dstFormat`.
 * A failed conversion removes the output unless `keepPartial`.
 */
export async function convertFile(options: ConvertFileOptions): Promise<ConvertResult> {
  const registry = options.registry ?? defaultRegistry();
  const dstDriver = registry.require(options.dstFormat);
  const src = await openImageFile(options.input, {
    format: options.srcFormat,
    registry,
    forceFormat: options.forceFormat ?? false,
    untrusted: options.untrusted ?? false,
  });
  let created = false;
  let snapshot: Disk | undefined;
  try {
    if (options.snapshot !== undefined) snapshot = await openDiskSnapshot(src, options.snapshot);
    const target = await FileStorage.create(options.output);
    created = true;
    const { disk, result } = await convertDisk(snapshot ?? src, dstDriver, target, {
      ...options,
      resolver: options.resolver ?? fileResolver,
      formats: options.formats ?? registry,
    });
    await disk.close();
    return result;
  } catch (e) {
    if (created && !options.keepPartial) await rm(options.output, { force: true }).catch(() => undefined);
    throw e;
  } finally {
    await snapshot?.close().catch(() => undefined);
    await src.close().catch(() => undefined);
  }
}
