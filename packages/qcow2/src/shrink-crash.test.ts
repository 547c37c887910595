/**
 * Crash ordering of a shrinking resize (issue 13, point 5): the new size
 * reaches the disk before anything past it is freed, so at every crash
 * point the image has either the old size and all of its old content, or
 * the new size and the old content up to it — never the old size with part
 * of its tail gone — and check finds no corruption.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { hasQemuImg, inCI, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const tmp = tempDir('img-shrink-crash-');
afterAll(() => tmp.cleanup());
if (!hasQemuImg && inCI) throw new Error('qemu-img is needed in CI');

describe('shrinking resize, crashed at every point', () => {
  for (const compat of ['v3', 'v2'] as const) {
    for (const clusterSize of [4096, 65536]) {
      it(`${compat}, ${clusterSize / 1024} KiB clusters: old size and old content, or new size and the content up to it`, async () => {
        const oldSize = 64 * clusterSize + 3 * 512;
        const newSize = 20 * clusterSize + 1536; // mid-cluster, so the last cluster's tail is zeroed too
        const content = seededBytes(oldSize, 5);
        const base = new MemoryStorage({ name: 's.qcow2' });
        const made = await createQcow2(base, { size: oldSize, compat, clusterSize });
        await made.write(0, content);
        await made.close();
        const fault = new FaultStorage(base.toBytes(), 's.qcow2');
        const disk = await openQcow2(fault, { readOnly: false });
        await disk.resize(newSize, { shrink: true });
        await disk.close();
        const random = seededRandom(11);
        let sawOld = 0;
        let sawNew = 0;
        for (const mode of MODES) {
          for (const n of fault.crashPoints()) {
            const bytes = (await fault.crashImage(n, mode, random)).toBytes();
            const where = `${compat} ${clusterSize}: crash after op ${n} of ${fault.ops.length} (${mode})`;
            const ro = await openQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
            const got = await ro.read(0, ro.size);
            await ro.close();
            if (ro.size === oldSize) {
              sawOld++;
              expect(Buffer.from(got).equals(Buffer.from(content)), `${where}: the old size with part of its content gone`).toBe(true);
            } else {
              sawNew++;
              expect(ro.size, where).toBe(newSize);
              expect(Buffer.from(got).equals(Buffer.from(content.subarray(0, newSize))), `${where}: content up to the new size changed`).toBe(true);
            }
            const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
            expect(check.corruptions, `${where}: ${check.messages.slice(0, 3).join('; ')}`).toBe(0);
            if (hasQemuImg && n % 3 === 0) {
              // qemu-img check judges too: 0 clean, 3 leaks only.
              const file = join(tmp.path, 'crash.qcow2');
              writeFileSync(file, bytes);
              const r = spawnSync('qemu-img', ['check', file], { encoding: 'utf8' });
              expect([0, 3], `${where}: qemu-img check: ${r.stdout}${r.stderr}`).toContain(r.status);
            }
          }
        }
        expect(sawOld).toBeGreaterThan(0);
        expect(sawNew).toBeGreaterThan(0);
      }, 240_000); // every crash point judged by qemu-img check: minutes on a loaded 2-core machine
    }
  }
});
