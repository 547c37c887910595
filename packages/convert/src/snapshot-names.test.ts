// img snapshot with names that repeat or look like ids, against qemu-img 7.2 as the oracle: the same
// sequence run by each tool on copies of one image must leave the same snapshot tables (id and name
// of each entry, in order) and the same guest data (qemu-img compare), and fail where qemu-img fails.
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuCompare, qemuImg, qemuInfo, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-snapnames-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

type Tool = 'img' | 'qemu';

function snapshot(tool: Tool, args: string[]): number {
  return tool === 'img' ? run('img', ['snapshot', ...args]).status : qemuImg(['snapshot', ...args], { allowFail: true }).status;
}

function table(file: string): string[] {
  const snaps = (qemuInfo(file, 'qcow2').snapshots ?? []) as Array<{ id: string; name: string }>;
  return snaps.map((s) => `${s.id}:${s.name}`);
}

/** The first byte of the guest: each step below wrote its own pattern, so it says which snapshot was applied. */
function firstByte(file: string): string {
  return /^0+:\s+([0-9a-f]{2})/m.exec(qemuIo(file, 'qcow2', ['read -v 0 1']))![1]!;
}

// Patterns 0x0b.. before each snapshot; names: two "s1", then "1" and "2" (names that are also ids), then "x".
const NAMES = ['s1', 's1', '1', '2', 'x'];

/** A fresh qcow2 where `tool` took the five snapshots of NAMES (guest writes through qemu-io). */
function build(tool: Tool, file: string): void {
  qemuImg(['create', '-q', '-f', 'qcow2', file, '4M']);
  for (const [i, name] of NAMES.entries()) {
    qemuIo(file, 'qcow2', [`write -P ${11 + i} 0 64k`]);
    expect(snapshot(tool, ['-c', name, file]), `${tool} snapshot -c ${name}`).toBe(0);
  }
  qemuIo(file, 'qcow2', ['write -P 99 0 64k']);
}

describeQemu('img snapshot: repeated names and names that look like ids, as qemu-img 7.2', () => {
  beforeAll(() => {
    build('qemu', p('q.qcow2'));
    build('img', p('i.qcow2'));
  });

  it('-c takes a name that exists already (a new entry, the next id), as qemu-img does', () => {
    const expected = ['1:s1', '2:s1', '3:1', '4:2', '5:x'];
    expect(table(p('q.qcow2'))).toEqual(expected);
    expect(table(p('i.qcow2'))).toEqual(expected);
    expect(qemuImg(['check', p('i.qcow2')]).status).toBe(0);
  });

  it('-l lists the repeated names as qemu-img snapshot -l does, byte for byte', () => {
    for (const file of [p('q.qcow2'), p('i.qcow2')]) {
      const mine = run('img', ['snapshot', '-l', file]);
      expect(mine.status).toBe(0);
      expect(mine.stdout).toBe(qemuImg(['snapshot', '-l', file]).stdout);
    }
  });

  it('-a tries ids first, then the first snapshot of that name', () => {
    for (const name of ['s1', '1', '2', '3', 'x', '6', 'nope', '01']) {
      const results = (['qemu', 'img'] as const).map((tool) => {
        const file = p(`a-${tool}.qcow2`);
        copyFileSync(p(tool === 'qemu' ? 'q.qcow2' : 'i.qcow2'), file);
        return { file, status: snapshot(tool, ['-a', name, file]) === 0 };
      });
      expect(results[1]!.status, `-a ${name}`).toBe(results[0]!.status);
      expect(qemuCompare(results[0]!.file, results[1]!.file), `-a ${name}`).toBe(true);
      expect(firstByte(results[1]!.file), `-a ${name}`).toBe(firstByte(results[0]!.file));
    }
    // The rule itself, not only agreement: "1" is id 1 (pattern 0x0b), not the snapshot named "1" (id 3).
    copyFileSync(p('q.qcow2'), p('rule.qcow2'));
    expect(snapshot('img', ['-a', '1', p('rule.qcow2')])).toBe(0);
    expect(firstByte(p('rule.qcow2'))).toBe('0b');
  });

  it('-d takes names only: the first snapshot of that name; an id that is no name is not found', () => {
    for (const name of ['s1', '1', '2', 'x', '3', '5', '01', 'nope']) {
      const results = (['qemu', 'img'] as const).map((tool) => {
        const file = p(`d-${tool}.qcow2`);
        copyFileSync(p('q.qcow2'), file);
        const status = snapshot(tool, ['-d', name, file]) === 0;
        return { file, status, table: table(file) };
      });
      expect(results[1]!.status, `-d ${name}`).toBe(results[0]!.status);
      expect(results[1]!.table, `-d ${name}`).toEqual(results[0]!.table);
      expect(qemuImg(['check', results[1]!.file]).status).toBe(0);
    }
    copyFileSync(p('q.qcow2'), p('rule.qcow2'));
    expect(snapshot('img', ['-d', '1', p('rule.qcow2')])).toBe(0);
    expect(table(p('rule.qcow2'))).toEqual(['1:s1', '2:s1', '4:2', '5:x']);
    const missing = run('img', ['snapshot', '-d', '3', p('rule.qcow2')]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/no snapshot named "3"/);
  });

  it('convert -l: an id first, then a name; snapshot.id= and snapshot.name= must all match', () => {
    for (const arg of ['s1', '1', '2', 'x', '6', 'snapshot.name=s1', 'snapshot.name=1', 'snapshot.id=3', 'snapshot.id=2,snapshot.name=s1', 'snapshot.id=1,snapshot.name=1', 'snapshot.id=', 'snapshot.bogus=1']) {
      const theirs = qemuImg(['convert', '-l', arg, '-O', 'raw', p('q.qcow2'), p('l-qemu.raw')], { allowFail: true });
      const mine = run('img', ['convert', '-l', arg, '-O', 'raw', p('q.qcow2'), p('l-img.raw')]);
      expect(mine.status, `-l ${arg}: ${mine.stderr}`).toBe(theirs.status);
      if (theirs.status === 0) expect(qemuCompare(p('l-qemu.raw'), p('l-img.raw'), 'raw', 'raw'), `-l ${arg}`).toBe(true);
    }
  });

  it('ids after deletes, and the empty name, agree with qemu-img', () => {
    const results = (['qemu', 'img'] as const).map((tool) => {
      const file = p(`n-${tool}.qcow2`);
      copyFileSync(p('q.qcow2'), file);
      const steps = [
        ['-d', 'x'],
        ['-d', 's1'],
        ['-c', 'y'],
        ['-c', ''],
        ['-a', ''],
        ['-d', ''],
      ].map((args) => snapshot(tool, [...args, file]));
      return { file, steps, table: table(file) };
    });
    expect(results[1]!.steps).toEqual(results[0]!.steps);
    expect(results[1]!.table).toEqual(results[0]!.table);
    expect(results[0]!.table).toEqual(['2:s1', '3:1', '4:2', '5:y']);
    expect(qemuCompare(results[0]!.file, results[1]!.file)).toBe(true);
  });
});

