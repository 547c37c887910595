/**
 * Persistent dirty bitmaps as qemu sees them: the bits through qemu-nbd -B
 * and nbdinfo --map=qemu:dirty-bitmap:NAME (qemu-nbd started by nbdinfo
 * itself, so nothing is left running), the directory through qemu-img info.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { qemuInfo } from './qemu.js';

/** One run of `nbdinfo --map`: [offset, length, dirty]. */
export type BitmapRun = [number, number, boolean];

/** The runs of bitmap `name` of a qcow2 file as qemu exports it; throws with qemu-nbd's message when it refuses. */
export function qemuDirtyBitmap(file: string, name: string): BitmapRun[] {
  const r = spawnSync('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, '--', '[', 'qemu-nbd', '-r', '-f', 'qcow2', '-B', name, file, ']'], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`nbdinfo/qemu-nbd on ${file} bitmap ${name} failed: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [offset, length, type] = l.trim().split(/\s+/);
      return [Number(offset), Number(length), Number(type) === 1] as BitmapRun;
    });
}

/** qemu-img info's bitmap list (name, granularity, flags), or [] when there is none. */
export function qemuBitmapList(file: string): Array<{ name: string; granularity: number; flags: string[] }> {
  const info = qemuInfo(file, 'qcow2') as { 'format-specific'?: { data?: { bitmaps?: Array<{ name: string; granularity: number; flags: string[] }> } } };
  return info['format-specific']?.data?.bitmaps ?? [];
}

/**
 * Sets the in_use flag of bitmap `name` in a qcow2 file by hand, as a
 * writer that stopped without closing the image leaves it (a test-side
 * parse of the header extension and directory, independent of the codecs).
 */
export function setQcow2BitmapInUse(file: string, name: string): void {
  const bytes = readFileSync(file);
  let p = bytes.readUInt32BE(100); // header_length
  for (;;) {
    const type = bytes.readUInt32BE(p);
    const length = bytes.readUInt32BE(p + 4);
    if (type === 0) throw new Error(`${file} has no bitmaps extension`);
    if (type === 0x23852875) break;
    p += 8 + Math.ceil(length / 8) * 8;
  }
  const count = bytes.readUInt32BE(p + 8);
  let at = Number(bytes.readBigUInt64BE(p + 8 + 16));
  for (let i = 0; i < count; i++) {
    const nameSize = bytes.readUInt16BE(at + 18);
    const extra = bytes.readUInt32BE(at + 20);
    if (bytes.toString('utf8', at + 24 + extra, at + 24 + extra + nameSize) === name) {
      bytes.writeUInt32BE(bytes.readUInt32BE(at + 12) | 1, at + 12);
      writeFileSync(file, bytes);
      return;
    }
    at += Math.ceil((24 + extra + nameSize) / 8) * 8;
  }
  throw new Error(`${file} has no bitmap ${name}`);
}
