import { describe, expect, it } from 'vitest';
import { printfFixed, printfString } from './printf.js';

describe('printfFixed (printf %.Nf)', () => {
  it('rounds exact halves to even, as printf does, and other values to nearest', () => {
    expect(printfFixed((2 / 64) * 100, 2)).toBe('3.12');
    expect(printfFixed(0.375, 2)).toBe('0.38');
    expect(printfFixed(100, 2)).toBe('100.00');
    expect(printfFixed(0, 2)).toBe('0.00');
    expect(printfFixed((1 / 3) * 100, 2)).toBe('33.33');
    expect(printfFixed((2 / 3) * 100, 2)).toBe('66.67');
    expect(printfFixed(2.5, 0)).toBe('2');
    expect(printfFixed(3.5, 0)).toBe('4');
    // 1.005 is stored as 1.00499999999999989...: down, as printf says.
    expect(printfFixed(1.005, 2)).toBe('1.00');
  });

  it('agrees with a sample of allocation percentages qemu-img printed', () => {
    // x/y * 100 for fixtures' allocated/total, fragmented/allocated counts.
    expect(printfFixed((19 / 24) * 100, 2)).toBe('79.17');
    expect(printfFixed((13 / 19) * 100, 2)).toBe('68.42');
    expect(printfFixed((29 / 37) * 100, 2)).toBe('78.38');
    expect(printfFixed((1 / 64) * 100, 2)).toBe('1.56');
  });
});

describe('printfString (printf %Ns, %-Ns)', () => {
  it('pads to a width in UTF-8 bytes, and not at all past it', () => {
    expect(printfString('ab', 5, true)).toBe('ab   ');
    expect(printfString('ab', 5)).toBe('   ab');
    expect(printfString('\u540d\u524d', 16, true)).toBe('\u540d\u524d' + ' '.repeat(10));
    expect(printfString('caf\u00e9', 6, true)).toBe('caf\u00e9 ');
    expect(printfString('\u{1f600}', 5)).toBe(' \u{1f600}');
    expect(printfString('seventeen-bytes17', 16, true)).toBe('seventeen-bytes17');
  });
});
