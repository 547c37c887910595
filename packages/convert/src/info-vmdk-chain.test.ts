// img info --backing-chain with VMDK members that have a parent (parentFileNameHint), under a qcow2 overlay, against
// qemu-img info 7.2: every member is named as qemu-img names it (the stored name joined onto the directory of the image
// that names it, as written), in image:, backing file, the extents' filename and the JSON's filename and
// full-backing-filename, and a member's disk size counts its own files once (CLI audit 2, findings 2 and 3).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-info-vmdk-chain-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

describeQemu('img info --backing-chain over VMDK parents, against qemu-img info 7.2', () => {
  beforeAll(() => {
    // bk.vmdk <- m.vmdk <- t.qcow2, and bk.vmdk <- s.vmdk (split: a descriptor and an extent file) <- ts.qcow2.
    qemuImg(['create', '-q', '-f', 'vmdk', p('bk.vmdk'), '8M']);
    qemuIo(p('bk.vmdk'), 'vmdk', ['write -P 1 0 1M']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'bk.vmdk', '-F', 'vmdk', 'm.vmdk'], { cwd: tmp.path });
    qemuIo(p('m.vmdk'), 'vmdk', ['write -P 2 2M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'm.vmdk', '-F', 'vmdk', 't.qcow2'], { cwd: tmp.path });
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', '-b', 'bk.vmdk', '-F', 'vmdk', 's.vmdk'], { cwd: tmp.path });
    qemuIo(p('s.vmdk'), 'vmdk', ['write -P 3 4M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 's.vmdk', '-F', 'vmdk', 'ts.qcow2'], { cwd: tmp.path });
    mkdirSync(p('o'));
  });

  const cases: Array<{ cwd: string; file: string }> = [
    { cwd: '.', file: 't.qcow2' },
    { cwd: '.', file: 'm.vmdk' },
    { cwd: '.', file: 'ts.qcow2' },
    { cwd: 'o', file: '../t.qcow2' },
    { cwd: 'o', file: '../m.vmdk' },
    { cwd: 'o', file: '../ts.qcow2' },
    { cwd: '.', file: p('t.qcow2') },
  ];

  for (const { cwd, file } of cases) {
    it(`${file} from ${cwd === '.' ? 'its directory' : 'a subdirectory'}: human and JSON output are qemu-img's`, () => {
      for (const output of ['human', 'json']) {
        const args = ['info', '--backing-chain', `--output=${output}`, file];
        const mine = run('img', args, { cwd: p(cwd) });
        expect(mine.stderr).toBe('');
        expect(mine.status).toBe(0);
        expect(mine.stdout, output).toBe(qemuImg(args, { cwd: p(cwd) }).stdout);
      }
    });
  }

  it('names what the audit saw named by absolute paths as written, and counts m.vmdk once in its disk size', () => {
    const out = run('img', ['info', '--backing-chain', '../t.qcow2'], { cwd: p('o') }).stdout;
    expect(out).toContain('\nimage: ../bk.vmdk\n');
    expect(out).toContain('\nbacking file: bk.vmdk (actual path: ../bk.vmdk)\n');
    expect(out).toContain('filename: ../m.vmdk\n');
    expect(out).not.toContain(tmp.path);
    const chain = JSON.parse(run('img', ['info', '--backing-chain', '--output=json', 't.qcow2'], { cwd: tmp.path }).stdout) as Array<Record<string, unknown>>;
    const alone = JSON.parse(run('img', ['info', '--output=json', 'm.vmdk'], { cwd: tmp.path }).stdout) as Record<string, unknown>;
    expect(chain[1]!['filename']).toBe('m.vmdk');
    expect(chain[1]!['full-backing-filename']).toBe('bk.vmdk');
    expect(chain[1]!['actual-size']).toBe(alone['actual-size']);
  });
});
