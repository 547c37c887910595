// A qcow2 image whose external data file is gone, as qemu-img 7.2 meets it: info describes it (qemu-img info opens
// images without I/O), every command that needs the data, and check, fail with status 1 naming the file.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

describeQemu('a qcow2 image whose external data file is missing', () => {
  const tmp = tempDir('img-missing-data-file-');
  const p = (n: string) => join(tmp.path, n);
  beforeAll(() => {
    // One named relative to the image, one by its absolute path.
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'data_file=rel.raw', 'rel.qcow2', '4M'], { cwd: tmp.path });
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${p('abs.raw')}`, p('abs.qcow2'), '4M']);
    // qemu 7.2 looks for a relative data file name in the current directory (img: beside the image): from there.
    for (const name of ['rel.qcow2', 'abs.qcow2']) execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 1M 64k', name], { cwd: tmp.path });
    rmSync(p('rel.raw'));
    rmSync(p('abs.raw'));
  });
  afterAll(() => tmp.cleanup());

  it('info: the same lines and JSON as qemu-img info, status 0', () => {
    for (const name of ['rel.qcow2', 'abs.qcow2']) {
      for (const args of [['info'], ['info', '--output=json'], ['info', '--backing-chain']]) {
        const ours = run('img', [...args, name], { cwd: tmp.path });
        const theirs = qemuImg([...args, name], { cwd: tmp.path });
        expect([ours.status, ours.stdout], `${args.join(' ')} ${name}`).toEqual([0, theirs.stdout]);
      }
    }
  });

  it('check, map, compare, convert and snapshot -l: status 1 as qemu-img, naming the data file', () => {
    for (const name of ['rel.qcow2', 'abs.qcow2']) {
      for (const full of [
        ['check', name],
        ['map', name],
        ['compare', name, name],
        ['convert', '-O', 'raw', name, 'out.raw'],
        ['snapshot', '-l', name],
      ]) {
        const what = full.join(' ');
        const theirs = qemuImg(full, { allowFail: true, cwd: tmp.path });
        const ours = run('img', full, { cwd: tmp.path });
        expect(theirs.status, what).not.toBe(0);
        expect(ours.status, what).toBe(full[0] === 'compare' ? 2 : 1);
        expect(ours.status, what).toBe(theirs.status);
        expect(ours.stderr, what).toMatch(/ERR_IMG_NOT_FOUND: .*external data file .*(rel|abs)\.raw.* does not exist/);
      }
    }
  });
});
