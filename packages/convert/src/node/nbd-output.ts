/**
 * A conversion whose output is an NBD URI. An export exists already and has
 * a fixed size, so nothing is created: as qemu-img convert does (its NBD
 * "create" checks the existing export's size), the source's bytes are
 * written into the export, zero runs included (it is not assumed to read as
 * zeros), and an export smaller than the source is refused before anything
 * is written. Bytes past the source's size are left as they are.
 */
import { invalidArg, invalidUsage, sparseCopy, unsupported, type Disk, type FormatRegistry, type SparseCopyOptions } from '@img/block';
import { NbdStorage } from '@img/nbd';
import type { ConvertResult } from '../convert.js';
import { salvagingDisk, type SalvageEvent } from '../salvage.js';

/** What of a conversion's options applies to an NBD output (those of ConvertFileOptions). */
export interface NbdOutputOptions extends Pick<SparseCopyOptions, 'minZeroRun' | 'onProgress' | 'signal'> {
  output: string;
  dstFormat: string;
  registry: FormatRegistry;
  compress?: boolean;
  backingFile?: string;
  createOptions?: Record<string, unknown>;
  salvage?: boolean;
  onSalvage?: (event: SalvageEvent) => void;
}

/**
 * Refuses what cannot go into an NBD export (before the source is opened):
 * a format other than raw, -c, -B, -o.
 */
export function checkNbdOutput(options: NbdOutputOptions): void {
  const format = options.registry.require(options.dstFormat).name;
  if (format !== 'raw') {
    throw unsupported(format, options.output, `an NBD export takes the disk's bytes as they are: img converts into one with -O raw only, not ${format} (serve a ${format} file with img serve -w to write it over NBD)`);
  }
  if (options.compress || options.backingFile !== undefined || Object.keys(options.createOptions ?? {}).length > 0) {
    throw invalidUsage(`${options.output}: an NBD export exists already: -c, -B and -o apply to a new image`, { file: options.output, field: 'output' });
  }
}

/** Writes `source` into the NBD export `output` (checked by checkNbdOutput). */
export async function convertIntoNbdExport(source: Disk, options: NbdOutputOptions): Promise<ConvertResult> {
  const started = Date.now();
  const storage = await NbdStorage.connect(options.output, { writable: true });
  try {
    const size = await storage.size();
    if (size < source.size) {
      throw invalidArg('convert', `${options.output}: the NBD export is ${size} bytes, smaller than the ${source.size} bytes of the source; an export cannot grow`, {
        file: options.output,
        field: 'virtual size',
        expected: source.size,
        actual: size,
      });
    }
    const target = await options.registry.require('raw').open(storage, { readOnly: false });
    const view = options.salvage ? salvagingDisk(source, options.onSalvage ? { onSalvage: options.onSalvage } : {}) : source;
    const copied = await sparseCopy(view, target, {
      dstIsZero: false,
      ...(options.salvage ? { batchRuns: false } : {}),
      ...(options.minZeroRun !== undefined ? { minZeroRun: options.minZeroRun } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    await target.flush();
    return { ...copied, virtualSize: source.size, durationMs: Date.now() - started };
  } finally {
    await storage.close().catch(() => undefined);
  }
}
