import { describe, expect, it } from 'vitest';
import { qemuShortSpellings } from './long-options.js';

describe('qemuShortSpellings', () => {
  it("turns a command's 10.1 long names into 7.2's letters, with a separate or an attached value", () => {
    expect(qemuShortSpellings('create', ['--format', 'qcow2', '--backing=base.qcow2', '-B', 'qcow2', 'x.qcow2'])).toEqual(['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'x.qcow2']);
    expect(qemuShortSpellings('compare', ['--a-format=qcow2', '--b-format', 'raw', 'a', 'b'])).toEqual(['-f', 'qcow2', '-F', 'raw', 'a', 'b']);
  });

  it('leaves option values, what follows "--", and other commands alone', () => {
    expect(qemuShortSpellings('create', ['-b', '--format', 'x.qcow2'])).toEqual(['-b', '--format', 'x.qcow2']);
    expect(qemuShortSpellings('create', ['--backing', '-B', 'x.qcow2'])).toEqual(['-b', '-B', 'x.qcow2']);
    expect(qemuShortSpellings('info', ['--', '--format'])).toEqual(['--', '--format']);
    expect(qemuShortSpellings('info', ['--formt', 'qcow2'])).toEqual(['--formt', 'qcow2']);
    expect(qemuShortSpellings('serve', ['--format', 'qcow2'])).toEqual(['--format', 'qcow2']);
  });
});
