// A snapshot change over an L2 entry with reserved bits set: refused before anything is written. It copied and
// rewrote the table that holds the entry, and a failure after left a second corrupt entry beside the first
// (qcow2 fuzz seed 1151 case 185: "corruptions 1 -> 2").
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { describeQemu, entryOffsetAt, qemuCheck, qemuQcow2, tempDir, withStorage } from '@img/testkit';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';

const dir = tempDir('qcow2-snap-reserved-');
afterAll(() => dir.cleanup());

describeQemu('snapshot changes over an L2 entry with reserved bits set', () => {
  it('snapshot -c refuses it with ERR_IMG_CORRUPT, writing nothing but the corrupt bit; after check -r all it works, and qemu-img check agrees', async () => {
    const path = join(dir.path, 'reserved.qcow2');
    const q = qemuQcow2(path, '16M', 'cluster_size=65536', [
      [0, 65536, 0x11],
      [65536, 65536, 0x22],
    ]);
    expect(qemuCheck(path).status).toBe(0);
    // Bit 61 of the second cluster's L2 entry (bits 56-61 are reserved in a standard entry), and a snapshot to apply.
    const l2 = entryOffsetAt(q, q.l1Offset);
    q.view.setUint8(l2 + 8, q.view.getUint8(l2 + 8) | 0x20);
    // And reserved bit 1 of the low word: the message names the entry to its last bit (a float made of it would not).
    q.view.setUint8(l2 + 15, q.view.getUint8(l2 + 15) | 0x02);
    const entry = `0x${q.view.getBigUint64(l2 + 8).toString(16)}`;
    expect(entry).toMatch(/^0xa0+[0-9a-f]*2$/);
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const disk0 = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    try {
      await expect(disk0.createSnapshot('s')).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringContaining(`L2 entry at 0x${(l2 + 8).toString(16)} has reserved bits set (${entry}): run img check -r all before changing snapshots`) });
    } finally {
      await disk0.close();
    }
    // Nothing written but the header's corrupt bit (incompatible feature bit 1), as qemu marks an image it finds corrupt.
    const after = readFileSync(path);
    expect(after.length).toBe(before.length);
    const changed = [...after.keys()].filter((i) => after[i] !== before[i]);
    expect(changed).toEqual([79]);
    expect(after[79]! & 2).toBe(2);
    // The repair clears the bits (as qemu-img check -r all); then the snapshot is made, and qemu-img calls it clean.
    const repaired = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(repaired.corruptions).toBe(0);
    const disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    try {
      await disk.createSnapshot('s');
    } finally {
      await disk.close();
    }
    expect(qemuCheck(path).status).toBe(0);
  });
});
