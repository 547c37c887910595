/**
 * Crash consistency of the bulk writer: a conversion (sparseCopy from a raw
 * disk, and a placed run with clusters given back so that finish() closes
 * gaps) runs on a FaultStorage; then the file is rebuilt as a crash would
 * leave it after every write and truncate, in the three crash models
 * (`drop`: unflushed writes lost; `subset`: any of them landed; `torn`:
 * they landed, the last one only partly, cut at a sector).
 *
 * Once the empty image is flushed (createQcow2Fresh has returned), every
 * crash image must open read-only and read-write, have the disk's size,
 * check with no corruption (leaks allowed) here and in `qemu-img check`
 * (exit 0 or 3), and read as all zeros or as the finished conversion. A
 * torn L1 write is the one exception: each L2 table's span then reads as
 * zeros or as converted, independently. Before that point the file may
 * be no image at all, but never an image that reads anything else.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, bytesEqual, isAllZero, openRaw, sparseCopy, type StorageRange } from '@img/block';
import { FaultStorage, hasQemuImg, qemuCheck, seededBytes, seededRandom, tempDir, type CrashMode } from '@img/testkit';
import { createQcow2Fresh } from './bulk-writer.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import type { Qcow2CreateOptions } from './create.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
/** qemu-img check runs on at most this many distinct crash images per configuration. */
const QEMU_SAMPLES = 12;

const tmp = tempDir('qcow2-bulk-crash-');
afterAll(() => tmp.cleanup());

/** A FaultStorage that reports where its bytes are non-zero, as a sparse file's data ranges (settleRuns reads them). */
class RangedFaultStorage extends FaultStorage {
  async ranges(offset: number, length: number): Promise<StorageRange[]> {
    const bytes = this.current();
    const out: StorageRange[] = [];
    const end = Math.min(offset + length, bytes.length);
    for (let pos = offset; pos < end; pos += 512) {
      const n = Math.min(512, end - pos);
      const data = !isAllZero(bytes.subarray(pos, pos + n));
      const last = out[out.length - 1];
      if (last && last.data === data) last.length += n;
      else out.push({ offset: pos, length: n, data });
    }
    return out;
  }
}

interface Config {
  name: string;
  size: number;
  options: Partial<Qcow2CreateOptions>;
  /** Source data: [offset, length, seed]. */
  runs: Array<[number, number, number]>;
  /** A run placed (placeRuns) of which only the listed [offset, length] pieces are written: the rest is given back. */
  placed?: { at: number; length: number; pieces: Array<[number, number]> };
}

const CONFIGS: Config[] = [
  {
    name: '64k clusters (defaults), placed run with clusters given back',
    size: 16 * MiB,
    options: {},
    runs: [
      [0, 300 * KiB, 1],
      [3 * MiB + 1000, 200 * KiB, 2],
      [16 * MiB - 512, 512, 3],
    ],
    placed: {
      at: 8 * MiB,
      length: MiB,
      pieces: [
        [8 * MiB + 64 * KiB, 64 * KiB],
        [8 * MiB + 600 * KiB, 100],
      ],
    },
  },
  {
    name: '4k clusters, refcount_bits 64: refcount blocks appended',
    size: 8 * MiB,
    options: { clusterSize: 4096, refcountBits: 64 },
    runs: [
      [0, MiB, 4],
      [2 * MiB, 1536 * KiB, 5],
      [7 * MiB, 4096, 6],
    ],
  },
  {
    name: '512-byte clusters, refcount_bits 64: the refcount table moves',
    size: 3 * MiB,
    options: { clusterSize: 512, refcountBits: 64 },
    runs: [
      [0, 1200 * KiB, 7],
      [1536 * KiB, 1024 * KiB, 8],
    ],
  },
  { name: 'v2, 8k clusters', size: 4 * MiB, options: { compat: 'v2', clusterSize: '8k' }, runs: [[100 * KiB, 700 * KiB, 9]] },
  {
    name: 'extended L2, 32k clusters, lazy refcounts',
    size: 64 * MiB,
    options: { extendedL2: true, clusterSize: '32k', lazyRefcounts: true },
    runs: [
      [0, 64 * KiB, 10],
      [40 * MiB, 100 * KiB, 11],
    ],
  },
];

