import { describe, expect, it } from 'vitest';
import { MemoryStorage, readU64Be } from '@img/block';
import type { Storage } from '@img/block';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { decodeL2Entry, l1EntryOffset } from './mapping.js';
import { imageError } from '../test/fixtures.js';
import { seededBytes } from '@img/testkit';

/** A storage that answers reads at one offset only after a timer: the reader's walk waits there. */
function slowAt(inner: MemoryStorage, slowOffset: number): Storage {
  const later = () => new Promise((resolve) => setTimeout(resolve, 20));
  return {
    name: inner.name,
    readOnly: true,
    size: () => inner.size(),
    read: async (position: number, length: number) => {
      if (position === slowOffset) await later();
      return inner.read(position, length);
    },
    readInto: async (position: number, target: Uint8Array) => {
      if (position === slowOffset) await later();
      return inner.readInto(position, target);
    },
    write: (position: number, data: Uint8Array) => inner.write(position, data),
    truncate: (size: number) => inner.truncate(size),
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
}

describe('a read that fails while the mapping is still being walked', () => {
  it('rejects with the corruption, and no rejection goes unheard in between', async () => {
    // 512-byte clusters: one L2 table maps 32 KiB, so a 64 KiB read walks two tables.
    const storage = new MemoryStorage({ name: 'walk.qcow2' });
    const disk = await createQcow2(storage, { size: 64 * 1024, clusterSize: 512 });
    await disk.writeCompressed(0, new Uint8Array(512).fill(0x61));
    await disk.write(32 * 1024, seededBytes(512, 4));
    await disk.close();
    const bytes = storage.toBytes();
    const l1At = Number(readU64Be(bytes, 40));
    const l1 = bytes.subarray(l1At, l1At + 16);
    const firstL2 = l1EntryOffset(l1, 0, 512, 'walk.qcow2', l1At);
    const secondL2 = l1EntryOffset(l1, 1, 512, 'walk.qcow2', l1At);
    const entry = decodeL2Entry(bytes.subarray(firstL2, firstL2 + 512), 0, { clusterBits: 9, clusterSize: 512, extendedL2: false, zeroFlag: true, dataFile: false }, 'walk.qcow2', firstL2);
    expect(entry.type).toBe('compressed');
    if (entry.type !== 'compressed') return;
    // Not a deflate stream any more.
    bytes.fill(0xff, entry.host, entry.host + Math.min(entry.size, 16));

    const unheard: unknown[] = [];
    const listen = (reason: unknown) => unheard.push(reason);
    process.on('unhandledRejection', listen);
    try {
      const damaged = await openQcow2(slowAt(MemoryStorage.from(bytes, { name: 'walk.qcow2' }), secondL2));
      const e = await imageError(damaged.read(0, 64 * 1024));
      expect(e.code).toBe('ERR_IMG_CORRUPT');
      expect(e.message).toMatch(/compressed cluster/);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(unheard).toEqual([]);
    } finally {
      process.off('unhandledRejection', listen);
    }
  });
});
