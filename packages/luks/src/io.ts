/**
 * Guest reads and writes of a luks image: every sector is encrypted on
 * its own, its IV made from its guest sector number (its place in the
 * payload, not in the file: qemu's block/crypto.c), so a read decrypts
 * whole sectors around the bytes asked for, and a write that covers a
 * sector in part decrypts it, patches it and encrypts it whole.
 */
import { alignUp, readOnlyError } from '@img/block';
import { SECTOR, type SectorCipher } from '@img/qcow2/luks';
import type { LuksImage } from './image.js';
import { lockedError } from './luks-errors.js';

/** The largest run encrypted at once by a zero write (a buffer of this size is the most it allocates). */
const ZERO_PIECE = 1 << 20;

function cipherOf(core: LuksImage): SectorCipher {
  if (!core.cipher) throw lockedError(core.file);
  return core.cipher;
}

/** Reads whole sectors from guest sector `first` into `buf` and decrypts them (past the end of the file: zeros, decrypted as qemu does). */
async function readSectors(core: LuksImage, cipher: SectorCipher, first: number, buf: Uint8Array): Promise<void> {
  const n = await core.storage.readInto(core.payloadOffset + first * SECTOR, buf);
  if (n < buf.length) buf.fill(0, n);
  cipher.decrypt(first, buf);
}

/** Reads `target.length` guest bytes at `offset` (inside the disk: the facade checks). */
export async function readLuks(core: LuksImage, offset: number, target: Uint8Array): Promise<void> {
  const cipher = cipherOf(core);
  if (target.length === 0) return;
  const head = offset % SECTOR;
  const start = offset - head;
  const length = alignUp(head + target.length, SECTOR);
  const buf = head === 0 && length === target.length ? target : new Uint8Array(length);
  await readSectors(core, cipher, start / SECTOR, buf);
  if (buf !== target) target.set(buf.subarray(head, head + target.length));
}

/** Encrypts `data` at guest `offset` (sectors covered in part are read, decrypted and patched first). Runs under the write lock. */
async function writeLocked(core: LuksImage, cipher: SectorCipher, offset: number, data: Uint8Array): Promise<void> {
  const head = offset % SECTOR;
  const start = offset - head;
  const length = alignUp(head + data.length, SECTOR);
  const first = start / SECTOR;
  const buf = new Uint8Array(length);
  if (head !== 0) await readSectors(core, cipher, first, buf.subarray(0, SECTOR));
  const tail = (head + data.length) % SECTOR;
  // The last sector, when it is covered in part and is not the first one (already read).
  if (tail !== 0 && (length > SECTOR || head === 0)) await readSectors(core, cipher, first + length / SECTOR - 1, buf.subarray(length - SECTOR));
  buf.set(data, head);
  cipher.encrypt(first, buf);
  await core.storage.write(core.payloadOffset + start, buf);
}

/** Writes `data` at guest `offset`, encrypted (inside the disk: the facade checks). */
export async function writeLuks(core: LuksImage, offset: number, data: Uint8Array): Promise<void> {
  if (core.readOnly) throw readOnlyError('luks', core.file);
  const cipher = cipherOf(core);
  if (data.length === 0) return;
  await core.writes.run(() => writeLocked(core, cipher, offset, data));
}

/**
 * Writes zeros over guest `[offset, offset + length)`: encrypted zeros
 * (the file's zeros would read as the decryption of zeros, which is
 * noise), a MiB at a time. A discard does the same: a guest must read
 * zeros where it discarded, and a hole in the file would read as noise.
 */
export async function writeZeroesLuks(core: LuksImage, offset: number, length: number): Promise<void> {
  if (core.readOnly) throw readOnlyError('luks', core.file);
  const cipher = cipherOf(core);
  for (let at = offset; at < offset + length;) {
    // Pieces end on sector boundaries, so that only the first and the last one read around themselves.
    const end = Math.min(offset + length, Math.floor((at + ZERO_PIECE) / SECTOR) * SECTOR);
    const piece = new Uint8Array(end - at);
    await core.writes.run(() => writeLocked(core, cipher, at, piece));
    at = end;
  }
}
