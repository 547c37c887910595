/**
 * `convert -n` (qemu-img convert -n): the output exists already; write the
 * source's contents into it instead of creating it. The target is not
 * assumed to read as zeros, so the source's zero and unallocated ranges are
 * written as zeros too, and a target smaller than the source is refused.
 */
import { invalidArg, sparseCopy, type BackingOpenOptions, type Disk, type FormatRegistry, type SparseCopyOptions } from '@img/block';
import type { ConvertResult } from '../convert.js';
import { salvagingDisk, type SalvageEvent } from '../salvage.js';
import { openDiskSnapshot, openImageFile } from '../node.js';
import type { CacheMode } from '../cache-mode.js';
import { assertNotRead, filesOf, identityOfPath } from '../node/same-file.js';
import { sourceOpened } from '../node/source-hook.js';

export interface ConvertIntoOptions extends Pick<SparseCopyOptions, 'minZeroRun' | 'onProgress' | 'signal' | 'rateLimit'> {
  input: string;
  output: string;
  srcFormat: string;
  /** As convertFile's: called with the source once it is open, before the output is touched. */
  onSourceOpen?: (source: Disk) => void | Promise<void>;
  /** The input's passphrase (an encrypted qcow2), and its backing files' where they differ. */
  passphrase?: Uint8Array;
  backing?: BackingOpenOptions;
  /** Read the input without its backing file (qemu's `"backing": null`). */
  noBacking?: boolean;
  dstFormat: string;
  /** The target's passphrase (an encrypted qcow2: its data is written encrypted). */
  dstPassphrase?: Uint8Array;
  registry: FormatRegistry;
  forceFormat?: boolean;
  untrusted?: boolean;
  forceShare?: boolean;
  /** Convert this internal snapshot (id or name) of the input. */
  snapshot?: string;
  /** The target reads as zeros already (qemu-img convert --target-is-zero): zero ranges are not written. */
  targetIsZero?: boolean;
  /** Write what cannot be read as zeros and report it (qemu-img convert --salvage). */
  salvage?: boolean;
  onSalvage?: (event: SalvageEvent) => void;
  /**
   * The target's cache mode (-t), as qemu-img's: `unsafe` (the default)
   * leaves the target to the page cache (its flushes return at once and it
   * is not synced); the others sync it at the end (and at the format's own
   * flushes); none and directsync also write the data the copy loop moves
   * around the page cache.
   */
  cache?: CacheMode;
}

/** Copies `input` over the existing image `output`, which must be at least as large. */
export async function convertIntoExisting(options: ConvertIntoOptions): Promise<ConvertResult> {
  const started = Date.now();
  const src = await openImageFile(options.input, {
    format: options.srcFormat,
    registry: options.registry,
    forceFormat: options.forceFormat ?? false,
    untrusted: options.untrusted ?? false,
    forceShare: options.forceShare ?? false,
    ...(options.passphrase !== undefined ? { passphrase: options.passphrase } : {}),
    ...(options.backing !== undefined ? { backing: options.backing } : {}),
    ...(options.noBacking ? { noBacking: true } : {}),
  });
  await sourceOpened(src, options.onSourceOpen);
  let snapshot: Disk | undefined;
  let dst: Disk | undefined;
  try {
    // Writing a file being read (the input or any file of its chain) would destroy it as it is copied.
    assertNotRead(identityOfPath(options.output), filesOf(src), 'output');
    if (options.snapshot !== undefined) snapshot = await openDiskSnapshot(src, options.snapshot);
    const source = snapshot ?? src;
    const cache = options.cache ?? 'unsafe';
    dst = await openImageFile(options.output, {
      format: options.dstFormat,
      registry: options.registry,
      readOnly: false,
      forceFormat: options.forceFormat ?? false,
      ...(options.dstPassphrase !== undefined ? { passphrase: options.dstPassphrase } : {}),
      ...(cache === 'none' || cache === 'directsync' ? { direct: true } : {}),
      cache: cache === 'unsafe' ? 'unsafe' : 'writeback',
    });
    if (dst.size < source.size) {
      throw invalidArg('convert', `${options.output}: the target's virtual size (${dst.size} bytes) is smaller than the source's (${source.size} bytes); -n writes into the target as it is`, {
        file: options.output,
        field: 'virtual size',
        expected: source.size,
        actual: dst.size,
      });
    }
    const view = options.salvage ? salvagingDisk(source, options.onSalvage ? { onSalvage: options.onSalvage } : {}) : source;
    const copied = await sparseCopy(view, dst, {
      dstIsZero: options.targetIsZero ?? false,
      ...(options.salvage ? { batchRuns: false } : {}),
      ...(options.minZeroRun !== undefined ? { minZeroRun: options.minZeroRun } : {}),
      ...(options.rateLimit !== undefined ? { rateLimit: options.rateLimit } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    await dst.flush();
    // Closing the target can still write (a qcow2 header, its dirty bit): its failure is the command's.
    const target = dst;
    dst = undefined;
    await target.close();
    return { ...copied, virtualSize: source.size, durationMs: Date.now() - started };
  } finally {
    // Cleanup after a failure, which is what the caller must see; and the input, only read.
    await dst?.close().catch(() => undefined);
    await snapshot?.close().catch(() => undefined);
    await src.close().catch(() => undefined);
  }
}
