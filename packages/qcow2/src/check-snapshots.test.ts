import { describe, expect, it } from 'vitest';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, readU64Be, writeU32Be, writeU64Be } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, tempDir, withStorage } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { serializeSnapshotTable } from './snapshot.js';
import { fixturePath, loadFixture } from '../test/fixtures.js';

const LINE = 'ERROR 1 snapshots in image with data file';

/**
 * The data-file-nonraw fixture (4 KiB clusters, 16-bit refcounts, five
 * clusters) with a snapshot table of one complete entry in a sixth
 * cluster, whose refcount is 1: the snapshot itself is the only problem.
 */
function withSnapshot(): Uint8Array {
  const base = loadFixture('data-file-nonraw.qcow2');
  const cs = 4096;
  expect(base.length).toBe(5 * cs);
  const out = new Uint8Array(6 * cs);
  out.set(base);
  const extra = new Uint8Array(24);
  writeU64Be(extra, 8, 65536); // disk_size
  extra.fill(0xff, 16, 24); // icount: none
  const entry = { l1TableOffset: 0, l1Size: 0, id: '1', name: 'sn', dateSec: 0, dateNsec: 0, vmClockNsec: 0, vmStateSize: 0, diskSize: 65536, icount: -1, vmStateSize32: 0, extra, entryOffset: 5 * cs };
  out.set(serializeSnapshotTable([entry]), 5 * cs);
  writeU32Be(out, 60, 1); // nb_snapshots
  writeU64Be(out, 64, 5 * cs); // snapshots_offset
  const block = readU64Be(out, readU64Be(out, 48));
  out[block + 5 * 2 + 1] = 1; // refcount of cluster 5
  return out;
}

describe('snapshots in an image with an external data file', () => {
  it('are a corruption check reports (seed 1111 case 81)', async () => {
    const r = await checkQcow2(MemoryStorage.from(withSnapshot(), { name: 'sn.qcow2' }));
    expect(r.corruptions).toBe(1);
    expect(r.leaks).toBe(0);
    expect(r.messages).toContain(LINE);
  });

  it('stay one after check -r all, which fixes the rest', async () => {
    const bytes = withSnapshot();
    bytes[readU64Be(bytes, readU64Be(bytes, 48)) + 2 * 2 + 1] = 0; // refcount of cluster 2 -> 0
    const before = await checkQcow2(MemoryStorage.from(bytes.slice(), { name: 'sn.qcow2' }));
    expect(before.corruptions).toBeGreaterThan(1);
    const storage = MemoryStorage.from(bytes, { name: 'sn.qcow2' });
    const r = await checkQcow2(storage, { repair: 'all' });
    expect(r.corruptions).toBe(1);
    expect(r.messages).toContain(LINE);
    const again = await checkQcow2(storage);
    expect(again).toMatchObject({ corruptions: 1, leaks: 0 });
  });
});

describeQemu('snapshots in an image with an external data file, against qemu-img check', () => {
  it('both count them, before and after check -r all', async () => {
    const { path: dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'sn.qcow2');
      writeFileSync(path, withSnapshot());
      copyFileSync(fixturePath('data-file-nonraw.img'), join(dir, 'data-file-nonraw.img'));
      const q = qemuCheck(path, 'qcow2', dir);
      expect(q.result?.corruptions).toBe(1);
      expect(q.stderr).toContain(LINE);
      const ours = await withStorage(FileStorage.open(path), (s) => checkQcow2(s));
      expect(ours.corruptions).toBe(q.result?.corruptions);
      const repaired = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
      expect(repaired.corruptions).toBe(1);
      expect(qemuCheck(path, 'qcow2', dir).result?.corruptions).toBe(1);
    } finally {
      cleanup();
    }
  });
});
