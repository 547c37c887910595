import { afterEach, expect, it } from 'vitest';
import { poolSize } from './node/codecs.js';

const saved = process.env.IMG_COMPRESS_THREADS;
afterEach(() => {
  if (saved === undefined) delete process.env.IMG_COMPRESS_THREADS;
  else process.env.IMG_COMPRESS_THREADS = saved;
});

it('the deflate pool compresses two grains per core (at least 2, at most 4) at once unless IMG_COMPRESS_THREADS says otherwise, as qcow2 reads it', () => {
  delete process.env.IMG_COMPRESS_THREADS;
  expect([1, 2, 8].map(poolSize)).toEqual([2, 4, 4]);
  process.env.IMG_COMPRESS_THREADS = '3';
  expect(poolSize(2)).toBe(3);
  process.env.IMG_COMPRESS_THREADS = '0';
  expect(poolSize(2)).toBe(0);
  for (const bad of ['', ' ', '-1', '1.5', 'two']) {
    process.env.IMG_COMPRESS_THREADS = bad;
    expect(poolSize(2), bad).toBe(4);
  }
});
