import { describe, expect, it } from 'vitest';
import { UsageError } from './common.js';
import { expandLongPrefixes, parseArgs } from './parse-args.js';

describe('expandLongPrefixes', () => {
  const names = ['backing-chain', 'backing', 'force-share', 'format', 'output'];
  const valued = (n: string) => n === 'output' || n === 'backing' || n === 'format';

  it('writes out an unambiguous prefix, with an attached or a separate value', () => {
    expect(expandLongPrefixes(['--out=json', '--force-s', 'a'], names, valued)).toEqual(['--output=json', '--force-share', 'a']);
    expect(expandLongPrefixes(['--outp', 'json'], names, valued)).toEqual(['--output', 'json']);
  });

  it('prefers an exact name over the longer names it starts', () => {
    expect(expandLongPrefixes(['--backing', 'x'], names, valued)).toEqual(['--backing', 'x']);
    expect(expandLongPrefixes(['--backing-c'], names, valued)).toEqual(['--backing-chain']);
  });

  it('refuses an ambiguous prefix, naming the candidates', () => {
    expect(() => expandLongPrefixes(['--f'], names, valued)).toThrow(UsageError);
    expect(() => expandLongPrefixes(['--fo'], names, valued)).toThrow("option '--fo' is ambiguous; possibilities: '--force-share' '--format'");
  });

  it('leaves values, unknown names and what follows "--" alone', () => {
    // A value that starts with a dash is attached, as getopt takes it: Node's parser would call it ambiguous.
    expect(expandLongPrefixes(['--output', '--f', '--nope', '--', '--out'], names, valued)).toEqual(['--output=--f', '--nope', '--', '--out']);
    expect(expandLongPrefixes(['-o', '--f', '-Uo', '--fo', '-oval', '--out'], names, valued, (l) => l === 'o')).toEqual(['-o--f', '-Uo--fo', '-oval', '--output']);
    expect(expandLongPrefixes(['-o', '', '--backing', '-u', '--format', ''], names, valued, (l) => l === 'o')).toEqual(['-o', '', '--backing=-u', '--format', '']);
  });
});

describe('parseArgs', () => {
  it("applies a command's qemu-img 10.1 spellings after expanding prefixes", () => {
    const r = parseArgs({ command: 'create', args: ['--form', 'qcow2', '--backing-f=raw', 'x', '1M'], options: { f: { type: 'string' }, F: { type: 'string' }, b: { type: 'string' } }, allowPositionals: true });
    expect(r.values).toEqual({ f: 'qcow2', F: 'raw' });
    expect(r.positionals).toEqual(['x', '1M']);
  });

  it('gives an option a value that starts with a dash, as getopt does (qemu-img rebase -b -u x: the backing file is "-u")', () => {
    const r = parseArgs({ command: 'create', args: ['-b', '-u', '--size', '-1', '-F', '-x', 'f'], options: { b: { type: 'string' }, size: { type: 'string' }, F: { type: 'string' }, u: { type: 'boolean' } }, allowPositionals: true });
    expect(r.values).toEqual({ b: '-u', size: '-1', F: '-x' });
    expect(r.positionals).toEqual(['f']);
  });

  it('keeps strict parsing for names that match nothing', () => {
    expect(() => parseArgs({ args: ['--nothing'], options: { quiet: { type: 'boolean' } } })).toThrow(/Unknown option '--nothing'/);
  });
});
