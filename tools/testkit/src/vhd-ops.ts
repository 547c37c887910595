/**
 * Random write / writeZeroes / discard steps for the VHD property tests,
 * and their effect on a disk and on a flat model of it. The test builds
 * its fast-check arbitrary from VHD_OP_KINDS and clampVhdOp (the testkit
 * has no fast-check of its own).
 */
import { seededBytes } from './random.js';

/** One step: `seed` chooses a write's bytes. */
export interface VhdOp {
  kind: 'write' | 'zero' | 'discard';
  offset: number;
  length: number;
  seed: number;
}

/** The kinds to draw from (writes three times as often). */
export const VHD_OP_KINDS = ['write', 'write', 'write', 'zero', 'discard'] as const;

/** The step cut to end inside a disk of `size` bytes. */
export function clampVhdOp(op: VhdOp, size: number): VhdOp {
  return { ...op, length: Math.min(op.length, size - op.offset) };
}

/** What applyVhdOp needs of a disk. */
export interface VhdOpTarget {
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
}

/** Applies a step to the disk and to the model. */
export async function applyVhdOp(disk: VhdOpTarget, model: Uint8Array, op: VhdOp): Promise<void> {
  if (op.kind === 'write') {
    const data = seededBytes(op.length, op.seed);
    await disk.write(op.offset, data);
    model.set(data, op.offset);
  } else {
    if (op.kind === 'zero') await disk.writeZeroes(op.offset, op.length);
    else await disk.discard(op.offset, op.length);
    model.fill(0, op.offset, op.offset + op.length);
  }
}
