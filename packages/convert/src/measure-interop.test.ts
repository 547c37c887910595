// img measure against qemu-img measure on sources the interop campaign (tools/interop) found disagreeing.
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-measure-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

describeQemu('img measure as qemu-img measure', () => {
  it('gives the bitmaps figure only where both the source and the output can hold persistent bitmaps', () => {
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '4M']);
    qemuImg(['create', '-q', '-f', 'qcow2', p('v3.qcow2'), '4M']);
    for (const f of ['v2.qcow2', 'v3.qcow2']) qemuIo(p(f), 'qcow2', ['write -P 1 0 100k']);
    qemuImg(['bitmap', '--add', p('v3.qcow2'), 'b0']);
    for (const [src, opts] of [
      ['v2.qcow2', []],
      ['v2.qcow2', ['-o', 'compat=1.1']],
      ['v3.qcow2', []],
      ['v3.qcow2', ['-o', 'compat=0.10']],
    ] as const) {
      const argv = ['measure', '--output=json', '-O', 'qcow2', ...opts, p(src)];
      const ours = run('img', argv);
      expect(ours.status).toBe(0);
      expect({ src, opts, out: JSON.parse(ours.stdout) as unknown }).toEqual({ src, opts, out: JSON.parse(qemuImg(argv).stdout) as unknown });
    }
  });

  it('counts no space for data in holes of the file below the source, as qemu-img asks the file system', () => {
    // A qcow2 preallocated with metadata (clusters allocated, file sparse), its external data file, a flat VMDK.
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', p('prealloc.qcow2'), '64M']);
    qemuIo(p('prealloc.qcow2'), 'qcow2', ['write -P 7 5M 2M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${p('data.raw')},preallocation=metadata`, p('external.qcow2'), '32M']);
    qemuIo(p('external.qcow2'), 'qcow2', ['write -P 3 1M 1M']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p('flat.vmdk'), '64M']);
    qemuIo(p('flat.vmdk'), 'vmdk', ['write -P 9 0 1M']);
    for (const src of ['prealloc.qcow2', 'external.qcow2', 'flat.vmdk']) {
      for (const out of ['qcow2', 'raw']) {
        const argv = ['measure', '--output=json', '-O', out, p(src)];
        const ours = run('img', argv);
        expect(ours.status).toBe(0);
        expect({ src, out, got: JSON.parse(ours.stdout) as unknown }).toEqual({ src, out, got: JSON.parse(qemuImg(argv).stdout) as unknown });
      }
    }
  });
});
