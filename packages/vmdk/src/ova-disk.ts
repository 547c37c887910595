/**
 * OvaDisk: the public Disk of one disk inside an OVA, a read-only facade
 * over the member's own disk (a VMDK, or what openMember opened) whose
 * info() also lists the OVF's disks and the archive's files.
 */
import { readOnlyError, type Disk, type Extent, type ExtentOptions, type ImageInfo, type Storage } from '@img/block';
import type { ManifestEntry } from './ova-manifest.js';
import type { OvfDescriptor } from './ovf.js';

/** What an OVA holds, as read by openOva. */
export interface OvaContents {
  /** The `.ovf` member's name. */
  ovfName: string;
  ovf: OvfDescriptor;
  /** Every regular file of the tar. */
  members: { name: string; size: number }[];
  manifest?: ManifestEntry[];
}

/** One disk of an OVA (read-only). Use openOva. */
export class OvaDisk implements Disk {
  readonly format = 'ova';
  readonly readOnly = true;
  /** The OVF, the manifest and the member list. */
  readonly contents: OvaContents;
  /** Which disk of the OVF this is (from 0). */
  readonly diskIndex: number;
  readonly #inner: Disk;

  /** @internal Use openOva. */
  constructor(inner: Disk, contents: OvaContents, diskIndex: number) {
    this.#inner = inner;
    this.contents = contents;
    this.diskIndex = diskIndex;
  }

  /** The guest size. */
  get size(): number {
    return this.#inner.size;
  }

  /** The member's storage (a window of the OVA). */
  get storage(): Storage {
    return this.#inner.storage;
  }

  /** Reads guest bytes. */
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#inner.read(offset, length);
  }

  /** Reads guest bytes into `target`. */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#inner.readInto(offset, target);
  }

  /** Refused: an OVA is read-only. */
  async write(): Promise<void> {
    throw readOnlyError('ova', this.storage.name);
  }

  /** Refused: an OVA is read-only. */
  async writeZeroes(): Promise<void> {
    throw readOnlyError('ova', this.storage.name);
  }

  /** Refused: an OVA is read-only. */
  async discard(): Promise<void> {
    throw readOnlyError('ova', this.storage.name);
  }

  /** Nothing to flush. */
  async flush(): Promise<void> {}

  /** Closes the member's disk and the OVA's storage. */
  close(): Promise<void> {
    return this.#inner.close();
  }

  /** The member's allocation, from its metadata. */
  extents(options?: ExtentOptions): AsyncIterable<Extent> {
    return this.#inner.extents(options);
  }

  /** The OVA's disks, capacities and files, and the opened disk's own info. */
  async info(): Promise<ImageInfo> {
    const inner = this.#inner.info ? await this.#inner.info() : { format: this.#inner.format, virtualSize: this.size };
    const { ovf } = this.contents;
    return {
      format: 'ova',
      virtualSize: this.size,
      formatSpecific: {
        ...(ovf.name !== undefined ? { name: ovf.name } : {}),
        ovf: this.contents.ovfName,
        disk: this.diskIndex,
        'disk-format': inner.format,
        disks: ovf.disks.map((d, i) => {
          const file = ovf.files.find((f) => f.id === d.fileRef);
          return {
            index: i,
            'disk-id': d.diskId,
            capacity: d.capacity,
            ...(d.populatedSize !== undefined ? { 'populated-size': d.populatedSize } : {}),
            file: file?.href,
            ...(file?.compression !== undefined ? { compression: file.compression } : {}),
            ...(d.format ? { format: d.format } : {}),
          };
        }),
        files: this.contents.members.map((m) => ({ name: m.name, size: m.size })),
        manifest: this.contents.manifest ? this.contents.manifest.length : 0,
        ...(inner.formatSpecific ? { inner: inner.formatSpecific } : {}),
      },
    };
  }

  /** Same as close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
