// img measure against qemu-img measure on sources the interop campaign (tools/interop) found disagreeing.
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
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

  it('counts a raw file of many small runs in whole clusters, as qemu-img, whatever the cluster size', () => {
    // Runs of 4-12 KiB at scattered page offsets (some in the same cluster, some across a cluster's edge), in a file
    // whose size is not a whole number of clusters: a walk widened to clusters must still count each cluster once.
    const path = p('runs.raw');
    const fd = openSync(path, 'w');
    ftruncateSync(fd, 48 * 1024 * 1024 + 12345);
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let i = 0; i < 600; i++) writeSync(fd, new Uint8Array(4096 * (1 + (next() % 3))).fill(1 + (i % 200)), 0, undefined, (next() % 12288) * 4096);
    // The file's last bytes: data in the cluster cut by the end.
    writeSync(fd, new Uint8Array(100).fill(9), 0, 100, 48 * 1024 * 1024 + 12000);
    closeSync(fd);
    for (const cluster of ['512', '4096', '65536', '2M']) {
      const argv = ['measure', '--output=json', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cluster}`, path];
      const ours = run('img', argv);
      expect(ours.status, ours.stderr).toBe(0);
      expect({ cluster, got: JSON.parse(ours.stdout) as unknown }).toEqual({ cluster, got: JSON.parse(qemuImg(argv).stdout) as unknown });
    }
  });
});
