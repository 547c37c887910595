// Safe rebase over images of tens of millions of clusters: it listed every hole of the top before copying (~350
// bytes a hole: 3.4 GB for a 1.2 TiB qcow2 whose every other cluster is allocated) and, per hole, a Set of every
// unit the backing files hold data in (past V8's 2^24 entries under a terabyte-sized hole: "Set maximum size
// exceeded"). Fakes stand in for such images: what matters is what the walk asks and holds, not the bytes.
import { describe, expect, it } from 'vitest';
import type { Disk, Extent } from '@img/block';
import { rebaseDisk } from './maintain.js';

/** A disk whose extents are `map(offset, length)` and whose every byte reads `fill`; it records the ranges its extents are asked for. */
function fakeDisk(size: number, map: (offset: number, length: number) => Extent[], fill: number, backing?: Disk): Disk & { asked: Array<[number, number]> } {
  const disk = {
    format: 'qcow2',
    size,
    readOnly: false,
    backing,
    storage: { name: 'fake' },
    asked: [] as Array<[number, number]>,
    async *extents(options?: { offset?: number; length?: number }): AsyncGenerator<Extent> {
      const offset = options?.offset ?? 0;
      const length = options?.length ?? size - offset;
      disk.asked.push([offset, length]);
      yield* map(offset, length);
    },
    async read(_offset: number, length: number): Promise<Uint8Array> {
      return new Uint8Array(length).fill(fill);
    },
    async readInto(_offset: number, target: Uint8Array): Promise<void> {
      target.fill(fill);
    },
    async write(): Promise<void> {},
    async flush(): Promise<void> {},
    async setBacking(): Promise<void> {},
  };
  return disk as unknown as Disk & { asked: Array<[number, number]> };
}

describe('safe rebase on large images', () => {
  it('walks the backing data of a hole unit by unit, without a Set of every unit', async () => {
    // A 9 GiB top with nothing allocated over a backing file full of data: 18.9 M units of 512 bytes in one hole.
    const size = 9 * 2 ** 30;
    const old = fakeDisk(size, (offset, length) => [{ offset, length, kind: 'data', depth: 0 }], 1);
    const top = fakeDisk(size, (offset, length) => [{ offset, length, kind: 'hole', depth: 0 }], 1, old);
    const stop = new AbortController();
    let writes = 0;
    top.write = async () => {
      if (++writes === 1000) stop.abort();
    };
    // Every unit differs from the new backing (none: zeros) and is copied; the test stops it after 1000.
    await expect(rebaseDisk(top, undefined, undefined, undefined, { unit: 512, signal: stop.signal })).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED' });
    expect(writes).toBe(1000);
  });

  it('lists the holes of the top a window at a time', async () => {
    // 3 GiB, alternating 64 KiB holes and data.
    const size = 3 * 2 ** 30;
    const runs = (offset: number, length: number): Extent[] => {
      const out: Extent[] = [];
      for (let at = offset; at < offset + length; at += 65536) out.push({ offset: at, length: 65536, kind: (at / 65536) % 2 ? 'data' : 'hole', depth: 0 });
      return out;
    };
    const top = fakeDisk(size, runs, 0);
    const progress: number[] = [];
    expect(await rebaseDisk(top, undefined, undefined, undefined, { onProgress: (p) => progress.push(p.bytesDone) })).toEqual({ bytesCopied: 0 });
    // One walk for the total, then windows of 1 GiB.
    expect(top.asked).toEqual([
      [0, size],
      [0, 2 ** 30],
      [2 ** 30, 2 ** 30],
      [2 * 2 ** 30, 2 ** 30],
    ]);
    expect(progress.at(-1)).toBe(size / 2);
  });
});
