import { afterEach, describe, expect, it, vi } from 'vitest';
import { ModelDisk, modelFromRuns } from '@img/testkit';
import { pacedBatchBytes, pacedChunkSize, ratePace } from './rate-limit.js';
import { sparseCopy } from './sparse-copy.js';
import { bytesEqual } from './bytes.js';

const MiB = 1024 * 1024;

describe('ratePace', () => {
  afterEach(() => vi.useRealTimers());

  it('lets the first request go at once and each later one when the bytes before it are due', async () => {
    vi.useFakeTimers();
    let clock = 0;
    const pace = ratePace(1000, undefined, () => clock)!;
    let done = false;
    await pace(100); // t=0, nothing sent before
    const second = pace(100).then(() => (done = true)); // due at 100 ms
    await vi.advanceTimersByTimeAsync(99);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await second;
    expect(done).toBe(true);
    // Time that passed counts: at 250 ms the 200 bytes sent so far were due at 200 ms, so no wait.
    clock = 250;
    let third = false;
    await pace(300).then(() => (third = true));
    expect(third).toBe(true);
    // The next is due at (500 bytes / 1000 B/s) = 500 ms: 250 ms from now.
    let fourth = false;
    const p = pace(1).then(() => (fourth = true));
    await vi.advanceTimersByTimeAsync(249);
    expect(fourth).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await p;
    expect(fourth).toBe(true);
  });

  it('is no limit for undefined and 0, and refuses a negative or non-finite rate', () => {
    expect(ratePace(undefined)).toBeUndefined();
    expect(ratePace(0)).toBeUndefined();
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) expect(() => ratePace(bad)).toThrow(expect.objectContaining({ code: 'ERR_IMG_INVALID_ARG' }));
  });

  it('ends a wait early when the signal fires', async () => {
    vi.useFakeTimers();
    const controller = new AbortController();
    const pace = ratePace(1, controller.signal, () => 0)!;
    await pace(1000);
    let done = false;
    const waiting = pace(1).then(() => (done = true)); // due in 1000 s
    await vi.advanceTimersByTimeAsync(10);
    expect(done).toBe(false);
    controller.abort();
    await waiting;
    expect(done).toBe(true);
  });
});

describe('pacedChunkSize / pacedBatchBytes', () => {
  it('shrink pieces to a tenth of a second of the rate, within 64 KiB and the alignment', () => {
    expect(pacedChunkSize(4 * MiB, 512, 1000 * MiB)).toBe(4 * MiB);
    expect(pacedChunkSize(4 * MiB, 512, 10 * MiB)).toBe(MiB);
    expect(pacedChunkSize(4 * MiB, 512, 1024)).toBe(64 * 1024);
    expect(pacedChunkSize(4 * MiB, 2 * MiB, 1024)).toBe(2 * MiB);
    // A chunk size that halves into something not a whole number of units stays as it is.
    expect(pacedChunkSize(3 * 65536, 65536, 1024)).toBe(3 * 65536);
    expect(pacedBatchBytes(32 * MiB, MiB, 10 * MiB)).toBe(MiB);
    expect(pacedBatchBytes(32 * MiB, 64 * 1024, 10 * MiB)).toBe(MiB);
    expect(pacedBatchBytes(32 * MiB, MiB, 10_000 * MiB)).toBe(32 * MiB);
  });
});

describe('sparseCopy with rateLimit', () => {
  it('moves data no faster than the limit, costs nothing for holes, and copies exactly', async () => {
    // 1 MiB of data at the start of 256 MiB: at 4 MiB/s the data takes at least (1 MiB - one 256 KiB piece) / 4 MiB/s,
    // and the 255 MiB hole would take 64 s if it were paced.
    const size = 256 * MiB;
    const src = modelFromRuns(size, [
      { length: MiB, kind: 'data' },
      { length: size - MiB, kind: 'hole' },
    ]);
    const dst = new ModelDisk(size);
    const started = performance.now();
    const result = await sparseCopy(src, dst, { rateLimit: 4 * MiB });
    const seconds = (performance.now() - started) / 1000;
    expect(bytesEqual(dst.bytes, src.bytes)).toBe(true);
    expect(result.bytesRead).toBe(MiB);
    expect(seconds).toBeGreaterThanOrEqual(0.18);
    expect(seconds).toBeLessThan(30);
    // Pieces of at most a tenth of a second of the rate (256 KiB here, as the 4 MiB default chunk halves).
    for (const [, len] of dst.writes) expect(len).toBeLessThanOrEqual(512 * 1024);
  });

  it('refuses a negative rate before copying anything', async () => {
    const src = modelFromRuns(MiB, [{ length: MiB, kind: 'data' }]);
    const dst = new ModelDisk(MiB);
    await expect(sparseCopy(src, dst, { rateLimit: -5 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    expect(dst.writes).toEqual([]);
  });
});
