import { describe, expect, it } from 'vitest';
import { endProgressLine, progressPrinter } from './progress.js';

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
});
