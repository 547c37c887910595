// Random write / writeZeroes / discard steps and their effect on a flat model, for property tests.
import { seededBytes } from '@img/testkit';
import fc from 'fast-check';
import type { VhdDisk } from './image.js';

export type Op = { kind: 'write' | 'zero' | 'discard'; offset: number; length: number; seed: number };

/** Steps inside a disk of `size` bytes, each at most `maxLength` long. */
export function opArb(size: number, maxLength: number): fc.Arbitrary<Op> {
  return fc
    .record({ kind: fc.constantFrom('write', 'write', 'write', 'zero', 'discard'), offset: fc.nat(size - 1), length: fc.integer({ min: 1, max: maxLength }), seed: fc.nat() })
    .map((o) => ({ ...o, length: Math.min(o.length, size - o.offset) }) as Op);
}

/** Applies a step to the disk and to the model. */
export async function apply(disk: VhdDisk, model: Uint8Array, op: Op): Promise<void> {
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
