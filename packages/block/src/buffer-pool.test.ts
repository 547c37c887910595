import { describe, expect, it } from 'vitest';
import { giveIoBuffer, takeIoBuffer } from './buffer-pool.js';

describe('takeIoBuffer and giveIoBuffer', () => {
  it('hands a buffer given back to the next taker of its size, once', () => {
    const a = takeIoBuffer(3 * 65536);
    expect(a.length).toBe(3 * 65536);
    giveIoBuffer(a);
    giveIoBuffer(a); // twice: still kept once
    expect(takeIoBuffer(3 * 65536)).toBe(a);
    expect(takeIoBuffer(3 * 65536)).not.toBe(a);
  });

  it('answers a new buffer for another size, and keeps no view into a larger buffer', () => {
    const big = new Uint8Array(8 * 65536);
    giveIoBuffer(big.subarray(0, 65536));
    const other = takeIoBuffer(65536);
    expect(other.buffer).not.toBe(big.buffer);
    expect(other.length).toBe(65536);
  });
});
