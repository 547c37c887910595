import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bytesEqual, readAscii, readI32Be, readU16Be, readU16Le, readU32Be, readU32Le, readU64Be, readU64BeParts, writeAscii, writeU16Be, writeU16Le, writeU32Be, writeU32Le, writeU64Be } from './bytes.js';
import { ImageError } from './errors.js';

describe('big-endian codecs', () => {
  it('reads known values', () => {
    const b = new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]);
    expect(readU32Be(b, 0)).toBe(0x514649fb);
    expect(readU32Be(b, 8)).toBe(0xffffffff);
    expect(readI32Be(b, 8)).toBe(-1);
    expect(readU16Be(b, 0)).toBe(0x5146);
    expect(readU16Le(b, 0)).toBe(0x4651);
    expect(readU32Le(b, 0)).toBe(0xfb494651);
    expect(readU64Be(b, 0 + 4)).toBe(3 * 2 ** 32 + 0xffffffff);
  });

  it('round-trips 16, 32 and 64-bit values', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffff }), (u64, u32, u16) => {
        const b = new Uint8Array(32);
        writeU64Be(b, 1, u64);
        writeU32Be(b, 9, u32);
        writeU32Le(b, 13, u32);
        writeU16Be(b, 17, u16);
        writeU16Le(b, 19, u16);
        expect(readU64Be(b, 1)).toBe(u64);
        expect(readU32Be(b, 9)).toBe(u32);
        expect(readU32Le(b, 13)).toBe(u32);
        expect(readU16Be(b, 17)).toBe(u16);
        expect(readU16Le(b, 19)).toBe(u16);
        const { hi, lo } = readU64BeParts(b, 1);
        expect(hi * 2 ** 32 + lo).toBe(u64);
      }),
    );
  });

  it('rejects 64-bit values above 2^53 with an ImageError naming the field', () => {
    const b = new Uint8Array(8).fill(0xff);
    let caught: unknown;
    try {
      readU64Be(b, 0, { field: 'l1_table_offset', format: 'qcow2', file: 'x.qcow2' });
    } catch (e) {
      caught = e;
    }
    expect(ImageError.isInstance(caught)).toBe(true);
    expect((caught as ImageError).code).toBe('ERR_IMG_CORRUPT');
    expect((caught as ImageError).message).toMatch(/qcow2: x.qcow2: l1_table_offset at 0x0 is too large/);
    // 2^53 - 1 is fine, 2^53 is not
    const ok = new Uint8Array(8);
    writeU64Be(ok, 0, Number.MAX_SAFE_INTEGER);
    expect(readU64Be(ok, 0)).toBe(Number.MAX_SAFE_INTEGER);
    ok[1] = 0x20;
    expect(() => readU64Be(ok, 0)).toThrow(/too large/);
  });

  it('bounds-checks every access with a RangeError', () => {
    const b = new Uint8Array(4);
    expect(() => readU32Be(b, 1)).toThrow(RangeError);
    expect(() => readU64Be(b, 0)).toThrow(RangeError);
    expect(() => writeU32Be(b, -1, 0)).toThrow(RangeError);
    expect(() => writeU64Be(new Uint8Array(8), 0, -1)).toThrow(RangeError);
    expect(() => writeU64Be(new Uint8Array(8), 0, 2 ** 53)).toThrow(RangeError);
  });

  it('reads and writes NUL-padded ASCII fields', () => {
    const b = new Uint8Array(8);
    writeAscii(b, 0, 8, 'conect');
    expect(readAscii(b, 0, 8)).toBe('conect');
    expect([...b.subarray(6)]).toEqual([0, 0]);
    expect(() => writeAscii(b, 0, 4, 'too long')).toThrow(RangeError);
  });
});

describe('ImageError', () => {
  it('is recognised across copies through a global symbol', () => {
    const e = new ImageError('ERR_IMG_CORRUPT', 'x', { data: { offset: 5 } });
    expect(ImageError.isInstance(e)).toBe(true);
    expect(ImageError.isInstance(new Error('x'))).toBe(false);
    const foreign = Object.assign(new Error('y'), { [Symbol.for('@img/block.ImageError')]: true });
    expect(ImageError.isInstance(foreign)).toBe(true);
    expect(e.data.offset).toBe(5);
    expect(e.name).toBe('ImageError');
  });
});

describe('bytesEqual', () => {
  it('finds a single differing byte anywhere, whatever the offsets and lengths of the views', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 7 }), fc.nat(), (n, offA, offB, at) => {
        const a = new Uint8Array(n + 8).subarray(offA, offA + n);
        const b = new Uint8Array(n + 8).subarray(offB, offB + n);
        for (let i = 0; i < n; i++) a[i] = b[i] = (i * 31 + 7) & 0xff;
        expect(bytesEqual(a, b)).toBe(true);
        if (n === 0) return;
        b[at % n] = b[at % n]! ^ 0x40;
        expect(bytesEqual(a, b)).toBe(false);
        expect(bytesEqual(a, b.subarray(0, n - 1))).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });
});
