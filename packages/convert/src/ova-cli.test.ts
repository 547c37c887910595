// img-convert and img info with an OVA input, judged by qemu-img compare against the source raws.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
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

  it('cat vm.ova | img-convert ova raw - out.raw checks the manifest at the end: one byte changed in the disk fails and leaves no output', () => {
    const ova = readFileSync(p('vm.ova'));
    let r = run('img-convert', ['ova', 'raw', '-', p('piped-ok.raw')], { input: ova });
    expect(r.status).toBe(0);
    expect(readFileSync(p('piped-ok.raw')).equals(readFileSync(p('a.raw')))).toBe(true);
    // A byte of the disk's descriptor area past its text: the VMDK reader passes over it, only the manifest can tell.
    const disk = ova.indexOf(Buffer.from('KDMV'));
    expect(disk).toBeGreaterThan(0);
    const bad = Buffer.from(ova);
    bad[disk + 512 + 1500] = bad[disk + 512 + 1500]! ^ 0x01;
    r = run('img-convert', ['ova', 'raw', '-', p('piped-bad.raw')], { input: bad });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/SHA256 of "d0\.vmdk" is [0-9a-f]{64}, but the manifest says/);
    expect(existsSync(p('piped-bad.raw'))).toBe(false);
    // From a file, untrusted mode refuses the same bytes before converting.
    writeFileSync(p('bad.ova'), bad);
    r = run('img-convert', ['--untrusted', 'ova', 'raw', p('bad.ova'), p('file-bad.raw')]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/SHA256 of "d0\.vmdk"/);
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

  it('img info --disk 1 describes the second disk', () => {
    const r = run('img', ['info', '--output=json', '--disk', '1', p('vm.ova')]);
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { 'virtual-size': number; 'format-specific': { data: { disk: number; 'disk-format': string } } };
    expect(info['virtual-size']).toBe(4 << 20);
    expect(info['format-specific'].data).toMatchObject({ disk: 1, 'disk-format': 'qcow2' });
    expect(run('img', ['info', '--disk', 'x', p('vm.ova')]).status).not.toBe(0);
  });
});

describeQemu('ova output', () => {
  it('img-convert qcow2 ova writes an OVA that img reads back identical, and whose disk qemu-img checks', () => {
    const src = Buffer.alloc(6 << 20);
    src.set(seededBytes(300_000, 31), 4096);
    src.set(seededBytes(5000, 32), (6 << 20) - 5000);
    writeFileSync(p('w.raw'), src);
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', p('w.raw'), p('w.qcow2')]);
    let r = run('img-convert', ['qcow2', 'ova', p('w.qcow2'), p('w.ova'), '-o', 'name=web,cpus=2,memory=2048,os=ubuntu64Guest,manifest=sha512']);
    expect(r.stderr).toContain('converted qcow2');
    expect(r.status).toBe(0);
    const list = spawnSync('tar', ['-tf', 'w.ova'], { cwd: tmp.path, encoding: 'utf8' });
    expect(list.stdout.trim().split('\n')).toEqual(['web.ovf', 'web-disk1.vmdk', 'web.mf']);
    expect(spawnSync('tar', ['-xf', 'w.ova', 'web-disk1.vmdk'], { cwd: tmp.path }).status).toBe(0);
    expect(qemuImg(['check', p('web-disk1.vmdk')]).status).toBe(0);
    expect(qemuCompare(p('w.raw'), p('web-disk1.vmdk'), 'raw', 'vmdk')).toBe(true);
    r = run('img-convert', ['--untrusted', 'ova', 'raw', p('w.ova'), p('w-back.raw')]);
    expect(r.status).toBe(0);
    expect(qemuCompare(p('w.raw'), p('w-back.raw'), 'raw', 'raw')).toBe(true);
  });

  it('img convert -O ova to a pipe, and an OVA read from a pipe', () => {
    const img = fileURLToPath(new URL('../dist/bin/img.js', import.meta.url));
    const piped = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'ova', p('w.raw'), '-'], { maxBuffer: 64 << 20 });
    expect(piped.status).toBe(0);
    writeFileSync(p('piped.ova'), piped.stdout);
    let r: ReturnType<typeof run>;
    expect(spawnSync('tar', ['-tf', 'piped.ova'], { cwd: tmp.path, encoding: 'utf8' }).stdout).toContain('vm-disk1.vmdk');
    r = run('img-convert', ['ova', 'raw', '-', p('from-pipe.raw')], { input: readFileSync(p('piped.ova')) });
    expect(r.status).toBe(0);
    expect(qemuCompare(p('w.raw'), p('from-pipe.raw'), 'raw', 'raw')).toBe(true);
    // The hand-made OVA holds a qcow2 as disk 1: not readable from a pipe, said cleanly.
    // (Through cat: the command stops reading early, which a direct spawnSync input would see as EPIPE.)
    const convert = fileURLToPath(new URL('../dist/bin/img-convert.js', import.meta.url));
    const refused = spawnSync('sh', ['-c', 'cat "$1" | "$2" "$3" --disk 1 ova raw - "$4"', 'sh', p('vm.ova'), process.execPath, convert, p('no.raw')], { encoding: 'utf8' });
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/not a streamOptimized VMDK/);
  });

  it('-O ova -o help lists the OVA options; a bad one is refused', () => {
    let r = run('img-convert', ['-O', 'ova', '-o', 'help', p('w.raw'), p('x.ova')]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/cpus[\s\S]*memory[\s\S]*manifest/);
    r = run('img-convert', ['raw', 'ova', p('w.raw'), p('bad.ova'), '-o', 'manifest=md5']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/manifest must be one of/);
  });
});
