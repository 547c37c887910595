// A fixed-seed fuzzing run, part of the test suite. Longer runs: `pnpm --filter @img/tools-fuzz fuzz -- --seconds 600`.
import { describe, expect, it } from 'vitest';
import { fuzz, loadSeeds } from './fuzz.mjs';

describe('fuzzing every format reader (fixed seeds)', () => {
  const seeds = loadSeeds();
  it('has qcow2, vhd and vmdk seeds', () => {
    const formats = new Set(seeds.map((s) => s.format));
    expect(formats).toEqual(new Set(['qcow2', 'vhd', 'vmdk']));
  });
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: only ImageError escapes and every call returns`, async () => {
      const before = process.memoryUsage().rss;
      const failures = await fuzz({ seed, cases: 150, seeds });
      expect(failures).toEqual([]);
      expect(process.memoryUsage().rss - before).toBeLessThan(1024 * 1024 * 1024);
    });
  }
});
