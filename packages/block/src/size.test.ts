import { describe, expect, it } from 'vitest';
import { formatSize, parseSize } from './size.js';

describe('formatSize (qemu-img size_to_str)', () => {
  it('prints three significant digits without stripping the zeros of whole numbers', () => {
    expect(formatSize(100 * 2 ** 20)).toBe('100 MiB');
    expect(formatSize(500 * 2 ** 30)).toBe('500 GiB');
    expect(formatSize(10 * 2 ** 30)).toBe('10 GiB');
    expect(formatSize(1.5 * 2 ** 30)).toBe('1.5 GiB');
    expect(formatSize(512)).toBe('512 B');
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(2 ** 20)).toBe('1 MiB');
  });

  it('switches to the next unit at 1000, not 1024', () => {
    expect(formatSize(999)).toBe('999 B');
    expect(formatSize(1000)).toBe('0.977 KiB');
    expect(formatSize(1000 * 1024)).toBe('0.977 MiB');
    expect(formatSize(1000 * 1024 - 1)).toBe('1e+03 KiB');
    expect(formatSize(1023 * 1024)).toBe('0.999 MiB');
    expect(formatSize(1000 * 2 ** 30)).toBe('0.977 TiB');
    expect(formatSize(2 ** 63 - 512)).toBe('8 EiB');
  });

  it('rounds exact halves to even, as printf does', () => {
    expect(formatSize(1152)).toBe('1.12 KiB'); // 1.125 KiB
    expect(formatSize(1168)).toBe('1.14 KiB'); // 1.140625 KiB
    expect(formatSize(1.375 * 2 ** 20 + 0)).toBe('1.38 MiB'); // 1.375: 7 is odd, up
    expect(formatSize(100.5 * 2 ** 20)).toBe('100 MiB');
    expect(formatSize(101.5 * 2 ** 20)).toBe('102 MiB');
  });

  it('takes fractions (rates) by rounding to whole bytes', () => {
    expect(formatSize(1536.4)).toBe('1.5 KiB');
  });
});

describe('parseSize', () => {
  it('reads suffixes as powers of 1024', () => {
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('1.5M')).toBe(1.5 * 2 ** 20);
    expect(() => parseSize('-1')).toThrow(/invalid size/);
  });
});
