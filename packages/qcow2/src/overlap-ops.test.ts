/**
 * Snapshot operations and amend write through the overlap check: on a
 * corrupt image where applying a snapshot would rewrite an "L2 table" that
 * is really the active L1 table, or a downgrade would zero a "zero
 * cluster" that is really a refcount block, the operation is refused
 * (ERR_IMG_CORRUPT, "preventing invalid write on metadata") and the
 * metadata stays as it was.
 */
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, ImageError, MemoryStorage, readU32Be, writeU32Be } from '@img/block';
import { amendQcow2 } from './amend.js';
import { createQcow2 } from './create.js';
import { openQcow2, openWrittenQcow2 } from './open.js';

const CS = 1024;
/** Two L2 tables' worth (128 KiB each with 1 KiB clusters): two L1 entries. */
const SIZE = 256 * 1024;

/** A 64-bit field or table entry, flag bits 56-63 dropped. */
function u64(bytes: Uint8Array, at: number): number {
  return (readU32Be(bytes, at) & 0x00ffffff) * 0x1_0000_0000 + readU32Be(bytes, at + 4);
}

function put64(bytes: Uint8Array, at: number, value: number): void {
  writeU32Be(bytes, at, Math.floor(value / 0x1_0000_0000));
  writeU32Be(bytes, at + 4, value >>> 0);
}

describe('snapshot operations and the overlap check', () => {
  for (const compat of ['v2', 'v3'] as const) {
    it(`${compat}: applying a snapshot whose L2 table is the active L1 table is refused and writes nothing`, async () => {
      const storage = new MemoryStorage({ name: 'bad.qcow2' });
      const disk = await createQcow2(storage, { size: SIZE, compat, clusterSize: CS });
      await disk.write(0, new Uint8Array(4 * CS).fill(7));
      await disk.createSnapshot('s1');
      await disk.close();
      const bytes = storage.toBytes();
      const activeL1 = u64(bytes, 40);
      const l2 = u64(bytes, activeL1); // the active layer's L2 table
      const snapshotTable = u64(bytes, 64);
      const snapL1 = u64(bytes, snapshotTable);
      // The snapshot's first L1 entry points at the active L1 table, its second at the active L2 table:
      // the active L1's entry, read as an L2 entry, maps the L2 table, which after the apply has two
      // references, so its COPIED flag would have to be cleared in place, in the active L1 table.
      put64(bytes, snapL1, activeL1);
      put64(bytes, snapL1 + 8, l2);
      const before = bytes.slice();
      const bad = MemoryStorage.from(bytes, { name: 'bad.qcow2' });
      // The writable-open gate refuses the image first (the table is in use twice with one reference)...
      const first = MemoryStorage.from(bytes.slice(), { name: 'bad.qcow2' });
      const gated = await openQcow2(first, { readOnly: false }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(gated), String(gated)).toBe(true);
      expect((gated as ImageError).code).toBe(ERROR_CODES.CORRUPT);
      expect((gated as ImageError).message).toMatch(/refusing to open for writing: the L2 table of snapshot 1 at 0x[0-9a-f]+ .* is also the active L1 table/);
      // ...and past the gate (an open that skips it), the apply's own check refuses it.
      const rw = await openWrittenQcow2(bad);
      const error = await rw.applySnapshot('s1').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(error), String(error)).toBe(true);
      expect((error as ImageError).code).toBe(ERROR_CODES.CORRUPT);
      expect((error as ImageError).message).toMatch(/refusing to apply snapshot 1: its L1 entry 0 at 0x[0-9a-f]+ points at 0x[0-9a-f]+, inside the active L1 table/);
      await rw.close().catch(() => undefined);
      expect(first.toBytes()).toEqual(before);
      const after = bad.toBytes();
      expect(after.length).toBe(before.length);
      // Refused at the open and before the apply's exclusive section: nothing was written, not even the corrupt bit.
      const changed: number[] = [];
      for (let i = 0; i < after.length; i++) if (after[i] !== before[i]) changed.push(i);
      expect(changed, `bytes changed at ${changed.slice(0, 8).join(', ')}`).toEqual([]);
    });
  }
});

describe('amend and the overlap check', () => {
  it('compat=0.10 refuses to zero a preallocated zero cluster that is the refcount block', async () => {
    const storage = new MemoryStorage({ name: 'bad.qcow2' });
    const disk = await createQcow2(storage, { size: SIZE, clusterSize: CS });
    await disk.write(0, new Uint8Array(4 * CS).fill(3));
    await disk.writeZeroes(0, CS, { mayUnmap: false }); // a zero cluster that keeps its host cluster
    await disk.close();
    const bytes = storage.toBytes();
    const l2 = u64(bytes, u64(bytes, 40));
    const block = u64(bytes, u64(bytes, 48));
    expect(readU32Be(bytes, l2 + 4) & 1, 'entry 0 is a zero cluster').toBe(1);
    // Its host cluster becomes the refcount block (zero flag kept): the downgrade would write zeros over it.
    put64(bytes, l2, block + 1); // bit 0: reads as zeros
    writeU32Be(bytes, l2, 0x80000000 | Math.floor(block / 0x1_0000_0000)); // COPIED, as before
    const refcounts = bytes.slice(block, block + CS);
    const bad = MemoryStorage.from(bytes, { name: 'bad.qcow2' });
    const error = await amendQcow2(bad, { compat: '0.10' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ImageError.isInstance(error), String(error)).toBe(true);
    expect((error as ImageError).code).toBe(ERROR_CODES.CORRUPT);
    // The writable-open gate amend runs first refuses it (the overlap check behind it would refuse the zeroing).
    expect((error as ImageError).message).toMatch(/refusing to open for writing: the data cluster at 0x[0-9a-f]+ \(entry at 0x[0-9a-f]+\) lies on metadata/);
    const after = bad.toBytes();
    expect(Array.from(after.subarray(block, block + CS))).toEqual(Array.from(refcounts));
    expect(readU32Be(after, 4), 'still version 3').toBe(3);
  });
});
