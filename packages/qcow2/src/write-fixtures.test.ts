/**
 * Writes into images qemu made: snapshots (shared L2 tables and data
 * clusters: copy-on-write), compressed clusters, extended L2 over a
 * backing file, v2, preallocated, grown, bitmaps, 512-byte clusters.
 * Random operations against a model seeded with qemu's content; the
 * snapshots must not change; checkQcow2 (and qemu-img check) stay clean.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryStorage, bytesEqual } from '@img/block';
import { hasQemuImg, qemuCheck, tempDir } from '@img/testkit';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { dataFor } from '../test/write-model.js';
import { loadFixture, memoryResolver, qcow2Dir } from '../test/fixtures.js';
import { copyFileSync } from 'node:fs';

type FOp = { op: 'write'; offset: number; length: number; seed: number } | { op: 'zero'; offset: number; length: number; unmap: boolean } | { op: 'discard'; offset: number; length: number } | { op: 'compressed'; cluster: number; seed: number };

const FIXTURES = [
  'snapshots.qcow2',
  'compressed-zlib-4k.qcow2',
  'compressed-overwritten.qcow2',
  'extended-l2-overlay.qcow2',
  'chain-top.qcow2',
  'v2-4k.qcow2',
  'v3-512.qcow2',
  'prealloc-metadata.qcow2',
  'zero-clusters.qcow2',
  'grown.qcow2',
  'bitmaps.qcow2',
  'refcount-1.qcow2',
  'over-raw.qcow2',
];

let dir: string;
let cleanup: () => void;

describe('writing into qemu-made images', () => {
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-fixwrite-'));
  });
  afterAll(() => cleanup());

  for (const name of FIXTURES) {
    it(name, async () => {
      const probe = await openQcow2(MemoryStorage.from(loadFixture(name), { name }), { resolver: memoryResolver });
      const size = probe.size;
      const cs = probe.clusterSize;
      const snapshotsBefore = await Promise.all(probe.snapshots.map(async (s) => (await probe.openSnapshot(s.id)).read(0, s.diskSize)));
      await probe.close();
      const range = fc.record({ at: fc.nat(size - 1), len: fc.integer({ min: 1, max: 6 * cs }), align: fc.boolean() }).map(({ at, len, align }) => {
        const offset = align ? Math.floor(at / cs) * cs : at;
        return { offset, length: Math.min(len, size - offset) };
      });
      const op: fc.Arbitrary<FOp> = fc.oneof(
        fc.tuple(range, fc.nat()).map(([r, seed]) => ({ op: 'write' as const, ...r, seed })),
        fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ op: 'zero' as const, ...r, unmap })),
        range.map((r) => ({ op: 'discard' as const, ...r })),
        fc.tuple(fc.nat(), fc.nat()).map(([c, seed]) => ({ op: 'compressed' as const, cluster: c, seed })),
      );
      let run = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 10 }), async (ops) => {
          const storage = MemoryStorage.from(loadFixture(name), { name });
          const disk = await openQcow2(storage, { readOnly: false, resolver: memoryResolver });
          const model = await disk.read(0, size);
          for (const o of ops) {
            if (o.op === 'write') {
              const d = dataFor(o.length, o.seed);
              await disk.write(o.offset, d);
              model.set(d, o.offset);
            } else if (o.op === 'zero') {
              await disk.writeZeroes(o.offset, o.length, { mayUnmap: o.unmap });
              model.fill(0, o.offset, o.offset + o.length);
            } else if (o.op === 'discard') {
              await disk.discard(o.offset, o.length);
              model.set(await disk.read(o.offset, o.length), o.offset);
            } else {
              const c = o.cluster % Math.ceil(size / cs);
              const d = dataFor(Math.min(cs, size - c * cs), o.seed);
              await disk.writeCompressed(c * cs, d);
              model.set(d, c * cs);
            }
          }
          expect(bytesEqual(await disk.read(0, size), model)).toBe(true);
          // Snapshots are untouched by writes to the active layer.
          for (const [i, s] of disk.snapshots.entries()) {
            const snap = await disk.openSnapshot(s.id);
            expect(bytesEqual(await snap.read(0, s.diskSize), snapshotsBefore[i]!)).toBe(true);
            await snap.close();
          }
          await disk.close();
          const bytes = storage.toBytes();
          const again = await openQcow2(MemoryStorage.from(bytes, { name }), { resolver: memoryResolver });
          expect(bytesEqual(await again.read(0, size), model)).toBe(true);
          await again.close();
          const check = await checkQcow2(MemoryStorage.from(bytes, { name }));
          expect({ corruptions: check.corruptions, leaks: check.leaks }, check.messages.slice(0, 5).join('\n')).toEqual({ corruptions: 0, leaks: 0 });
          if (hasQemuImg && run++ < 2) {
            // qemu agrees (its backing files sit next to the copy).
            const sub = join(dir, `${name}-${run}`);
            mkdirSync(sub);
            writeFileSync(join(sub, name), bytes);
            for (const dep of ['chain-mid.qcow2', 'chain-base.qcow2', 'extended-l2-base.qcow2', 'raw-base.img']) copyFileSync(join(qcow2Dir, dep), join(sub, dep));
            const q = qemuCheck(join(sub, name));
            expect(q.status, q.stderr + JSON.stringify(q.result)).toBe(0);
          }
        }),
        { seed: Number(process.env.IMG_SEED ?? 99), numRuns: Number(process.env.IMG_RUNS ?? 12) },
      );
    });
  }
});
