/**
 * LuksImage, the core of one open luks image: its storage and header,
 * where the payload starts, the guest size, the data key once a
 * passphrase unlocks it, and the lock that runs writes one at a time (a
 * write that covers a sector in part decrypts, patches and encrypts it
 * whole, which no other write to that sector may interleave with).
 * Operations are functions over it (io.ts, resize.ts, extents.ts); the
 * public LuksDisk is a facade.
 */
import { alignUp, DiskOperations, Mutex, type Storage } from '@img/block';
import { SECTOR, type LuksHeader, type SectorCipher } from '@img/qcow2/luks';
import { FORMAT } from './luks-errors.js';

/** The state of one open luks image. */
export class LuksImage {
  readonly storage: Storage;
  readonly header: LuksHeader;
  /** Bytes from the start of the file to guest sector 0. */
  readonly payloadOffset: number;
  readonly readOnly: boolean;
  /** The data key, when the image was opened with its passphrase. */
  readonly cipher: SectorCipher | undefined;
  /** Guest bytes: the file past the payload offset, to a whole sector (as qemu counts it). */
  size: number;
  /** Writes, one at a time. */
  readonly writes = new Mutex();
  /** The operations in flight, and close. */
  readonly ops: DiskOperations;

  constructor(init: { storage: Storage; header: LuksHeader; payloadOffset: number; fileSize: number; readOnly: boolean; cipher: SectorCipher | undefined }) {
    this.storage = init.storage;
    this.header = init.header;
    this.payloadOffset = init.payloadOffset;
    this.readOnly = init.readOnly;
    this.cipher = init.cipher;
    this.size = alignUp(init.fileSize - init.payloadOffset, SECTOR);
    this.ops = new DiskOperations(FORMAT, () => this.storage.name);
  }

  get file(): string {
    return this.storage.name;
  }
}
