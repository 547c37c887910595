/**
 * convert(): any registered format into any other, through sparseCopy and
 * the extent iterator: no code for a particular pair of formats.
 */
import { bytesEqual, sparseCopy, unsupported, type DriverCreateOptions, type Disk, type FormatDriver, type FormatRegistryLike, type Resolver, type SparseCopyOptions, type SparseCopyResult, type Storage } from '@img/block';
import { OverlayDiff } from './overlay-diff.js';
import { salvagingDisk, type SalvageEvent } from './salvage.js';

export interface ConvertDiskOptions extends Omit<SparseCopyOptions, 'dstIsZero' | 'writeData' | 'writeZeroes' | 'alignment' | 'topOnly'> {
  /**
   * Destination create options under the format's typed (camelCase) keys
   * (`clusterSize`, `lazyRefcounts`, ...) or qemu-img's `-o` names
   * (`cluster_size`, `lazy_refcounts`); values may be `-o` strings such as
   * '64k'. `size` is the source's. A key the format does not declare, or
   * one given under both spellings, is ERR_IMG_INVALID_ARG, thrown before
   * anything is written.
   */
  createOptions?: Record<string, unknown>;
  /** Store data compressed (qcow2 -c); the destination format must support it. */
  compress?: boolean;
  /**
   * Make the output an overlay of this backing file, storing only what
   * differs from it (qemu-img convert -B). Resolved relative to the output.
   */
  backingFile?: string;
  backingFormat?: string;
  /** Opens the backing file named by `backingFile` (e.g. fileResolver). */
  resolver?: Resolver;
  formats?: FormatRegistryLike;
  /**
   * Copy what can be read (qemu-img convert --salvage): a source range
   * whose read fails is written as zeros instead of failing the
   * conversion, sector by sector, and reported through `onSalvage`.
   */
  salvage?: boolean;
  /** With `salvage`: called for each unreadable sector (or unreadable extent map) written as zeros. */
  onSalvage?: (event: SalvageEvent) => void;
  /**
   * Write a new image through the format's one-pass writer
   * (FormatDriver.createFresh: data laid out as it arrives, metadata
   * written once at the end) where the options allow it. Default true;
   * false always uses create() and the general writer. The image is the
   * same either way, cluster for cluster.
   */
  bulk?: boolean;
}

export interface ConvertResult extends SparseCopyResult {
  virtualSize: number;
  durationMs: number;
}

interface CompressingDisk extends Disk {
  writeCompressed(offset: number, data: Uint8Array): Promise<void>;
}

function canCompress(disk: Disk): disk is CompressingDisk {
  return typeof (disk as Partial<CompressingDisk>).writeCompressed === 'function';
}

/** The destination's allocation unit (cluster or block size), or 64 KiB if it has none. */
async function allocationUnit(disk: Disk): Promise<number> {
  const info = await disk.info?.();
  return info?.clusterSize ?? 65536;
}

/**
 * Creates an image of `driver`'s format on `target` with the source's
 * size and copies the source into it. The destination is left open and
 * flushed; the caller closes it.
 *
 * @example
 * ```ts
 * const { disk } = await convertDisk(src, qcow2Driver, await FileStorage.create('out.qcow2'), { compress: true });
 * await disk.close();
 * ```
 */
export async function convertDisk(src: Disk, driver: FormatDriver, target: Storage, options: ConvertDiskOptions = {}): Promise<{ disk: Disk; result: ConvertResult }> {
  const { disk, result } = await convertInto(src, driver, target, options, true);
  return { disk: disk!, result };
}

/**
 * convertDisk, and with `keepOpen` false the destination is closed instead
 * of handed back: a one-pass writer then commits its metadata without
 * opening the image again (convertFile closes it at once).
 */
export async function convertInto(src: Disk, driver: FormatDriver, target: Storage, options: ConvertDiskOptions, keepOpen: boolean): Promise<{ disk: Disk | undefined; result: ConvertResult }> {
  const started = Date.now();
  const createOptions: DriverCreateOptions = { ...(options.createOptions ?? {}), size: src.size };
  // The resolver also creates files a format keeps beside the image (a vmdk monolithicFlat extent).
  if (options.resolver) createOptions.resolver = options.resolver;
  if (options.backingFile !== undefined) {
    createOptions.backingFile = options.backingFile;
    if (options.backingFormat !== undefined) createOptions.backingFormat = options.backingFormat;
    if (options.formats) createOptions.formats = options.formats;
  }
  // A plain new image (no -c, no -B): the format's one-pass writer, where it has one for these options.
  const fresh = options.bulk === false || options.compress || options.backingFile !== undefined ? undefined : await driver.createFresh?.(target, createOptions);
  // Salvage reads through a view that turns failed reads into zeros; host runs would read around it.
  const salvageCopy: Partial<SparseCopyOptions> = {};
  if (options.salvage) {
    src = salvagingDisk(src, options.onSalvage ? { onSalvage: options.onSalvage } : {});
    salvageCopy.batchRuns = false;
  }
  if (fresh) {
    try {
      const result = await sparseCopy(src, fresh, { ...options, ...salvageCopy, dstIsZero: true });
      let disk: Disk | undefined;
      if (keepOpen) disk = await fresh.finish();
      else await fresh.close();
      return { disk, result: { ...result, virtualSize: src.size, durationMs: Date.now() - started } };
    } catch (e) {
      await fresh.abort().catch(() => undefined);
      throw e;
    }
  }
  const disk = await driver.create(target, createOptions);
  try {
    const copy: SparseCopyOptions = { ...options, ...salvageCopy, dstIsZero: true };
    if (options.compress) {
      if (!canCompress(disk)) {
        throw unsupported(driver.name, undefined, 'this format cannot store compressed data (-c)');
      }
      const cluster = await allocationUnit(disk);
      copy.alignment = cluster;
      copy.chunkSize = Math.max(cluster, Math.floor((options.chunkSize ?? 4 << 20) / cluster) * cluster);
      copy.writeData = (o, d) => disk.writeCompressed(o, d);
    }
    if (options.backingFile !== undefined) {
      const diff = new OverlayDiff(disk, await allocationUnit(disk));
      copy.dstIsZero = false;
      const plainWrite = copy.writeData;
      copy.writeData = plainWrite
        ? async (o, d) => {
            // Compressed overlay: compare first, then write whole clusters compressed.
            const current = await disk.read(o, d.length);
            if (!bytesEqual(current, d)) await plainWrite(o, d);
          }
        : (o, d) => diff.write(o, d);
      copy.writeZeroes = (o, n) => diff.writeZeroes(o, n);
    }
    const result = await sparseCopy(src, disk, copy);
    await disk.flush();
    if (!keepOpen) await disk.close();
    return { disk: keepOpen ? disk : undefined, result: { ...result, virtualSize: src.size, durationMs: Date.now() - started } };
  } catch (e) {
    await disk.close().catch(() => undefined);
    throw e;
  }
}

/** Parses `key=value,key=value` (qemu-img -o) into an object. A bare key means "on". */
export function parseCreateOptions(text: string | readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const parts = text === undefined ? [] : typeof text === 'string' ? [text] : text;
  for (const part of parts) {
    // As qemu-img: ",," is a literal comma inside a value.
    for (const item of part.split(/(?<!,),(?!,)/).map((x) => x.replace(/,,/g, ','))) {
      const trimmed = item.trim();
      if (!trimmed) continue;
      const eq = trimmed.indexOf('=');
      if (eq < 0) out[trimmed] = 'on';
      else out[trimmed.slice(0, eq)] = trimmed.slice(eq + 1);
    }
  }
  return out;
}
