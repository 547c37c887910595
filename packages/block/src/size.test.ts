import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith, tempDir } from '@img/testkit';
import { formatSize, parseBool, parseSize } from './size.js';

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

  it('names its limit past 2^53 - 1 bytes (qemu-img goes to 2^63 - 1)', () => {
    expect(parseSize('7P')).toBe(7 * 2 ** 50);
    expect(() => parseSize('8P')).toThrow(/size "8P" is too large: img takes sizes up to 2\^53 - 1 bytes \(8 PiB - 1\)/);
  });
});

describe('parseSize spellings', () => {
  it('floors fractions, reads hexadecimal and a leading +, and refuses what follows a suffix', () => {
    expect(parseSize('0.3k')).toBe(307);
    expect(parseSize('4.0001k')).toBe(4096);
    expect(parseSize('5.k')).toBe(5120);
    expect(parseSize('0x1000')).toBe(4096);
    expect(parseSize('0x1k')).toBe(1024);
    expect(parseSize('+1k')).toBe(1024);
    expect(parseSize(' 1G')).toBe(2 ** 30);
    expect(parseSize('010')).toBe(10);
    expect(parseSize('1.0')).toBe(1);
    for (const bad of ['1KB', '1KiB', '1 G', '1G ', '1.5', '1.5b', '.5k', '0x1.8k', '0x', '1e3', '-1k', '1,5k', '16E']) expect(() => parseSize(bad), bad).toThrow(/size/);
  });
});

// qemu-img as the oracle: every spelling is accepted by both or refused by both, and gives the same raw file
// (qemu-img create rounds a raw image up to whole 512-byte sectors, as img does).
describeWith('qemu-img', 'parseSize against qemu-img create', () => {
  const tmp = tempDir('img-size-');
  afterAll(() => tmp.cleanup());
  const spellings = [
    '1024',
    '1k',
    '1K',
    '1.5k',
    '0.3k',
    '0x100',
    '0x1k',
    '0X10',
    '1KB',
    '1KiB',
    '1 G',
    ' 1G',
    '1G ',
    '1g',
    '1.5G',
    '1e3',
    '+1k',
    '-1k',
    '1b',
    '1B',
    '0.5',
    '1.0',
    '1.5',
    '512.5',
    '.5k',
    '5.k',
    '1.k',
    '010',
    '00.5k',
    '0.0001k',
    '0.3m',
    '1.23456789k',
    '1.0b',
    '1.5b',
    '0x1.8k',
    '0xk',
    '1.5kk',
    '1,5k',
  ];
  it.each(spellings)('%j', (text) => {
    const file = join(tmp.path, 'q.raw');
    rmSync(file, { force: true });
    const q = spawnSync('qemu-img', ['create', '-q', '-f', 'raw', file, text], { encoding: 'utf8' });
    let ours: number | undefined;
    try {
      ours = parseSize(text);
    } catch {
      ours = undefined;
    }
    if (q.status !== 0) expect(ours, q.stderr).toBeUndefined();
    else expect(ours === undefined ? undefined : Math.ceil(ours / 512) * 512).toBe(statSync(file).size);
  });
});

describeWith('qemu-img', 'parseBool takes the spellings qemu-img 7.2 takes for boolean -o options', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());
  it('on/off, yes/no, true/false, y/n in lower case; ON, 1, t and the rest refused in qemu words', () => {
    const file = join(tmp.path, 'b.qcow2');
    for (const v of ['on', 'off', 'yes', 'no', 'true', 'false', 'y', 'n', 'ON', 'Off', 'Yes', 'TRUE', '1', '0', 't', 'f', '']) {
      const q = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `lazy_refcounts=${v}`, file, '1M'], { encoding: 'utf8' });
      rmSync(file, { force: true });
      let ours: boolean | string;
      try {
        ours = parseBool(v, 'lazy_refcounts');
      } catch (e) {
        ours = (e as Error).message;
      }
      if (q.status === 0) expect(typeof ours, v).toBe('boolean');
      else {
        expect(q.stderr, v).toContain("Parameter 'lazy_refcounts' expects 'on' or 'off'");
        expect(ours, v).toContain("Parameter 'lazy_refcounts' expects 'on' or 'off'");
      }
      if (typeof ours === 'boolean') expect(ours, v).toBe(['on', 'yes', 'true', 'y'].includes(v));
    }
    expect(parseBool(true, 'x')).toBe(true);
  });
});
