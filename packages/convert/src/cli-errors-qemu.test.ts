// What a script calling qemu-img sees when a call goes wrong: for each command spelled like qemu-img, a typo'd
// option, a missing file, a directory given as an image and an image named twice must end with qemu-img 7.2's
// exit status, and with one line on stderr naming the command (then at most a hint), nothing on stdout.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-cli-errors-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

const IMG = 'IMG';
const MISSING = 'MISSING';
const DIR = 'DIR';

/** Per command: the arguments around the image (IMG stands for it; a fresh copy per tool where it is written). */
const calls: Record<string, string[]> = {
  info: [IMG],
  map: [IMG],
  check: [IMG],
  measure: [IMG],
  snapshot: ['-l', IMG],
  amend: ['-o', 'compat=1.1', IMG],
  commit: [IMG],
  rebase: ['-u', '-b', '', IMG],
  resize: [IMG, '2M'],
  bitmap: ['--add', IMG, 'b0'],
  convert: [IMG, p('out.raw')],
  compare: [IMG, p('other.qcow2')],
};

function cases(): Array<[string, string[]]> {
  const out: Array<[string, string[]]> = [];
  for (const [cmd, args] of Object.entries(calls)) {
    // qemu-img 7.2's measure ends a typo'd option with status 0: a bug not copied.
    if (cmd !== 'measure') out.push([`${cmd} --bogus`, [cmd, '--bogus', ...args]]);
    out.push([`${cmd} <missing file>`, [cmd, ...args.map((a) => (a === IMG ? MISSING : a))]]);
    out.push([`${cmd} <directory>`, [cmd, ...args.map((a) => (a === IMG ? DIR : a))]]);
    if (!['convert', 'compare', 'bitmap', 'resize'].includes(cmd)) out.push([`${cmd} <image twice>`, [cmd, ...args, IMG]]);
  }
  out.push(['resize <image> 2M 3M', ['resize', IMG, '2M', '3M']], ['compare a b c', ['compare', IMG, p('other.qcow2'), p('other.qcow2')]]);
  return out;
}

describeQemu('img errors as qemu-img 7.2 ends them', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', p('base.qcow2'), '1M']);
    copyFileSync(p('base.qcow2'), p('other.qcow2'));
    mkdirSync(p('dir'));
  });

  it.each(cases())('%s', (_name, args) => {
    const results = (['qemu', 'img'] as const).map((tool) => {
      const image = p(`${tool}.qcow2`);
      copyFileSync(p('base.qcow2'), image);
      const concrete = args.map((a) => (a === IMG ? image : a === MISSING ? p('missing.qcow2') : a === DIR ? p('dir') : a));
      return tool === 'qemu' ? qemuImg(concrete, { allowFail: true }) : run('img', concrete);
    });
    const [theirs, mine] = results as [{ status: number; stderr: string }, { status: number; stderr: string; stdout: string }];
    expect(theirs.status, theirs.stderr).not.toBe(0);
    expect(mine.status, mine.stderr).toBe(theirs.status);
    expect(mine.stdout).toBe('');
    const lines = mine.stderr.trimEnd().split('\n');
    expect(lines.length).toBeLessThanOrEqual(2);
    expect(lines[0]).toMatch(new RegExp(`^img ${args[0]}: `));
  });

  it('measure without -O measures for raw, as qemu-img does', () => {
    const mine = run('img', ['measure', '--output=json', p('base.qcow2')]);
    expect(mine.status, mine.stderr).toBe(0);
    expect(JSON.parse(mine.stdout)).toEqual(JSON.parse(qemuImg(['measure', '--output=json', p('base.qcow2')]).stdout));
  });

  it('-V is --version, as in qemu-img', () => {
    const short = run('img', ['-V']);
    expect(short.status).toBe(0);
    expect(short.stdout).toBe(run('img', ['--version']).stdout);
    expect(qemuImg(['-V']).status).toBe(0);
  });

  it("a one-letter option without its value is named as typed, in qemu-img's words (not Node's '--c <value>')", () => {
    for (const [command, args] of [
      ['snapshot', ['-c']],
      ['snapshot', ['-l', '-a']],
      ['commit', ['-b']],
    ] as const) {
      const r = run('img', [command, ...args]);
      expect(r.status).toBe(1);
      expect(r.stderr.split('\n')[0]).toBe(`img ${command}: missing argument for option '${args[args.length - 1]}'`);
      expect(qemuImg([command, ...args], { allowFail: true }).stderr).toContain(`missing argument for option '${args[args.length - 1]}'`);
    }
  });
});
