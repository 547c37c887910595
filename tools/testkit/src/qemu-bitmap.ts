/**
 * Persistent dirty bitmaps as qemu sees them: the bits through qemu-nbd -B
 * and nbdinfo --map=qemu:dirty-bitmap:NAME (qemu-nbd started by nbdinfo
 * itself, so nothing is left running), the directory through qemu-img info.
 */
import { spawnSync } from 'node:child_process';
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