describeQemu('snapshot names in tables and JSON, as qemu-img 7.2 prints them', () => {
  // Names of 16, 17 and 43 bytes, non-ASCII ones (padded by their UTF-8 bytes), control characters, DEL, a quote, a backslash and an emoji.
  const names = ['sixteen-bytes-16', 'seventeen-bytes17', 'a-very-long-snapshot-name-exceeding-columns', '\u540d\u524d', 'caf\u00e9', 'a\u001fb\u007fc/d\\e"f\tg\bh\u{1f600}i'];
  const file = () => p('n\u00e4mes.qcow2'); // the file name is escaped in JSON too
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', file(), '1M']);
    for (const name of names) qemuImg(['snapshot', '-c', name, file()]);
  });

  it.each(['snapshot -l', 'info', 'info --output=json', 'check --output=json'])('%s', (line) => {
    const args = line.split(' ');
    const q = qemuImg([...args, file()]);
    const r = run('img', [...args, file()]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(q.stdout);
  });

  it('snapshot -l --output=json escapes names as info --output=json does', () => {
    const nameLines = (text: string) =>
      text
        .split('\n')
        .filter((line) => line.trim().startsWith('"name"'))
        .map((line) => line.trim());
    const expected = nameLines(qemuImg(['info', '--output=json', file()]).stdout);
    expect(expected).toContain('"name": "\\u540D\\u524D",');
    expect(nameLines(run('img', ['snapshot', '-l', '--output=json', file()]).stdout)).toEqual(expected);
  });
});

// CLI audit 3 finding 4: `-c a -c b` created "b" alone and exited 0; qemu-img refuses any second action ("Cannot mix").
describeQemu('img snapshot with one action given twice, as qemu-img 7.2', () => {
  it.each([
    ['-c', 'a', '-c', 'b'],
    ['-a', 'a', '-a', 'b'],
    ['-d', 'a', '-d', 'b'],
  ])('%s %s %s %s: status 1, and the table is unchanged', (...args) => {
    for (const tool of ['img', 'qemu'] as const) {
      const file = p(`twice-${tool}-${args[0]!.slice(1)}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', file, '1M']);
      qemuImg(['snapshot', '-c', 'a', file]);
      qemuImg(['snapshot', '-c', 'b', file]);
      expect([tool, snapshot(tool, [...args, file])]).toEqual([tool, 1]);
      expect(table(file)).toEqual(['1:a', '2:b']);
    }
  });
});
