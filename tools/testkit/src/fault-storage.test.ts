import { describe, expect, it } from 'vitest';
import { FaultStorage, seededRandom } from './fault-storage.js';

async function bytes(s: { read(p: number, n: number): Promise<Uint8Array>; size(): Promise<number> }): Promise<number[]> {
  return [...(await s.read(0, await s.size()))];
}

describe('FaultStorage', () => {
  it('drop: loses exactly what was not flushed', async () => {
    const s = new FaultStorage(new Uint8Array([1, 1, 1, 1]));
    await s.write(0, new Uint8Array([2]));
    await s.flush();
    await s.write(1, new Uint8Array([3]));
    await s.truncate(6);
    expect(s.crashPoints()).toEqual([1, 3, 4]);
    expect(await bytes(await s.crashImage(1, 'drop'))).toEqual([1, 1, 1, 1]);
    expect(await bytes(await s.crashImage(3, 'drop'))).toEqual([2, 1, 1, 1]);
    expect(await bytes(await s.crashImage(4, 'drop'))).toEqual([2, 1, 1, 1]);
    expect(await bytes(await s.durableImage())).toEqual([2, 1, 1, 1]);
    expect([...s.current()]).toEqual([2, 3, 1, 1, 0, 0]);
  });

  it('subset: every unflushed write independently lands or not; flushed ones always do', async () => {
    const s = new FaultStorage(new Uint8Array(8));
    await s.write(0, new Uint8Array([9]));
    await s.flush();
    for (let i = 1; i < 8; i++) await s.write(i, new Uint8Array([i]));
    const seen = new Set<string>();
    const rnd = seededRandom(3);
    for (let k = 0; k < 50; k++) {
      const b = await bytes(await s.crashImage(s.ops.length, 'subset', rnd));
      expect(b[0]).toBe(9);
      b.slice(1).forEach((v, i) => expect([0, i + 1]).toContain(v));
      seen.add(b.join());
    }
    expect(seen.size).toBeGreaterThan(10);
  });

  it('torn: the last unflushed write survives only as a sector-aligned prefix', async () => {
    const s = new FaultStorage(new Uint8Array(4096));
    await s.write(0, new Uint8Array(512).fill(1));
    await s.write(1024, new Uint8Array(2048).fill(2));
    const rnd = seededRandom(7);
    for (let k = 0; k < 20; k++) {
      const img = await s.crashImage(2, 'torn', rnd);
      const b = await img.read(0, 4096);
      expect(b.subarray(0, 512).every((x) => x === 1)).toBe(true);
      const written = b.subarray(1024, 3072);
      const n = written.findIndex((x) => x !== 2);
      const kept = n < 0 ? 2048 : n;
      expect(kept % 512).toBe(0);
      expect(kept).toBeLessThan(2048);
      expect(written.subarray(kept).every((x) => x === 0)).toBe(true);
    }
  });

  it('can fail every operation after a point', async () => {
    const s = new FaultStorage();
    s.failAfter = 1;
    await s.write(0, new Uint8Array([1]));
    await expect(s.write(1, new Uint8Array([1]))).rejects.toThrow(/simulated crash/);
  });
});
