import { describe, expect, it } from 'vitest';
import { endProgressLine, progressPrinter, qemuProgressPrinter } from './progress.js';

describe('progressPrinter', () => {
  it('ends the bar once at 100 %, and an open bar when asked', () => {
    let text = '';
    const io = { stderr: (t: string) => (text += t) };
    const print = progressPrinter(io, false);
    print({ bytesDone: 1, bytesTotal: 4 });
    endProgressLine();
    expect(text).toMatch(/^\r\[[#-]+\] +25\.0% [^\n]*\n$/);
    endProgressLine();
    text = '';
    const again = progressPrinter(io, false);
    again({ bytesDone: 4, bytesTotal: 4 });
    again({ bytesDone: 4, bytesTotal: 4 });
    endProgressLine();
    expect(text.split('\n')).toHaveLength(2);
    expect(text).toMatch(/^\r\[#+\] 100\.0% [^\n]*\n$/);
  });

  it('--json-progress: one JSON line per update, keys spelled as qemu spells JSON keys', () => {
    let text = '';
    progressPrinter({ stderr: (t: string) => (text += t) }, true)({ bytesDone: 1, bytesTotal: 4 });
    expect(text.endsWith('\n')).toBe(true);
    const line = JSON.parse(text) as Record<string, number>;
    expect(Object.keys(line)).toEqual(['bytes-done', 'bytes-total', 'percent', 'rate', 'eta-seconds']);
    expect([line['bytes-done'], line['bytes-total'], line.percent]).toEqual([1, 4, 25]);
  });
});

describe('qemuProgressPrinter', () => {
  it("prints qemu-img's lines on stdout: 0.00 first, one per step, 100.00 and a newline once at the end", () => {
    let out = '';
    const print = qemuProgressPrinter({ stdout: (t) => (out += t) }, 2);
    for (const done of [1, 2, 5, 6, 90, 100, 100]) print({ bytesDone: done, bytesTotal: 100 });
    expect(out).toBe('    (0.00/100%)\r    (2.00/100%)\r    (5.00/100%)\r    (90.00/100%)\r    (100.00/100%)\r\n');
    out = '';
    // Stopped short (an error, Ctrl-C): the open line is ended on stdout before anything else is printed.
    const stopped = qemuProgressPrinter({ stdout: (t) => (out += t) });
    stopped({ bytesDone: 37.5, bytesTotal: 100 });
    endProgressLine();
    endProgressLine();
    expect(out).toBe('    (0.00/100%)\r    (37.50/100%)\r\n');
    out = '';
    qemuProgressPrinter({ stdout: (t) => (out += t) })({ bytesDone: 0, bytesTotal: 0 });
    expect(out).toBe('    (0.00/100%)\r    (100.00/100%)\r\n');
  });
});
