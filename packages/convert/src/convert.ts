/**
 * convert(): any registered format into any other, through sparseCopy and
 * the extent iterator: no code for a particular pair of formats.
 */
import {
  sparseCopy,
  type CreateOptions,
  type Disk,
  type FormatDriver,
  type SparseCopyOptions,
  type SparseCopyResult,
  type Storage,
} from '@img/block';

export interface ConvertDiskOptions extends Omit<SparseCopyOptions, 'dstIsZero'> {
  /** Destination create options (`-o` keys, or typed values). `size` defaults to the source's. */
  createOptions?: Record<string, unknown>;
}

export interface ConvertResult extends SparseCopyResult {
  virtualSize: number;
  durationMs: number;
}

/**
 * Creates an image of `driver`'s format on `target` with the source's
 * size and copies the source into it. The destination is left open and
 * flushed; the caller closes it.
 *
 * @example
 * ```ts
 * const dst = await convertDisk(src, qcow2Driver, await FileStorage.create('out.qcow2'));
 * await dst.disk.close();
 * ```
 */
export async function convertDisk(
  src: Disk,
  driver: FormatDriver,
  target: Storage,
  options: ConvertDiskOptions = {},
): Promise<{ disk: Disk; result: ConvertResult }> {
  const started = Date.now();
  const createOptions: CreateOptions = { ...(options.createOptions ?? {}), size: src.size };
  const disk = await driver.create(target, createOptions);
  try {
    const copy = await sparseCopy(src, disk, { ...options, dstIsZero: true });
    await disk.flush();
    return { disk, result: { ...copy, virtualSize: src.size, durationMs: Date.now() - started } };
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
    for (const item of part.split(',')) {
      const trimmed = item.trim();
      if (!trimmed) continue;
      const eq = trimmed.indexOf('=');
      if (eq < 0) out[trimmed] = 'on';
      else out[trimmed.slice(0, eq)] = trimmed.slice(eq + 1);
    }
  }
  return out;
}
