// img resize against qemu-img resize 7.2, each run on its own copy of one qcow2 (with an internal snapshot and
// data at both ends): the same exit status, then the same guest data (qemu-img compare), a clean qemu-img check,
// and the same allocation (qemu-img map) where qemu-img's is reproducible.
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuCompare, qemuImg, qemuIo, qemuMap, tempDir, type QemuMapEntry } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-resize-qemu-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

interface Row {
  /** resize's arguments; FILE is the copy each tool changes. */
  args: string[];
  /** Whether both tools succeed. */
  ok: boolean;
  /** Compare qemu-img map (allocation, zero and data flags) besides the data. */
  map?: boolean;
  /** The image to copy (default: SNAP, a version 3 qcow2 with a snapshot). */
  from?: string;
}

const rows: Row[] = [
  { args: ['FILE', '128M'], ok: true, map: true },
  { args: ['FILE', '+64M'], ok: true, map: true },
  { args: ['FILE', '64M'], ok: true, map: true },
  { args: ['FILE', '32M'], ok: false },
  { args: ['--shrink', 'FILE', '32M'], ok: true, map: true },
  { args: ['--shrink', 'FILE', '-32M'], ok: true, map: true },
  { args: ['--shrink', 'FILE', '--', '-32M'], ok: true, map: true },
  { args: ['FILE', '--', '-32M'], ok: false },
  { args: ['--shrink', 'FILE', '0'], ok: false },
  { args: ['--shrink', 'FILE', '--', '-64M'], ok: false },
  { args: ['--shrink', 'FILE', '100000'], ok: false },
  { args: ['--preallocation=off', 'FILE', '+2M'], ok: true, map: true },
  { args: ['--preallocation=full', 'FILE', '+2M'], ok: true, map: true },
  { args: ['--preallocation=falloc', 'FILE', '+3M'], ok: true, map: true },
  // qemu leaves metadata-preallocated clusters over holes of the file (map: zero); img writes their zeros (see README).
  { args: ['--preallocation=metadata', 'FILE', '+2M'], ok: true },
  { args: ['--preallocation=bogus', 'FILE', '+2M'], ok: false },
  { args: ['--preallocation=metadata', '--shrink', 'FILE', '32M'], ok: false },
  { args: ['--preallocation=full', 'FILE', '32M'], ok: false },
  // Version 2 with a snapshot: qemu refuses any resize; without snapshots it resizes.
  { args: ['FILE', '128M'], ok: false, from: 'v2-snap.qcow2' },
  { args: ['FILE', '64M'], ok: false, from: 'v2-snap.qcow2' },
  { args: ['FILE', '128M'], ok: true, map: true, from: 'v2.qcow2' },
];

/** A map without host offsets (where each tool put its clusters may differ). */
function layout(file: string): Array<Omit<QemuMapEntry, 'offset'>> {
  return qemuMap(file, 'qcow2').map(({ offset: _offset, ...rest }) => rest);
}

describeQemu('img resize, against qemu-img resize 7.2', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', p('snap.qcow2'), '64M']);
    qemuIo(p('snap.qcow2'), 'qcow2', ['write -P 1 0 1M', 'write -P 2 60M 1M']);
    qemuImg(['snapshot', '-c', 's', p('snap.qcow2')]);
    qemuIo(p('snap.qcow2'), 'qcow2', ['write -P 3 61M 100k']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '64M']);
    qemuIo(p('v2.qcow2'), 'qcow2', ['write -P 4 63M 1M']);
    copyFileSync(p('v2.qcow2'), p('v2-snap.qcow2'));
    qemuImg(['snapshot', '-c', 's', p('v2-snap.qcow2')]);
  });

  it.each(rows.map((r) => [`${r.from ?? 'snap.qcow2'}: resize ${r.args.join(' ')}`, r] as const))('%s', (_name, row) => {
    const files = { qemu: p('q.qcow2'), img: p('i.qcow2') };
    for (const f of Object.values(files)) copyFileSync(p(row.from ?? 'snap.qcow2'), f);
    const args = (f: string) => row.args.map((a) => (a === 'FILE' ? f : a));
    const theirs = qemuImg(['resize', ...args(files.qemu)], { allowFail: true });
    const mine = run('img', ['resize', ...args(files.img)]);
    expect(theirs.status === 0, theirs.stderr).toBe(row.ok);
    expect(mine.status, mine.stderr).toBe(theirs.status === 0 ? 0 : 1);
    if (!row.ok) {
      // A refused resize changes nothing.
      expect(qemuCompare(files.img, p(row.from ?? 'snap.qcow2'))).toBe(true);
      expect(mine.stderr.split('\n')[0]).toMatch(/^img resize: /);
      return;
    }
    expect(mine.stdout).toBe(theirs.stdout);
    expect(qemuCompare(files.qemu, files.img)).toBe(true);
    expect(qemuImg(['check', files.img], { allowFail: true }).status).toBe(0);
    if (row.map) expect(layout(files.img)).toEqual(layout(files.qemu));
    else
      expect(
        layout(files.img)
          .filter((e) => e.start >= 64 << 20)
          .every((e) => e.present && e.data),
      ).toBe(true);
    // The snapshot keeps its own size and data: applying it undoes the resize alike in both.
    if ((row.from ?? 'snap.qcow2') === 'snap.qcow2') {
      qemuImg(['snapshot', '-a', 's', files.qemu]);
      qemuImg(['snapshot', '-a', 's', files.img]);
      expect(qemuCompare(files.qemu, files.img)).toBe(true);
    }
  });
});
