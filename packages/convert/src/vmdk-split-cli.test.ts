// img create and img-convert with -o subformat=twoGbMaxExtentSparse|twoGbMaxExtentFlat, judged by qemu-img.
import { closeSync, existsSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuCompare, qemuInfo, seededBytes, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-vmdk-split-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);
const GiB = 2 ** 30;

describeQemu('twoGbMaxExtent* from the command line', () => {
  it('img create -f vmdk -o subformat=twoGbMaxExtentSparse: a descriptor and 2 GiB sparse extents beside it', () => {
    const out = p('created.vmdk');
    const r = run('img', ['create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', out, '5G']);
    expect(r.status, r.stderr).toBe(0);
    expect(['created-s001.vmdk', 'created-s002.vmdk', 'created-s003.vmdk'].map((n) => existsSync(p(n)))).toEqual([true, true, true]);
    const info = qemuInfo(out) as { 'virtual-size': number; 'format-specific': { data: { 'create-type': string; extents: unknown[] } } };
    expect(info['virtual-size']).toBe(5 * GiB);
    expect(info['format-specific'].data['create-type']).toBe('twoGbMaxExtentSparse');
    expect(info['format-specific'].data.extents).toHaveLength(3);
    expect(qemuCheck(out, 'vmdk').status).toBe(0);
    // Again over the same name: the extent files exist, and are not overwritten.
    expect(run('img', ['create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', out, '5G']).status).not.toBe(0);
  });

  it('img-convert -o subformat=twoGbMaxExtentFlat and twoGbMaxExtentSparse: qemu-img compare equal', () => {
    const raw = p('src.raw');
    const fd = openSync(raw, 'w');
    ftruncateSync(fd, 2 * GiB + 3 * 2 ** 20);
    writeSync(fd, seededBytes(100_000, 1), 0, 100_000, 2 * GiB - 50_000);
    writeSync(fd, seededBytes(4096, 2), 0, 4096, 2 * GiB + 3 * 2 ** 20 - 4096);
    closeSync(fd);
    for (const sub of ['twoGbMaxExtentFlat', 'twoGbMaxExtentSparse']) {
      const out = p(`${sub}.vmdk`);
      const r = run('img-convert', ['-O', 'vmdk', '-o', `subformat=${sub}`, raw, out]);
      expect(r.status, r.stderr).toBe(0);
      expect(qemuCompare(raw, out, 'raw', 'vmdk')).toBe(true);
      expect(qemuCheck(out, 'vmdk').status).toBe(0);
    }
    expect(existsSync(p('twoGbMaxExtentFlat-f002.vmdk'))).toBe(true);
    expect(existsSync(p('twoGbMaxExtentSparse-s002.vmdk'))).toBe(true);
  });
});
