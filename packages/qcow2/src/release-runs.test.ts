// Clusters freed together (a discard, an overlay emptied by commit) drop their references as runs: one refcount
// write per run of clusters that follow each other in the file, not one two-byte write per cluster (emptying a
// 512 MiB overlay after img commit wrote 8192 of them and took twice qemu-img's time).
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';

const cs = 65536;

class CountingStorage extends MemoryStorage {
  writes = 0;
  override write(position: number, data: Uint8Array): Promise<void> {
    this.writes++;
    return super.write(position, data);
  }
}

describe('releasing clusters', () => {
  it('writes the refcounts of a discarded run of clusters once, and leaves them free for the next write', async () => {
    const storage = new CountingStorage({ name: 'r.qcow2' });
    const disk = await createQcow2(storage, { size: 256 * cs, clusterSize: cs });
    await disk.write(0, new Uint8Array(128 * cs).fill(7));
    await disk.flush();
    const before = await storage.size();
    storage.writes = 0;
    await disk.discard(0, 128 * cs);
    await disk.flush();
    // The L2 table's range, the refcount block's range, and the header's dirty bit or so: not 128 refcount writes.
    expect(storage.writes).toBeLessThanOrEqual(6);
    // The clusters are free again: rewriting them does not grow the file.
    await disk.write(0, new Uint8Array(128 * cs).fill(8));
    await disk.flush();
    expect(await storage.size()).toBe(before);
    const bytes = storage.toBytes();
    await disk.close();
    const again = await openQcow2(MemoryStorage.from(bytes, { name: 'r.qcow2' }));
    expect((await again.read(127 * cs, 4))[0]).toBe(8);
    await again.close();
    const report = await checkQcow2(MemoryStorage.from(bytes, { name: 'r.qcow2' }));
    expect([report.corruptions, report.leaks]).toEqual([0, 0]);
  });
});
