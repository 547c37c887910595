// Crash ordering of editQcow2Bitmaps: add, remove, clear and merge run on a FaultStorage; the file is rebuilt as a
// crash after each recorded operation would leave it (a process kill, and the power-loss models drop, subset and
// torn) and judged by qemu: `qemu-img check` finds no corruption (leaks are allowed), and either the image calls its
// bitmaps inconsistent (autoclear bit 0 clear, which qemu ignores them for) or qemu lists the old bitmaps with the old
// bits or the new ones with the new bits. Two layouts: 64 KiB clusters, where qemu's feature name table pushes the
// bitmaps extension past the first sector, and 4 KiB clusters, where everything fits in it.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { describeWith, FaultStorage, killedBytes, qemuBitmapList, qemuCheck, qemuDirtyBitmap, qemuImg, qemuIo, seededRandom, tempDir, type CrashMode } from '@img/testkit';
import { editQcow2Bitmaps, type Qcow2BitmapOp } from './bitmap-edit.js';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-qcow2-bitmap-crash-');
const tally = { images: 0, distinct: 0, inconsistent: 0, old: 0, new: 0 };
afterAll(() => {
  tmp.cleanup();
  process.stderr.write(`[qcow2 bitmap crash] ${tally.images} crash images, ${tally.distinct} distinct: ${tally.old} old, ${tally.new} new, ${tally.inconsistent} inconsistent\n`);
});

type Mode = CrashMode | 'kill';
const MODES: Mode[] = ['kill', 'drop', 'subset', 'torn'];
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** What qemu sees of the bitmaps of a file, as a comparable string (undefined when it calls them inconsistent). */
function qemuView(file: string): string | undefined {
  const bytes = readFileSync(file);
  if ((bytes[95]! & 1) === 0 && qemuBitmapList(file).length === 0) return undefined;
  return JSON.stringify(qemuBitmapList(file).map((b) => ({ ...b, runs: qemuDirtyBitmap(file, b.name) })));
}

function base(clusterSize: string): Uint8Array {
  const file = join(tmp.path, `base-${clusterSize}.qcow2`);
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, file, '4M']);
  qemuImg(['bitmap', '--add', '-g', '64k', file, 'b0']);
  qemuImg(['bitmap', '--add', '-g', '8k', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 1 100000 1000', 'write -P 2 3M 200000']);
  return Uint8Array.from(readFileSync(file)); // a copy: Buffer.slice() would share its bytes with the FaultStorage
}

const OPERATIONS: Array<[string, Qcow2BitmapOp[]]> = [
  ['add', [{ op: 'add', name: 'n', granularity: 16384 }]],
  ['remove', [{ op: 'remove', name: 'b0' }]],
  [
    'remove all',
    [
      { op: 'remove', name: 'b0' },
      { op: 'remove', name: 'b1' },
    ],
  ],
  ['clear', [{ op: 'clear', name: 'b1' }]],
  [
    'add and merge',
    [
      { op: 'add', name: 'n' },
      { op: 'merge', name: 'n', source: 'b1' },
      { op: 'disable', name: 'b0' },
    ],
  ],
];

describeWith('nbdinfo', 'editQcow2Bitmaps crash ordering', () => {
  for (const clusterSize of ['64k', '4k']) {
    it(`${clusterSize} clusters: every crash image is clean (leaks aside) with the old, the new or inconsistent bitmaps`, { timeout: 300_000 }, async () => {
      const start = base(clusterSize);
      const file = join(tmp.path, `judge-${clusterSize}.qcow2`);
      writeFileSync(file, start);
      const old = qemuView(file);
      expect(old).toContain('"b1"');
      for (const [title, ops] of OPERATIONS) {
        const fault = new FaultStorage(start, 'bitmaps.qcow2');
        await editQcow2Bitmaps(fault, ops);
        writeFileSync(file, fault.current());
        const done = qemuView(file);
        expect(done).not.toBe(old);
        const random = seededRandom(11);
        const judged = new Set<string>();
        for (const mode of MODES) {
          for (let n = 0; n <= fault.ops.length; n++) {
            const bytes = mode === 'kill' ? killedBytes(start, fault.ops, n) : (await fault.crashImage(n, mode, random)).toBytes();
            tally.images++;
            const key = sha(bytes);
            if (judged.has(key)) continue;
            judged.add(key);
            tally.distinct++;
            const where = `${clusterSize} ${title}: crash before op ${n} of ${fault.ops.length} (${mode})`;
            writeFileSync(file, bytes);
            const q = qemuCheck(file, 'qcow2');
            expect(q.result, `${where}: ${q.stderr}`).toBeDefined();
            expect({ corruptions: q.result!.corruptions ?? 0, errors: q.result!['check-errors'] ?? 0 }, `${where}: qemu-img check`).toEqual({ corruptions: 0, errors: 0 });
            const ours = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
            expect(ours.corruptions, `${where}: img check: ${ours.messages.slice(0, 3).join('; ')}`).toBe(0);
            const view = qemuView(file);
            if (view === undefined) tally.inconsistent++;
            else if (view === old) tally.old++;
            else if (view === done) tally.new++;
            else expect.fail(`${where}: qemu sees bitmaps that are neither the old nor the new ones: ${view}`);
            // img opens it for writing and writes: the result is still clean.
            if (mode === 'kill' || mode === 'drop') {
              const storage = MemoryStorage.from(bytes, { name: 'crash.qcow2' });
              const disk = await openQcow2(storage, { readOnly: false });
              await disk.write(0, new Uint8Array(4096).fill(9));
              await disk.close();
              const after = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'crash.qcow2' }));
              expect(after.corruptions, `${where}: img check after a write: ${after.messages.slice(0, 3).join('; ')}`).toBe(0);
            }
          }
        }
      }
      expect(tally.old).toBeGreaterThan(0);
      expect(tally.new).toBeGreaterThan(0);
    });
  }
});
