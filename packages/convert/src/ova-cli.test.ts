// img-convert and img info with an OVA input, judged by qemu-img compare against the source raws.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuCompare, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { probeOva } from './ova-driver.js';
import { run } from './test/cli.js';

const tmp = tempDir('img-ova-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** An OVA (GNU tar, ustar) of an OVF, a streamOptimized VMDK and a qcow2 made by qemu-img, and a SHA256 manifest. */
function buildOva(): void {
  const a = Buffer.alloc(8 << 20);
  a.set(seededBytes(1 << 20, 1), 0);
  a.set(seededBytes(70_000, 2), (5 << 20) + 777);
  writeFileSync(p('a.raw'), a);
  const b = Buffer.alloc(4 << 20);
  b.set(seededBytes(200_000, 3), 123_456);
  writeFileSync(p('b.raw'), b);
  qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('a.raw'), p('d0.vmdk')]);
  qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', p('b.raw'), p('d1.qcow2')]);
  writeFileSync(
    p('vm.ovf'),
    `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:id="f1" ovf:href="d0.vmdk"/><File ovf:id="f2" ovf:href="d1.qcow2"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="v1" ovf:fileRef="f1" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="v2" ovf:fileRef="f2" ovf:capacity="4194304"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>a VM</Info><Name>cli-vm</Name></VirtualSystem>
</Envelope>
`,
  );
  const sha = (f: string) =>
    createHash('sha256')
      .update(readFileSync(p(f)))
      .digest('hex');
  writeFileSync(p('vm.mf'), ['vm.ovf', 'd0.vmdk', 'd1.qcow2'].map((f) => `SHA256(${f})= ${sha(f)}\n`).join(''));
  const r = spawnSync('tar', ['--format=ustar', '-cf', 'vm.ova', 'vm.ovf', 'd0.vmdk', 'd1.qcow2', 'vm.mf'], { cwd: tmp.path, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
}

describeQemu('ova input', () => {
  it('img-convert ova qcow2 converts the first disk; --disk 1 the second; -O probes the OVA', () => {
    buildOva();
    expect(probeOva(readFileSync(p('vm.ova')).subarray(0, 4096))).toBe(100);
    let r = run('img-convert', ['ova', 'qcow2', p('vm.ova'), p('out0.qcow2')]);
    expect(r.stderr).toContain('converted ova');
    expect(r.status).toBe(0);
    expect(qemuCompare(p('a.raw'), p('out0.qcow2'), 'raw', 'qcow2')).toBe(true);
    r = run('img-convert', ['--untrusted', '--disk', '1', 'ova', 'raw', p('vm.ova'), p('out1.raw')]);
    expect(r.status).toBe(0);
    expect(qemuCompare(p('b.raw'), p('out1.raw'), 'raw', 'raw')).toBe(true);
    r = run('img-convert', ['-O', 'raw', p('vm.ova'), p('out2.raw')]);
    expect(r.status).toBe(0);
    expect(readFileSync(p('out2.raw')).equals(readFileSync(p('a.raw')))).toBe(true);
    r = run('img-convert', ['--disk', '2', 'ova', 'raw', p('vm.ova'), p('out3.raw')]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('disk 2 does not exist');
  });

  it('img info lists the disks, capacities and files', () => {
    const r = run('img', ['info', '--output=json', p('vm.ova')]);
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { format: string; 'virtual-size': number; 'format-specific': { data: { name: string; disks: { capacity: number; file: string }[]; files: { name: string }[] } } };
    expect(info.format).toBe('ova');
    expect(info['virtual-size']).toBe(8 << 20);
    const data = info['format-specific'].data;
    expect(data.name).toBe('cli-vm');
    expect(data.disks.map((d) => [d.file, d.capacity])).toEqual([
      ['d0.vmdk', 8 << 20],
      ['d1.qcow2', 4 << 20],
    ]);
    expect(data.files.map((f) => f.name)).toEqual(['vm.ovf', 'd0.vmdk', 'd1.qcow2', 'vm.mf']);
  });
});
