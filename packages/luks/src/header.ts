/**
 * The LUKS1 partition header at the start of a luks image (the LUKS
 * On-Disk Format Specification 1.2.1, as qemu's crypto/block-luks.c uses
 * it): recognised by its magic and version, read and bounded before
 * anything is sized by it. The codec and the key slot bounds are the ones
 * encrypted qcow2 images use (@img/qcow2/luks), with the key material
 * area ending where the payload starts.
 */
import { corrupt, hex, readU16Be, readU32Be, unsupported, wrongFormat, type Storage } from '@img/block';
import { LUKS_HEADER_SIZE, parseLuksHeader, SECTOR, type LuksHeader } from '@img/qcow2/luks';
import { FORMAT, luksCall } from './luks-errors.js';

/** "LUKS\xba\xbe": the first 6 bytes of every LUKS header (spec: magic). */
export const LUKS_MAGIC: readonly number[] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
/** The only version qemu's luks format (and img) reads; LUKS2 headers say 2. */
export const LUKS_VERSION = 1;

function hasMagic(head: Uint8Array): boolean {
  return head.length >= 8 && LUKS_MAGIC.every((c, i) => head[i] === c);
}

/**
 * 100 for a LUKS1 header at offset 0 (magic and version 1, as qemu's
 * luks probe), else 0. A LUKS2 header scores 0 here; its signature still
 * names it luks, and opening it says why it does not open.
 */
export function probeLuks(head: Uint8Array): number {
  return hasMagic(head) && readU16Be(head, 6) === LUKS_VERSION ? 100 : 0;
}

/** A luks image's header and where its payload (the encrypted guest disk) starts. */
export interface LuksVolume {
  header: LuksHeader;
  /** Bytes from the start of the file to the guest's sector 0. */
  payloadOffset: number;
}

/**
 * Reads and bounds the header of the luks image in `storage` (of
 * `fileSize` bytes): LUKS1 only, the payload inside the file, every key
 * slot's material between the header and the payload, PBKDF2 iterations
 * and key sizes as @img/qcow2/luks bounds them.
 */
export async function readLuksVolume(storage: Storage, fileSize: number, file: string): Promise<LuksVolume> {
  const head = await storage.read(0, Math.min(fileSize, LUKS_HEADER_SIZE));
  if (!hasMagic(head)) throw wrongFormat(FORMAT, file, undefined, { field: 'LUKS magic', offset: 0 });
  const version = readU16Be(head, 6);
  if (version !== LUKS_VERSION) {
    throw unsupported(FORMAT, file, `a LUKS version ${version} header${version === 2 ? ' (LUKS2)' : ''}: qemu's luks format and img read LUKS1 only (cryptsetup convert --type luks1 converts a LUKS2 volume that allows it)`, {
      field: 'LUKS version',
      offset: 6,
      actual: version,
    });
  }
  if (fileSize < LUKS_HEADER_SIZE) throw corrupt(FORMAT, file, `the file is ${fileSize} bytes, shorter than a LUKS header (${LUKS_HEADER_SIZE})`, { field: 'file size', actual: fileSize });
  const payloadOffset = readU32Be(head, 104) * SECTOR;
  if (payloadOffset < LUKS_HEADER_SIZE || payloadOffset > fileSize) {
    throw corrupt(FORMAT, file, `payload offset ${hex(payloadOffset)} lies ${payloadOffset > fileSize ? `past the end of the file (${fileSize} bytes)` : 'inside the LUKS header'}`, {
      field: 'LUKS payload_offset',
      offset: 104,
      actual: payloadOffset,
    });
  }
  // The key material of every slot must lie between the header and the payload: the payload offset is the area's length.
  const header = await luksCall(() => parseLuksHeader(head, 0, payloadOffset, file));
  return { header, payloadOffset };
}
