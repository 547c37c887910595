/**
 * Regressions found by the hostile input campaign (test/fuzz-campaign.mjs,
 * README "Hostile input campaign"): each is the smallest image that shows
 * the problem, built here with qemu-img and a byte patch, judged by img's
 * own check and by qemu-img check.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { entryAt, qemuCheck, qemuQcow2, tempDir } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-hostile-');
afterAll(() => tmp.cleanup());

async function check(path: string, repair?: 'leaks' | 'all') {
  const storage = await FileStorage.open(path, { readOnly: !repair });
  try {
    return await checkQcow2(storage, repair ? { repair } : {});
  } finally {
    await storage.close();
  }
}

async function readAll(path: string): Promise<Uint8Array> {
  const storage = await FileStorage.open(path);
  const disk = await openQcow2(storage);
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
    await storage.close();
  }
}

describe('check counts what qemu-img check counts, and repair all leaves nothing qemu-img check calls corrupt', () => {
  it('an L2 entry with a reserved bit set (bit 56)', async () => {
    const path = join(tmp.path, 'l2-reserved.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x33]]);
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(l2, entryAt(q, l2) | (1n << 56n));
    writeFileSync(path, q.bytes);
    const before = await readAll(path);
    expect(qemuCheck(path).status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/L2 entry at 0x[0-9a-f]+ has reserved bits set/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.corruptionsFixed).toBe(1);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
  });

  it('an L1 entry holding the COPIED flag and no L2 table offset (qemu-img check reads the header as its table)', async () => {
    const path = join(tmp.path, 'l1-flags-only.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x44]]);
    q.view.setBigUint64(q.l1Offset, 1n << 63n);
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/active L1 entry 0 at 0x[0-9a-f]+ has flags but no L2 table offset/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    // The cleared entry's old table and data were leaks: repaired too.
    expect(repaired.leaks).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(new Uint8Array(1024 * 1024));
  });

  it('an active L1 entry pointing at the L1 table itself: repair all drops the entry instead of failing half-way', async () => {
    const path = join(tmp.path, 'l1-is-its-l2.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x55]]);
    q.view.setBigUint64(q.l1Offset, (1n << 63n) | BigInt(q.l1Offset));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.messages.join('\n')).toMatch(/active L1 entry 0 at 0x[0-9a-f]+ pointed at an L2 table at 0x[0-9a-f]+ that lies on the active L1 table; cleared/);
    expect(qemuCheck(path).status).toBe(0);
    expect((await check(path)).corruptions).toBe(0);
  });
});
