/**
 * A conversion whose output exists already with a fixed size: an NBD URI (an
 * export) or a block device. Nothing is created: as qemu-img convert does
 * (its NBD and host_device "create" check the existing size), the source's
 * bytes are written into it, zero runs included (it is not assumed to read
 * as zeros: holes are zeroed, punched where the device can), and one
 * smaller than the source is refused before anything is written. Bytes past
 * the source's size are left as they are. Such an output is never removed,
 * whatever happens.
 */
import { invalidArg, invalidUsage, sparseCopy, type Disk, type FormatRegistry, type SparseCopyOptions } from '@img/block';
import { FileStorage } from '@img/block/node';
import { NbdStorage } from '@img/nbd';
import type { ConvertResult } from '../convert.js';
import { salvagingDisk, type SalvageEvent } from '../salvage.js';

/** What of a conversion's options applies to an NBD output (those of ConvertFileOptions). */
export interface NbdOutputOptions extends Pick<SparseCopyOptions, 'minZeroRun' | 'onProgress' | 'signal' | 'rateLimit'> {
  output: string;
  dstFormat: string;
  registry: FormatRegistry;
  compress?: boolean;
  backingFile?: string;
  createOptions?: Record<string, unknown>;
  salvage?: boolean;
  onSalvage?: (event: SalvageEvent) => void;
}

/** What the output is: an NBD export or a block device. */
export type ExistingOutputKind = 'nbd' | 'device';

/**
 * Refuses what cannot go with a raw conversion into an NBD export or a
 * block device (before the source is opened): -c, -B, -o. An image format
 * there is device-output.ts's (checkDeviceFormat chose between them).
 */
export function checkNbdOutput(options: NbdOutputOptions, kind: ExistingOutputKind = 'nbd'): void {
  if (options.compress || options.backingFile !== undefined || Object.keys(options.createOptions ?? {}).length > 0) {
    throw invalidUsage(`${options.output}: ${kind === 'nbd' ? 'an NBD export' : 'a block device'} exists already: -c, -B and -o apply to a new image`, { file: options.output, field: 'output' });
  }
}

/** Writes `source` into the NBD export or block device `output` (checked by checkNbdOutput). */
export async function convertIntoNbdExport(source: Disk, options: NbdOutputOptions, kind: ExistingOutputKind = 'nbd'): Promise<ConvertResult> {
  const started = Date.now();
  const storage = kind === 'nbd' ? await NbdStorage.connect(options.output, { writable: true }) : await FileStorage.open(options.output, { readOnly: false });
  const what = kind === 'nbd' ? 'the NBD export' : 'the block device';
  try {
    const size = await storage.size();
    if (size < source.size) {
      throw invalidArg('convert', `${options.output}: ${what} is ${size} bytes, smaller than the ${source.size} bytes of the source; ${kind === 'nbd' ? 'an export' : 'a device'} cannot grow`, {
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
      ...(options.rateLimit !== undefined ? { rateLimit: options.rateLimit } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    await target.flush();
    return { ...copied, virtualSize: source.size, durationMs: Date.now() - started };
  } finally {
    await storage.close().catch(() => undefined);
  }
}
