/**
 * Snapshot operations write through the overlap check: on a corrupt image
 * where applying a snapshot would rewrite an "L2 table" that is really the
 * active L1 table, the operation is refused (ERR_IMG_CORRUPT, "preventing
 * invalid write on metadata") before anything is written.
 */
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, ImageError, MemoryStorage, readU32Be, writeU32Be } from '@img/block';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';

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
      const rw = await openQcow2(bad, { readOnly: false });
      const error = await rw.applySnapshot('s1').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(error), String(error)).toBe(true);
      expect((error as ImageError).code).toBe(ERROR_CODES.CORRUPT);
      expect((error as ImageError).message).toMatch(/preventing invalid write on metadata.*active L1 table/);
      await rw.close().catch(() => undefined);
      const after = bad.toBytes();
      expect(after.length).toBe(before.length);
      // Nothing was written but the corrupt bit (version 3 only: incompatible_features at 72..79).
      const changed: number[] = [];
      for (let i = 0; i < after.length; i++) if (after[i] !== before[i] && !(compat === 'v3' && i >= 72 && i < 80)) changed.push(i);
      expect(changed, `bytes changed at ${changed.slice(0, 8).join(', ')}`).toEqual([]);
      if (compat === 'v3') expect(after[79]! & 2).toBe(2);
    });
  }
});
