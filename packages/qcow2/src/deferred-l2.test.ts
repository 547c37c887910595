/**
 * L2 entries of a write that releases nothing are written without holding
 * the table (writer.ts, ClusterMap.queueTableRange): while such a write
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

  it('a stream of allocating writes shares its flush barriers: the entries land after one, never before their data', async () => {
    const created = await createQcow2(new MemoryStorage({ name: 'b.qcow2' }), { size: 4 * TABLE_SPAN, clusterSize: '4k' });
    await created.write(0, seededBytes(CLUSTER, 1)); // the L2 table exists from here on
    await created.close();
    const log: string[] = [];
    class LoggingStorage extends MemoryStorage {
      override async write(position: number, data: Uint8Array): Promise<void> {
        await super.write(position, data);
        log.push(`w ${position} ${data.length}`);
      }
      override async flush(): Promise<void> {
        await super.flush();
        log.push('flush');
      }
    }
    const storage = new LoggingStorage({ name: 'b.qcow2', data: (created.storage as MemoryStorage).toBytes() });
    const disk = await openQcow2(storage, { readOnly: false });
    const model = new Uint8Array(TABLE_SPAN);
    model.set(seededBytes(CLUSTER, 1));
    log.length = 0;
    for (let i = 1; i < 65; i++) {
      const data = seededBytes(CLUSTER, 10 + i);
      model.set(data, i * CLUSTER);
      await disk.write(i * CLUSTER, data);
    }
    expect(bytesEqual(await disk.read(0, TABLE_SPAN), model)).toBe(true);
    await disk.flush();
    // 64 writes that each allocate a cluster: a barrier each before, one or two now (the flush's own included).
    expect(log.filter((e) => e === 'flush').length).toBeLessThanOrEqual(3);
    // Every data cluster reached the file before the first write into the L2 table, with a flush between them.
    const image = new DataView(storage.toBytes().buffer);
    const l2 = Number(image.getBigUint64(Number(image.getBigUint64(40))) & 0x00fffffffffffe00n);
    const at = (e: string) => Number(e.split(' ')[1]);
    const firstEntryWrite = log.findIndex((e) => e.startsWith('w ') && at(e) >= l2 && at(e) < l2 + CLUSTER);
    const lastDataWrite = log.map((e, i) => (e.endsWith(` ${CLUSTER}`) ? i : -1)).reduce((a, b) => Math.max(a, b), -1);
    expect(lastDataWrite).toBeGreaterThan(0);
    expect(firstEntryWrite).toBeGreaterThan(lastDataWrite);
    expect(log.slice(lastDataWrite, firstEntryWrite)).toContain('flush');
    await disk.close();
    const bytes = storage.toBytes();
    const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'b.qcow2' }));
    expect([check.corruptions, check.leaks]).toEqual([0, 0]);
    const reopened = await openQcow2(MemoryStorage.from(bytes, { name: 'b.qcow2' }));
    expect(bytesEqual(await reopened.read(0, TABLE_SPAN), model)).toBe(true);
    await reopened.close();
  });

  it('entries written directly to a table wait for the ones queued before them: a zeroed cluster is not mapped again by an older entry', async () => {
    const created = await createQcow2(new MemoryStorage({ name: 'z.qcow2' }), { size: TABLE_SPAN, clusterSize: '4k' });
    await created.write(0, seededBytes(CLUSTER, 1));
    await created.close();
    const storage = MemoryStorage.from((created.storage as MemoryStorage).toBytes(), { name: 'z.qcow2' });
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.write(8 * CLUSTER, seededBytes(2 * CLUSTER, 2));
    // Unmaps the two clusters at once (their entry written now) and frees them after a barrier.
    await disk.writeZeroes(8 * CLUSTER, 2 * CLUSTER, { mayUnmap: true });
    await disk.write(20 * CLUSTER, seededBytes(CLUSTER, 3));
    await disk.close();
    const bytes = storage.toBytes();
    const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'z.qcow2' }));
    expect(check.corruptions).toBe(0);
    const reopened = await openQcow2(MemoryStorage.from(bytes, { name: 'z.qcow2' }));
    expect(bytesEqual(await reopened.read(8 * CLUSTER, 2 * CLUSTER), new Uint8Array(2 * CLUSTER))).toBe(true);
    expect(bytesEqual(await reopened.read(20 * CLUSTER, CLUSTER), seededBytes(CLUSTER, 3))).toBe(true);
    await reopened.close();
  });

  it('queued entries do not wait for a flush once the tables they hold in memory pass 8 MiB', async () => {
    const cs = 2 * 1024 * 1024;
    // One 2 MiB table maps 512 GiB: five tables hold 10 MiB.
    const span = (cs / 8) * cs;
    const storage = new MemoryStorage({ name: 'm.qcow2' });
    const disk = await createQcow2(storage, { size: 5 * span, clusterSize: cs });
    for (let t = 0; t < 5; t++) await disk.write(t * span, seededBytes(4096, t + 1));
    // No flush yet: a copy of the file as it is maps the first table's data already.
    const now = await openQcow2(MemoryStorage.from(storage.toBytes(), { name: 'm.qcow2' }));
    expect(bytesEqual(await now.read(0, 4096), seededBytes(4096, 1))).toBe(true);
    await now.close();
    await disk.close();
  });
});
