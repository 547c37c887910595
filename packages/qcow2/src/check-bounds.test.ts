import { expect, it } from 'vitest';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, tempDir, writeCheckBomb, withStorage } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

const dist = (p: string) => new URL(p, import.meta.url).href;

/** Runs checkQcow2 from the built package in a child process: its result and peak RSS. */
function checkInChild(path: string): { result: { corruptions: number; allocatedClusters: number; messages: string[] }; maxRssKiB: number } {
  const script = `
    const { checkQcow2 } = await import(${JSON.stringify(dist('../dist/index.js'))});
    const { FileStorage } = await import(${JSON.stringify(import.meta.resolve('@img/block/node'))});
    const storage = await FileStorage.open(process.argv[1]);
    const result = await checkQcow2(storage);
    await storage.close();
    process.stdout.write(JSON.stringify({ result, maxRssKiB: process.resourceUsage().maxRSS }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, path], { encoding: 'utf8', cwd: fileURLToPath(new URL('..', import.meta.url)) });
  if (r.status !== 0) throw new Error(`child exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as ReturnType<typeof checkInChild>;
}

describeQemu('bounded check (issue 13 point 6)', () => {
  it('a 448 KiB image with 134 M references is checked in bounded memory, the shared L2 table reported', () => {
    const { path: dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'bomb.qcow2');
      writeCheckBomb(path);
      const { result, maxRssKiB } = checkInChild(path);
      expect(result.corruptions).toBeGreaterThan(0);
      expect(result.allocatedClusters).toBe(16384 * 8192);
      expect(result.messages.join('\n')).toMatch(/Warning: L2 table at 0x50000 is shared by 16384 entries of the active L1 table/);
      expect(result.messages.join('\n')).toMatch(/ERROR cluster 6 refcount=1 reference=134217728/);
      expect(maxRssKiB).toBeLessThan(300 * 1024);
    } finally {
      cleanup();
    }
  });

  it('the verdict agrees with qemu-img check on a smaller shared-L2 image', async () => {
    const { path: dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'small-bomb.qcow2');
      writeCheckBomb(path, '8G');
      const q = qemuCheck(path);
      expect(q.status).toBe(2);
      const ours = await withStorage(FileStorage.open(path), (s) => checkQcow2(s));
      expect(ours.corruptions).toBeGreaterThan(0);
      expect(ours.allocatedClusters).toBe(q.result!['allocated-clusters']);
      expect(ours.fragmentedClusters).toBe(q.result!['fragmented-clusters']);
      expect(ours.imageEndOffset).toBe(q.result!['image-end-offset']);
    } finally {
      cleanup();
    }
  });

  it('L1 entries past the virtual size are reported, not followed', async () => {
    const { path: dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'past.qcow2');
      writeCheckBomb(path, '1G');
      // 1 GiB needs 2 L1 entries; qemu-img create gives l1_size 2: grow it to 4 (the table's cluster holds them).
      const storage = await FileStorage.open(path, { readOnly: false });
      const l1 = await storage.read(0x30000, 8);
      await storage.write(0x30000 + 3 * 8, l1);
      await storage.write(36, new Uint8Array([0, 0, 0, 4]));
      await storage.close();
      const ours = await withStorage(FileStorage.open(path), (s) => checkQcow2(s));
      expect(ours.messages.join('\n')).toMatch(/active L1 entry 3 at 0x30018 points at an L2 table \(0x[0-9a-f]+\) past the virtual size/);
      // Read-only opens read it as before.
      {
        await using disk = await openQcow2(await FileStorage.open(path));
        expect((await disk.read(0, 4)).every((b) => b === 0x55)).toBe(true);
      }
      // check -r all clears the entry (and the rest of the bomb), and qemu-img check agrees.
      const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
      expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
      expect(qemuCheck(path).status).toBe(0);
      await using disk = await openQcow2(await FileStorage.open(path));
      expect((await disk.read(0, 4)).every((b) => b === 0x55)).toBe(true);
    } finally {
      cleanup();
    }
  });
});
