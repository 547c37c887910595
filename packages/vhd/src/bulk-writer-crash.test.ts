/**
 * Crash consistency of the bulk writer: a conversion (sparseCopy from a raw
 * disk, plus a placed run of which some blocks get nothing, so finish()
 * gives them back and moves the last block into the gap) runs on a
 * FaultStorage, and the file is rebuilt as a crash after each of its
 * writes and truncates would leave it, in the three crash models.
 *
 * Before that, the file is createVhd's unflushed empty image (no image,
 * or one reading as zeros). Once createVhdFresh has returned (the empty image flushed), every crash
 * image must open, have the disk's size, check without corruption (leaks
 * allowed) and read as all zeros or as the finished conversion; a torn
 * BAT write may leave some blocks converted and others not, each block
 * reading as zeros or as its converted bytes.
 */
import { ImageError, MemoryStorage, bytesEqual, isAllZero, openRaw, sparseCopy, type StorageRange } from '@img/block';
import { FaultStorage, seededBytes, seededRandom, type CrashMode } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { createVhdFresh } from './bulk-writer.js';
import { checkVhd } from './check.js';
import { openVhd } from './open.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const BLOCK = 64 * KiB;
/** 1024 BAT entries: an 8-sector BAT, so a torn BAT write is possible. */
const SIZE = 64 * MiB;

/** A FaultStorage that reports its non-zero sectors as a sparse file's data ranges (finish() asks). */
class RangedFaultStorage extends FaultStorage {
  async ranges(offset: number, length: number): Promise<StorageRange[]> {
    const bytes = this.current();
    const out: StorageRange[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end; pos += 512) {
      const n = Math.min(512, end - pos);
      const data = pos < bytes.length && !isAllZero(bytes.subarray(pos, Math.min(bytes.length, pos + n)));
      const last = out[out.length - 1];
      if (last && last.data === data) last.length += n;
      else out.push({ offset: pos, length: n, data });
    }
    return out;
  }
}

describe('bulk writer crash consistency (FaultStorage)', () => {
  it('every crash point leaves the empty image or the conversion (block by block for a torn BAT), never a corrupt one', async () => {
    const model = new Uint8Array(SIZE);
    const source = new MemoryStorage();
    await source.truncate(SIZE);
    for (const [at, n, seed] of [
      [0, 3 * BLOCK + 1000, 1],
      [5 * MiB, 200 * KiB, 2],
      [SIZE - 512, 512, 3],
    ] as const) {
      const d = seededBytes(n, seed);
      model.set(d, at);
      await source.write(at, d);
    }
    const fault = new RangedFaultStorage(new Uint8Array(0), 'bulk.vhd');
    const w = await createVhdFresh(fault as never, { size: SIZE, blockSize: BLOCK });
    if (!w) throw new Error('no bulk writer');
    const created = fault.ops.length;
    await sparseCopy(await openRaw(source), w, { chunkSize: 128 * KiB, dstIsZero: true });
    // Four placed blocks; the first and third get nothing and are given back, the last one moves into a gap.
    const placed = w.placeRuns!(32 * MiB, 4 * BLOCK);
    for (const k of [1, 3]) {
      const d = seededBytes(BLOCK, 10 + k);
      model.set(d, 32 * MiB + k * BLOCK);
      await fault.write(placed[3 * k + 1]!, d);
    }
    await w.settleRuns!(Float64Array.from(placed));
    const disk = await w.finish();
    await disk.close();

    const random = seededRandom(5);
    let empty = 0;
    let converted = 0;
    let partial = 0;
    for (const point of new Set([...fault.crashPoints(), fault.ops.length])) {
      for (const mode of MODES) {
        const bytes = (await fault.crashImage(point, mode, random)).toBytes();
        const where = `${mode} crash after op ${point} of ${fault.ops.length}`;
        let image;
        try {
          image = await openVhd(MemoryStorage.from(bytes, { readOnly: true }));
        } catch (e) {
          // Only before the empty image is durable may the file be no image.
          expect(ImageError.isInstance(e), where).toBe(true);
          expect(point, where).toBeLessThanOrEqual(created);
          continue;
        }
        expect(image.size, where).toBe(SIZE);
        const content = await image.read(0, SIZE);
        await image.close();
        if (point < created) {
          // createVhd's own writes, not yet flushed: whatever opens reads as zeros (its footer may still be missing).
          expect(isAllZero(content), where).toBe(true);
          continue;
        }
        if (isAllZero(content)) empty++;
        else if (bytesEqual(content, model)) converted++;
        else {
          expect(mode, `${where}: partial content`).toBe('torn');
          partial++;
          for (let at = 0; at < SIZE; at += BLOCK) {
            const got = content.subarray(at, at + BLOCK);
            expect(isAllZero(got) || bytesEqual(got, model.subarray(at, at + BLOCK)), `${where}: block at ${at}`).toBe(true);
          }
        }
        const check = await checkVhd(MemoryStorage.from(bytes, { readOnly: true }));
        expect({ c: check.corruptions, e: check.checkErrors }, `${where}: ${check.messages.slice(0, 3).join('; ')}`).toEqual({ c: 0, e: 0 });
      }
    }
    expect(empty).toBeGreaterThan(0);
    expect(converted).toBeGreaterThan(0);
    expect(partial).toBeGreaterThan(0);
    const finalCheck = await checkVhd(MemoryStorage.from(fault.current(), { readOnly: true }));
    expect({ c: finalCheck.corruptions, l: finalCheck.leaks }).toEqual({ c: 0, l: 0 });
  });
});
