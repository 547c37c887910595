/**
 * convert --salvage (qemu-img's): a source whose reads fail in places is
 * still copied. A read that fails is tried again in smaller pieces (the
 * source's cluster, then 512-byte sectors, as qemu-img retries sector by
 * sector), and each sector that still cannot be read is handed back as
 * zeros and reported once. An extent map that cannot be read past some
 * offset is treated as data from there, so those bytes are tried too.
 */
import { ImageError, ERROR_CODES, readOnlyError, type Disk, type Extent, type ExtentOptions, type Storage } from '@img/block';

/** The sector size failures are reported in (qemu-img --salvage's unit). */
export const SALVAGE_SECTOR = 512;

/** One unreadable range of the source, written to the output as zeros. */
export interface SalvageEvent {
  /** Guest offset of the range, in bytes. */
  offset: number;
  /** Its length in bytes: one sector, or less at the end of the disk. */
  length: number;
  /** What the read threw. */
  error: unknown;
  /** `'read'` for data that could not be read, `'extents'` when the allocation map itself failed from `offset` on. */
  stage: 'read' | 'extents';
}

export interface SalvageOptions {
  /** Called for each range read as zeros (and once for an extent map that failed). */
  onSalvage?: (event: SalvageEvent) => void;
  /** First retry unit after a failed read (default: the source's cluster size, or 64 KiB). */
  retryUnit?: number;
}

/** Errors that say the read itself was stopped, not that the bytes are bad: never salvaged. */
function mustPropagate(e: unknown): boolean {
  return ImageError.isInstance(e) && (e.code === ERROR_CODES.ABORTED || e.code === ERROR_CODES.INVALID_ARG || e.code === ERROR_CODES.CLOSED);
}

/**
 * A read-only view of `source` whose failed reads come back as zeros, each
 * unreadable sector reported through `onSalvage`. Closing the view does not
 * close the source. Pass the view to sparseCopy with `batchRuns: false`
 * (host runs would bypass it).
 *
 * @example
 * ```ts
 * const view = salvagingDisk(src, { onSalvage: (e) => console.warn(`error while reading offset ${e.offset}`) });
 * await sparseCopy(view, dst, { batchRuns: false });
 * ```
 */
export function salvagingDisk(source: Disk, options: SalvageOptions = {}): Disk {
  return new SalvagingDisk(source, options);
}

class SalvagingDisk implements Disk {
  readonly readOnly = true;
  readonly format: string;
  readonly storage: Storage;
  readonly size: number;
  private unit: number | undefined;

  constructor(
    private readonly source: Disk,
    private readonly options: SalvageOptions,
  ) {
    this.format = source.format;
    this.storage = source.storage;
    this.size = source.size;
    this.unit = options.retryUnit;
  }

  private async retryUnit(): Promise<number> {
    if (this.unit === undefined) {
      const info = await this.source.info?.().catch(() => undefined);
      const cluster = info?.clusterSize;
      this.unit = cluster !== undefined && Number.isSafeInteger(cluster) && cluster >= SALVAGE_SECTOR ? cluster : 65536;
    }
    return this.unit;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    try {
      await this.source.readInto(offset, target);
      return;
    } catch (e) {
      if (mustPropagate(e)) throw e;
    }
    const unit = await this.retryUnit();
    await this.readPieces(offset, target, unit > SALVAGE_SECTOR && target.length > unit ? unit : SALVAGE_SECTOR);
  }

  /** Reads `target` in pieces aligned to `unit`; a failed piece larger than a sector is retried sector by sector. */
  private async readPieces(offset: number, target: Uint8Array, unit: number): Promise<void> {
    let pos = 0;
    while (pos < target.length) {
      const at = offset + pos;
      const end = Math.min(target.length, (Math.floor(at / unit) + 1) * unit - offset);
      const piece = target.subarray(pos, end);
      try {
        await this.source.readInto(at, piece);
      } catch (e) {
        if (mustPropagate(e)) throw e;
        if (unit > SALVAGE_SECTOR) {
          await this.readPieces(at, piece, SALVAGE_SECTOR);
        } else {
          piece.fill(0);
          this.options.onSalvage?.({ offset: at, length: piece.length, error: e, stage: 'read' });
        }
      }
      pos = end;
    }
  }

  async *extents(options: ExtentOptions = {}): AsyncGenerator<Extent> {
    const offset = options.offset ?? 0;
    const length = options.length ?? this.size - offset;
    const end = offset + length;
    let reached = offset;
    try {
      for await (const e of this.source.extents({ offset, length, ...(options.topOnly !== undefined ? { topOnly: options.topOnly } : {}) })) {
        // Host offsets are left out: a copy must read through this view, not around it.
        const { offset: o, length: n, kind } = e;
        yield { offset: o, length: n, kind, ...(e.depth !== undefined ? { depth: e.depth } : {}) };
        reached = o + n;
      }
    } catch (e) {
      if (mustPropagate(e)) throw e;
      if (reached >= end) return;
      this.options.onSalvage?.({ offset: reached, length: end - reached, error: e, stage: 'extents' });
      yield { offset: reached, length: end - reached, kind: 'data' };
    }
  }

  write(): Promise<void> {
    return Promise.reject(readOnlyError(this.format, this.storage.name));
  }

  writeZeroes(): Promise<void> {
    return Promise.reject(readOnlyError(this.format, this.storage.name));
  }

  discard(): Promise<void> {
    return Promise.reject(readOnlyError(this.format, this.storage.name));
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}

  async [Symbol.asyncDispose](): Promise<void> {}
}
