import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { sparseCopy } from './sparse-copy.js';
import { ModelDisk, modelFromRuns } from '@img/testkit';
import type { Extent } from './disk.js';
import { bytesEqual } from './bytes.js';

const runArb = fc.record({
  length: fc.integer({ min: 1, max: 300_000 }),
  kind: fc.constantFrom<Extent['kind']>('data', 'zero', 'hole'),
});

describe('sparseCopy', () => {
  it('copies any extent layout exactly, for any chunk size and zero-run threshold', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 2_000_000 }),
        fc.array(runArb, { maxLength: 12 }),
        fc.constantFrom(511, 4096, 65536, 1 << 20, 64 << 20),
        fc.constantFrom(0, 512, 4096, 1 << 20),
        fc.integer({ min: 1, max: 8 }),
        fc.array(fc.record({ at: fc.nat(), len: fc.integer({ min: 1, max: 20_000 }) }), { maxLength: 4 }),
        async (size, runs, chunkSize, minZeroRun, concurrency, zeroHoles) => {
          const src = modelFromRuns(size, runs);
          // punch zero stretches into data so zero detection has work to do
          for (const z of zeroHoles) if (size) src.bytes.fill(0, z.at % size, Math.min(size, (z.at % size) + z.len));
          const dst = new ModelDisk(size);
          const result = await sparseCopy(src, dst, { chunkSize, minZeroRun, concurrency, bufferBudget: 8 << 20 });
          expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
          expect(result.bytesDone).toBe(size);
          const dataBytes = src.map.filter((e) => e.kind === 'data').reduce((n, e) => n + e.length, 0);
          expect(result.bytesRead).toBe(dataBytes);
          // reads only what is allocated: cost follows data, not size
          expect(src.readBytes).toBe(dataBytes);
          for (const [, len] of dst.writes) expect(len).toBeLessThanOrEqual(Math.max(chunkSize, 4 << 20));
          if (minZeroRun === 0) expect(result.bytesWritten).toBe(size);
          else expect(dst.zeroWrites).toEqual([]);
        },
      ),
      { seed: 5, numRuns: 120 },
    );
  });

  it('with an alignment, writes only whole aligned units and still copies exactly', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 600_000 }), fc.array(runArb, { maxLength: 12 }), fc.constantFrom(512, 4096, 65536), async (size, runs, alignment) => {
        const src = modelFromRuns(
          size,
          runs.map((r) => ({ ...r, length: Math.ceil(r.length / 7) })),
        );
        const dst = new ModelDisk(size);
        await sparseCopy(src, dst, { alignment, chunkSize: 1 << 20 });
        expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
        for (const [o, len] of dst.writes) {
          expect(o % alignment).toBe(0);
          if (o + len !== size) expect(len % alignment).toBe(0);
        }
      }),
      { seed: 9, numRuns: 150 },
    );
  });

  it('copies with one-byte chunks', async () => {
    const src = modelFromRuns(5000, [
      { length: 3000, kind: 'data' },
      { length: 2000, kind: 'zero' },
    ]);
    const dst = new ModelDisk(5000);
    await sparseCopy(src, dst, { chunkSize: 1, minZeroRun: 1 });
    expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
  });

  it('writes zeroes over a destination that is not known to be zero', async () => {
    const src = modelFromRuns(100_000, [
      { length: 30_000, kind: 'data' },
      { length: 30_000, kind: 'zero' },
      { length: 40_000, kind: 'hole' },
    ]);
    const dst = new ModelDisk(100_000);
    dst.bytes.fill(0xaa);
    await sparseCopy(src, dst, { dstIsZero: false });
    expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
  });

  it('with topOnly leaves the destination alone where the source top layer has holes', async () => {
    const src = new ModelDisk(3000, [
      { offset: 0, length: 1000, kind: 'data', depth: 0 },
      { offset: 1000, length: 1000, kind: 'data', depth: 1 },
      { offset: 2000, length: 1000, kind: 'zero', depth: 0 },
    ]);
    src.bytes.fill(3, 0, 2000);
    const dst = new ModelDisk(3000);
    dst.bytes.fill(9);
    await sparseCopy(src, dst, { topOnly: true, dstIsZero: false });
    expect(dst.bytes.subarray(0, 1000).every((b) => b === 3)).toBe(true);
    expect(dst.bytes.subarray(1000, 2000).every((b) => b === 9)).toBe(true);
    expect(dst.bytes.subarray(2000).every((b) => b === 0)).toBe(true);
  });

  it('costs nothing for holes in a huge virtual disk', async () => {
    const size = 2 ** 40;
    const src = new ModelDisk(0);
    Object.defineProperty(src, 'size', { value: size });
    src.map = [{ offset: 0, length: size, kind: 'hole', depth: 0 }];
    const dst = new ModelDisk(0);
    Object.defineProperty(dst, 'size', { value: size });
    const result = await sparseCopy(src, dst);
    expect(result.bytesRead).toBe(0);
    expect(result.bytesDone).toBe(size);
  });

  it('stops with ERR_IMG_ABORTED when the signal fires, and reports progress until then', async () => {
    const src = modelFromRuns(8 << 20, [{ length: 8 << 20, kind: 'data' }]);
    const dst = new ModelDisk(8 << 20);
    const controller = new AbortController();
    const seen: number[] = [];
    await expect(
      sparseCopy(src, dst, {
        chunkSize: 65536,
        concurrency: 1,
        signal: controller.signal,
        onProgress: (p) => {
          seen.push(p.bytesDone);
          if (p.bytesDone >= 1 << 20) controller.abort();
        },
      }),
    ).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED', message: `copy from ${src.storage.name} to ${dst.storage.name} aborted` });
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)!).toBeLessThan(8 << 20);
  });

  it('propagates a read failure after in-flight requests settle', async () => {
    const src = modelFromRuns(4 << 20, [{ length: 4 << 20, kind: 'data' }]);
    src.failReadAt = 3 << 20;
    await expect(sparseCopy(src, new ModelDisk(4 << 20), { chunkSize: 1 << 20 })).rejects.toThrow(/injected read failure/);
  });

  it('keeps buffers within the budget', async () => {
    const src = modelFromRuns(32 << 20, [{ length: 32 << 20, kind: 'data' }]);
    let inFlight = 0;
    let peak = 0;
    const dst = new ModelDisk(32 << 20);
    await sparseCopy(src, dst, {
      chunkSize: 1 << 20,
      concurrency: 16,
      bufferBudget: 3 << 20,
      minZeroRun: 0,
      writeData: async (o, d) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await new Promise((r) => setTimeout(r, 1));
        dst.bytes.set(d, o);
        inFlight--;
      },
    });
    expect(peak).toBeLessThanOrEqual(3);
    expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
  });

  it('rejects a destination smaller than the source', async () => {
    await expect(sparseCopy(new ModelDisk(1000), new ModelDisk(10))).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
  });
});
