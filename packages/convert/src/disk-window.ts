/**
 * A byte range of a disk seen as a disk of its own: byte 0 of the window is
 * byte `offset` of the source. What `img dd` (qemu-img dd's skip= and count=)
 * copies; read-only, and its extents come from the source's metadata.
 */
import { invalidArg, readOnlyError, type Disk, type Extent, type ExtentOptions, type Storage } from '@img/block';

/**
 * A read-only view of `length` bytes of `source` from `offset`. Closing the
 * view does not close the source.
 *
 * @example
 * ```ts
 * const tail = diskWindow(disk, 1 << 20, disk.size - (1 << 20));
 * await sparseCopy(tail, out);
 * ```
 */
export function diskWindow(source: Disk, offset: number, length: number): Disk {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > source.size) {
    throw invalidArg(source.format, `the range ${offset}+${length} is outside the disk (${source.size} bytes)`, { field: 'range' });
  }
  return new DiskWindow(source, offset, length);
}

class DiskWindow implements Disk {
  readonly readOnly = true;
  readonly format: string;
  readonly storage: Storage;

  constructor(
    private readonly source: Disk,
    private readonly start: number,
    readonly size: number,
  ) {
    this.format = source.format;
    this.storage = source.storage;
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw invalidArg(this.format, `the range ${offset}+${length} is outside the window (${this.size} bytes)`, { field: 'range' });
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.check(offset, length);
    return this.source.read(this.start + offset, length);
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    this.check(offset, target.length);
    return this.source.readInto(this.start + offset, target);
  }

  async *extents(options: ExtentOptions = {}): AsyncGenerator<Extent> {
    const offset = options.offset ?? 0;
    const length = options.length ?? this.size - offset;
    this.check(offset, length);
    if (length === 0) return;
    for await (const e of this.source.extents({ ...options, offset: this.start + offset, length })) {
      yield { ...e, offset: e.offset - this.start };
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
