/**
 * L2 entries of a write that releases nothing are written without holding
 * the table (writer.ts, ClusterMap.deferTableRange): while such a write
 * is in flight the table must stay readable from memory (an L2 cache of
 * one table evicts it at once), flush must wait for it, and a failed one
 * must be reported by the next flush.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import { seededBytes, seededRandom } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';

/** Memory storage whose writes land after a random delay (so writes overlap and finish out of order). */
class SlowStorage extends MemoryStorage {
  failAt: ((position: number, length: number) => boolean) | undefined;
  #random = seededRandom(7);
  override async write(position: number, data: Uint8Array): Promise<void> {
    const copy = data.slice();
    await new Promise((r) => setTimeout(r, Math.floor(this.#random() * 3)));
    if (this.failAt?.(position, copy.length)) throw new Error(`injected write failure at ${position}`);
    await super.write(position, copy);
  }
}

const CLUSTER = 4096;
/** 4 KiB clusters: one L2 table maps 2 MiB. */
const TABLE_SPAN = (CLUSTER / 8) * CLUSTER;

describe('deferred L2 writes', () => {
  it('reads see every write while the L2 writes are in flight and the cache holds one table; flush lands them all', async () => {
    const size = 8 * TABLE_SPAN;
    const created = await createQcow2(new MemoryStorage({ name: 'd.qcow2' }), { size, clusterSize: '4k' });
    await created.close();
    const storage = new SlowStorage({ name: 'd.qcow2', data: (created.storage as MemoryStorage).toBytes() });
    const disk = await openQcow2(storage, { readOnly: false, l2CacheSize: CLUSTER });
    const model = new Uint8Array(size);
    const random = seededRandom(3);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) {
      // Cluster-aligned pieces spread over every table, several per table, none overlapping another in flight.
      const table = i % 8;
      const at = table * TABLE_SPAN + Math.floor(i / 8) * 8 * CLUSTER + Math.floor(random() * 4) * CLUSTER;
      const data = seededBytes(CLUSTER * (1 + Math.floor(random() * 3)), 100 + i);
      model.set(data, at);
      writes.push(disk.write(at, data));
    }
    await Promise.all(writes);
    // Before any flush: reads go through tables that may still be on their way to the file.
    expect(bytesEqual(await disk.read(0, size), model)).toBe(true);
    await disk.flush();
    await disk.close();
    const bytes = storage.toBytes();
    const reopened = await openQcow2(MemoryStorage.from(bytes, { name: 'd.qcow2' }));
    expect(bytesEqual(await reopened.read(0, size), model)).toBe(true);
    await reopened.close();
    const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'd.qcow2' }));
    expect([check.corruptions, check.leaks]).toEqual([0, 0]);
  });

  it('a deferred L2 write that fails is reported by the next flush', async () => {
    const created = await createQcow2(new MemoryStorage({ name: 'f.qcow2' }), { size: TABLE_SPAN, clusterSize: '4k' });
    await created.write(0, seededBytes(CLUSTER, 1)); // the L2 table exists from here on
    await created.close();
    const storage = new SlowStorage({ name: 'f.qcow2', data: (created.storage as MemoryStorage).toBytes() });
    const disk = await openQcow2(storage, { readOnly: false });
    // Fail the next write of 8 bytes (an L2 entry); data clusters are 4 KiB.
    let armed = true;
    storage.failAt = (_position, length) => {
      if (armed && length === 8) {
        armed = false;
        return true;
      }
      return false;
    };
    await disk.write(4 * CLUSTER, seededBytes(CLUSTER, 2));
    await expect(disk.flush()).rejects.toThrow(/injected write failure/);
    await disk.close().catch(() => undefined);
    expect(armed).toBe(false);
  });
});
