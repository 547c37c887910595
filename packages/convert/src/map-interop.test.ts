// img map against qemu-img map on images the interop campaign (tools/interop) found disagreeing.
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-map-');
afterAll(() => tmp.cleanup());

describeQemu('img map as qemu-img map', () => {
  it("asks a qcow2's external data file where its holes are when the image looks preallocated, as qemu-img map does", () => {
    // qemu-img resolves the data file name against its working directory: every command runs in the image's.
    const cwd = tmp.path;
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.bin,data_file_raw=on', 'd.qcow2', '4M'], { cwd });
    // Writes far apart leave holes in data.bin inside clusters the qcow2 maps as data.
    const io = spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 4k', '-c', 'write -P 2 1M 8k', '-c', 'write -P 3 3M 512', 'd.qcow2'], { cwd, encoding: 'utf8' });
    expect(io.status).toBe(0);
    // A bitmap's clusters leave the qcow2 file sparse, so qemu takes it for a metadata-preallocated image.
    qemuImg(['bitmap', '--add', 'd.qcow2', 'b0'], { cwd });
    const qemu = qemuImg(['map', '--output=json', 'd.qcow2'], { cwd }).stdout;
    expect(qemu).toMatch(/"zero": true, "data": true/);
    const ours = run('img', ['map', '--output=json', 'd.qcow2'], { cwd });
    expect(ours.status).toBe(0);
    expect(ours.stdout).toBe(qemu);
  });
});
