import { describe, expect, it } from 'vitest';
import { QEMU_LONG_OPTIONS } from './long-options.js';
import { expandLongPrefixes } from './parse-args.js';

/** argv through the prefix expansion with `command`'s 10.1 spellings, as parseArgs runs it for a command with no long options of its own. */
function spell(command: string, argv: string[], valued: string): string[] {
  const table = QEMU_LONG_OPTIONS[command] ?? {};
  const names = Object.keys(table)
    .filter((k) => k.startsWith('--'))
    .map((k) => k.slice(2));
  const letterTakesValue = (l: string): boolean => valued.includes(l);
  const takesValue = (name: string): boolean => {
    const alias = table[`--${name}`];
    return alias !== undefined && letterTakesValue(alias.slice(1));
  };
  return expandLongPrefixes(argv, names, takesValue, letterTakesValue, table);
}

describe("a command's qemu-img 10.1 spellings", () => {
  it("become 7.2's letters, with a separate or an attached value", () => {
    expect(spell('create', ['--format', 'qcow2', '--backing=base.qcow2', '-B', 'qcow2', 'x.qcow2'], 'fobF')).toEqual(['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'x.qcow2']);
    expect(spell('compare', ['--a-format=qcow2', '--b-format', 'raw', 'a', 'b'], 'fF')).toEqual(['-f', 'qcow2', '-F', 'raw', 'a', 'b']);
  });

  it('apply to prefixes of the long spellings too', () => {
    expect(spell('check', ['--rep=all', '--form', 'qcow2', 'x'], 'fr')).toEqual(['-r', 'all', '-f', 'qcow2', 'x']);
  });

  it('leave option values, what follows "--", and other commands alone', () => {
    // A value that starts with a dash stays a value (attached, so that Node's parser reads it so).
    expect(spell('create', ['-b', '--format', 'x.qcow2'], 'fobF')).toEqual(['-b--format', 'x.qcow2']);
    expect(spell('create', ['--backing', '-B', 'x.qcow2'], 'fobF')).toEqual(['-b-B', 'x.qcow2']);
    expect(spell('info', ['--', '--format'], 'f')).toEqual(['--', '--format']);
    expect(spell('info', ['--formt', 'qcow2'], 'f')).toEqual(['--formt', 'qcow2']);
    expect(spell('serve', ['--format', 'qcow2'], 'f')).toEqual(['--format', 'qcow2']);
  });
});
