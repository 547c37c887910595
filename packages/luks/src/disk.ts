/**
 * LuksDisk: the public Disk of a luks image, a thin facade over its core
 * (LuksImage): each method checks its arguments, runs one operation and
 * counts it in flight, so close() waits for it.
 */
import { checkDiskData, checkDiskRange, type Disk, type Extent, type ExtentOptions, type ImageInfo, type ResizeOptions, type Storage, type WriteZeroesOptions } from '@img/block';
import type { LuksHeader } from '@img/qcow2/luks';
import { luksExtents } from './extents.js';
import type { LuksImage } from './image.js';
import { luksInfo } from './info.js';
import { readLuks, writeLuks, writeZeroesLuks } from './io.js';
import { FORMAT } from './luks-errors.js';
import { resizeLuks } from './resize.js';

/** An open luks image (see openLuks). */
export class LuksDisk implements Disk {
  readonly format = FORMAT;
  readonly #core: LuksImage;

  /** @internal Made by openLuks and createLuks. */
  constructor(core: LuksImage) {
    this.#core = core;
  }

  get size(): number {
    return this.#core.size;
  }

  get readOnly(): boolean {
    return this.#core.readOnly;
  }

  get storage(): Storage {
    return this.#core.storage;
  }

  /** The LUKS header as read at open (cipher, hash, key slots). */
  get header(): LuksHeader {
    return this.#core.header;
  }

  /** Bytes from the start of the file to guest sector 0. */
  get payloadOffset(): number {
    return this.#core.payloadOffset;
  }

  /** Whether the data key is unlocked (the image was opened with its passphrase). */
  get unlocked(): boolean {
    return this.#core.cipher !== undefined;
  }

  #range(offset: number, length: number): void {
    checkDiskRange(FORMAT, this.#core.size, offset, length, this.#core.file);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#core.ops.run(async () => {
      this.#range(offset, length);
      const out = new Uint8Array(length);
      await readLuks(this.#core, offset, out);
      return out;
    });
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#core.ops.run(async () => {
      checkDiskData(FORMAT, target, 'target', this.#core.file);
      this.#range(offset, target.length);
      await readLuks(this.#core, offset, target);
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#core.ops.run(async () => {
      checkDiskData(FORMAT, data, 'data', this.#core.file);
      this.#range(offset, data.length);
      await writeLuks(this.#core, offset, data);
    });
  }

  /** Writes encrypted zeros (a luks image has no way to say "zeros" but to store them). */
  writeZeroes(offset: number, length: number, _options?: WriteZeroesOptions): Promise<void> {
    return this.#core.ops.run(async () => {
      this.#range(offset, length);
      await writeZeroesLuks(this.#core, offset, length);
    });
  }

  /** As writeZeroes: the range then reads as zeros. */
  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  flush(): Promise<void> {
    return this.#core.ops.run(async () => {
      if (!this.#core.readOnly) await this.#core.storage.flush();
    });
  }

  close(): Promise<void> {
    return this.#core.ops.close(async () => {
      try {
        if (!this.#core.readOnly) await this.#core.storage.flush();
      } finally {
        await this.#core.storage.close();
      }
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    this.#core.ops.check();
    return luksExtents(this.#core, options);
  }

  info(): Promise<ImageInfo> {
    return this.#core.ops.run(async () => luksInfo(this.#core));
  }

  resize(newSize: number, options?: ResizeOptions): Promise<void> {
    return this.#core.ops.run(() => resizeLuks(this.#core, newSize, options));
  }
}