async function convertOnFaultStorage(c: Config): Promise<{ fault: RangedFaultStorage; created: number; model: Uint8Array; spanBytes: number }> {
  const model = new Uint8Array(c.size);
  const source = new MemoryStorage();
  await source.truncate(c.size);
  for (const [at, n, seed] of c.runs) {
    const d = seededBytes(n, seed);
    model.set(d, at);
    await source.write(at, d);
  }
  const fault = new RangedFaultStorage(new Uint8Array(0), 'bulk.qcow2');
  const w = await createQcow2Fresh(fault as never, { size: c.size, ...c.options });
  if (!w) throw new Error('no bulk writer');
  const created = fault.ops.length;
  await sparseCopy(await openRaw(source), w, { chunkSize: 128 * KiB, dstIsZero: true });
  if (c.placed) {
    const placed = w.placeRuns!(c.placed.at, c.placed.length);
    expect(placed.length).toBe(3);
    for (const [at, n] of c.placed.pieces) {
      const d = seededBytes(n, at);
      model.set(d, at);
      await fault.write(placed[1]! + at - c.placed.at, d);
    }
    await w.settleRuns!(Float64Array.of(0, placed[1]!, placed[2]!));
  }
  const disk = await w.finish();
  await disk.close();
  const head = fault.current();
  const cs = 2 ** new DataView(head.buffer, head.byteOffset).getUint32(20); // cluster_bits
  return { fault, created, model, spanBytes: (cs * cs) / (c.options.extendedL2 ? 16 : 8) };
}

describe('bulk writer crash consistency (FaultStorage)', () => {
  for (const c of CONFIGS) {
    it(`${c.name}: every crash point leaves an empty image or the conversion, never a corrupt one`, async () => {
      const { fault, created, model, spanBytes } = await convertOnFaultStorage(c);
      const random = seededRandom(7);
      const seen = new Set<string>();
      const forQemu: Uint8Array[] = [];
      let converted = 0;
      let empty = 0;
      // After every write and truncate, and once everything was issued (the last op is the L1 table's flush).
      for (const point of new Set([...fault.crashPoints(), fault.ops.length])) {
        for (const mode of MODES) {
          const bytes = (await fault.crashImage(point, mode, random)).toBytes();
          const where = `${mode} crash after op ${point} of ${fault.ops.length}`;
          let disk;
          try {
            disk = await openQcow2(MemoryStorage.from(bytes));
          } catch (e) {
            // Only before the empty image is durable may the file be no image.
            expect(ImageError.isInstance(e), where).toBe(true);
            expect(point, where).toBeLessThanOrEqual(created);
            continue;
          }
          expect(disk.size, where).toBe(c.size);
          const content = await disk.read(0, disk.size);
          await disk.close();
          if (isAllZero(content)) empty++;
          else if (bytesEqual(content, model)) converted++;
          else {
            // A torn L1 write: each L2 table's span is either untouched or converted.
            expect(mode, `${where}: partial content`).toBe('torn');
            for (let at = 0; at < c.size; at += spanBytes) {
              const got = content.subarray(at, at + spanBytes);
              expect(isAllZero(got) || bytesEqual(got, model.subarray(at, at + spanBytes)), `${where}: span at ${at}`).toBe(true);
            }
          }
          const check = await checkQcow2(MemoryStorage.from(bytes));
          expect({ c: check.corruptions, e: check.checkErrors }, `${where}: ${check.messages.slice(0, 3).join('; ')}`).toEqual({ c: 0, e: 0 });
          const rw = await openQcow2(MemoryStorage.from(bytes), { readOnly: false });
          await rw.close();
          const hash = createHash('sha256').update(bytes).digest('hex');
          if (!seen.has(hash)) {
            seen.add(hash);
            forQemu.push(bytes);
          }
        }
      }
      // The run went through both states, and the last crash point is the finished image: clean.
      expect(empty).toBeGreaterThan(0);
      expect(converted).toBeGreaterThan(0);
      const final = fault.current();
      const finalCheck = await checkQcow2(MemoryStorage.from(final));
      expect({ c: finalCheck.corruptions, l: finalCheck.leaks }).toEqual({ c: 0, l: 0 });
      if (!hasQemuImg) return;
      // qemu-img check: 0 clean, 3 leaks only; 2 (corrupt) or 1 (error) fail. Distinct images, spread over the run.
      const step = Math.max(1, Math.ceil(forQemu.length / QEMU_SAMPLES));
      const sample = forQemu.filter((_, i) => i % step === 0 || i === forQemu.length - 1);
      for (const [i, bytes] of [...sample, final].entries()) {
        const file = join(tmp.path, `${c.name.replace(/\W+/g, '_')}-${i}.qcow2`);
        writeFileSync(file, bytes);
        const r = qemuCheck(file, 'qcow2');
        expect([0, 3], `${file}: ${r.stderr}`).toContain(r.status);
        if (bytes === final) expect(r.status).toBe(0);
      }
    });
  }
});
