import { describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, readU64Be, readU32Be } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, tempDir, withStorage } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { spawnSync } from 'node:child_process';
import { fixtureNames, fixturePath, loadFixture, qcow2Dir } from '../test/fixtures.js';
import { openQcow2 } from './open.js';

describeQemu('checkQcow2 agrees with qemu-img check', () => {
  for (const name of fixtureNames()) {
    it(name, async () => {
      // qemu resolves data file names against its working directory: run it in the fixture directory.
      const q = JSON.parse(spawnSync('qemu-img', ['check', '--output=json', name], { cwd: qcow2Dir, encoding: 'utf8' }).stdout) as Record<string, number>;
      const ours = await checkQcow2(MemoryStorage.from(loadFixture(name), { name }));
      expect({
        corruptions: ours.corruptions,
        leaks: ours.leaks,
        checkErrors: ours.checkErrors,
        imageEndOffset: ours.imageEndOffset,
        totalClusters: ours.totalClusters,
        allocatedClusters: ours.allocatedClusters,
        fragmentedClusters: ours.fragmentedClusters,
        compressedClusters: ours.compressedClusters,
      }).toEqual({
        corruptions: q.corruptions ?? 0,
        leaks: q.leaks ?? 0,
        checkErrors: q['check-errors'] ?? 0,
        imageEndOffset: q['image-end-offset'],
        totalClusters: q['total-clusters'],
        allocatedClusters: q['allocated-clusters'] ?? 0,
        fragmentedClusters: q['fragmented-clusters'] ?? 0,
        compressedClusters: q['compressed-clusters'] ?? 0,
      });
    });
  }
});

describe('repairs', () => {
  it('a leaked cluster is found and repaired, and qemu agrees before and after', async () => {
    const { path: dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'leak.qcow2');
      copyFileSync(fixturePath('refcount-16.qcow2'), path);
      // Raise the refcount of the refcount table's cluster (1) to 2: one reference too many.
      const bytes = loadFixture('refcount-16.qcow2');
      const block = readU64Be(bytes, readU64Be(bytes, 48));
      expect(readU64Be(bytes, 48)).toBe(4096);
      const storage = await FileStorage.open(path, { readOnly: false });
      await storage.write(block + 1 * 2, new Uint8Array([0, 2]));
      await storage.close();
      expect(qemuCheck(path).result!.leaks).toBe(1);
      const found = await withStorage(FileStorage.open(path), (s) => checkQcow2(s));
      expect(found.leaks).toBe(1);
      expect(found.messages.join('\n')).toMatch(/Leaked cluster 1 refcount=2 reference=1/);
      const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'leaks' }));
      expect(fixed).toMatchObject({ leaks: 0, leaksFixed: 1, corruptions: 0 });
      expect(qemuCheck(path).status).toBe(0);
    } finally {
      cleanup();
    }
  });

  it('a dirty image (lazy refcounts, killed) is repaired on a writable open, as qemu does', async () => {
    const storage = MemoryStorage.from(loadFixture('dirty.qcow2'), { name: 'dirty.qcow2' });
    const before = await checkQcow2(MemoryStorage.from(loadFixture('dirty.qcow2'), { name: 'dirty.qcow2' }));
    expect(before.corruptions).toBe(4);
    const disk = await openQcow2(storage, { readOnly: false });
    expect((await disk.info()).dirty).toBe(false);
    expect((await disk.read(0, 8192)).every((b) => b === 0x16)).toBe(true);
    await disk.write(100, new Uint8Array([1, 2, 3]));
    await disk.close();
    const after = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'x' }));
    expect(after).toMatchObject({ corruptions: 0, leaks: 0 });
    const hdr = storage.toBytes();
    expect(readU32Be(hdr, 76) & 1).toBe(0);
  });
});
