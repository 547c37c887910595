/**
 * img-convert --bitmaps (qemu-img convert --bitmaps): every persistent
 * bitmap of a qcow2 source is copied to the qcow2 output once the data is
 * copied, with its granularity, its enabled state and its bits.
 * Inconsistent (in-use) bitmaps stop the conversion before anything is
 * written, unless --skip-broken-bitmaps skips them with a warning.
 */
import { FileStorage, fileResolver } from '@img/block/node';
import { corrupt, unsupported, type Storage } from '@img/block';
import { editQcow2Bitmaps, listQcow2Bitmaps, readQcow2DirtyBitmap, type Qcow2BitmapOp } from '@img/qcow2';
import type { Io } from './common.js';

/** What --bitmaps copies, read from the source before the conversion starts. */
export interface BitmapCopy {
  ops: Qcow2BitmapOp[];
}

/**
 * Checks that --bitmaps can be honoured (qemu-img's refusals and words) and
 * reads the source's bitmaps.
 */
export async function planBitmapCopy(options: { input: string; srcFormat: string; dstFormat: string; dstCompat?: string; skipBroken: boolean; forceShare: boolean; io: Io; prog: string }): Promise<BitmapCopy> {
  const qemuName = (f: string) => (f === 'vhd' ? 'vpc' : f);
  if (options.dstFormat !== 'qcow2') throw unsupported(options.dstFormat, undefined, `Format driver '${qemuName(options.dstFormat)}' does not support bitmaps`, { field: '--bitmaps' });
  if (options.dstCompat !== undefined && ['0.10', 'v2', '2'].includes(options.dstCompat)) throw unsupported('qcow2', undefined, "Format driver 'qcow2' does not support bitmaps (compat=0.10 has no persistent bitmaps)", { field: '--bitmaps' });
  if (options.input === '-' || options.srcFormat !== 'qcow2') throw unsupported(options.srcFormat, options.input, 'Source lacks bitmap support (--bitmaps copies the bitmaps of a qcow2 file)', { field: '--bitmaps' });
  const storage: Storage = await FileStorage.open(options.input, { readOnly: true, forceShare: options.forceShare });
  try {
    const ops: Qcow2BitmapOp[] = [];
    for (const b of await listQcow2Bitmaps(storage, options.input)) {
      if (b.flags.includes('in-use')) {
        if (options.skipBroken) {
          options.io.stderr(`${options.prog}: warning: Skipping inconsistent bitmap '${b.name}'\n`);
          continue;
        }
        throw corrupt('qcow2', options.input, `Cannot copy inconsistent bitmap '${b.name}'. Try --skip-broken-bitmaps, or use 'img bitmap --remove' to delete it`, { field: 'bitmap flags' });
      }
      const bits = await readQcow2DirtyBitmap(storage, b.name, options.input);
      ops.push({ op: 'add', name: b.name, granularity: b.granularity, disabled: !bits.enabled }, { op: 'merge', name: b.name, source: bits });
    }
    return { ops };
  } finally {
    await storage.close();
  }
}

/** Adds the planned bitmaps to the finished output (one switch: all or none). */
export async function applyBitmapCopy(output: string, copy: BitmapCopy): Promise<void> {
  if (copy.ops.length === 0) return;
  const storage = await FileStorage.open(output, { readOnly: false });
  try {
    await editQcow2Bitmaps(storage, copy.ops, { resolver: fileResolver });
  } finally {
    await storage.close();
  }
}
