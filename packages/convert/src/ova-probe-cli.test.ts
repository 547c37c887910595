// `img info` / `img convert` of OVAs whose .ovf has a long name (GNU and pax tar) or comes after the VMDK: probed as OVA, never as raw.
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-ova-probe-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);
const N = 'Windows-Server-2019-Datacenter-Evaluation-Build-17763-Template-for-Lab-Environment-Exported-2024-06-30-final';

function build(): void {
  writeFileSync(p('src.raw'), seededBytes(1 << 20, 17));
  qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.raw'), p(`${N}-disk1.vmdk`)]);
  writeFileSync(
    p(`${N}.ovf`),
    `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="${N}-disk1.vmdk" ovf:id="file1" ovf:size="${statSync(p(`${N}-disk1.vmdk`)).size}"/></References>
  <DiskSection><Info>d</Info><Disk ovf:capacity="1048576" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
  <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
`,
  );
  const tars: [string, string, string[]][] = [
    ['long-gnu.ova', 'gnu', [`${N}.ovf`, `${N}-disk1.vmdk`]],
    ['long-posix.ova', 'posix', [`${N}.ovf`, `${N}-disk1.vmdk`]],
    ['vmdk-first.ova', 'gnu', [`${N}-disk1.vmdk`, `${N}.ovf`]],
    ['plain.tar', 'gnu', ['src.raw']],
  ];
  for (const [out, format, files] of tars) {
    const r = spawnSync('tar', [`--format=${format}`, '-cf', out, ...files], { cwd: tmp.path, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
  }
}

describeQemu('OVA probing follows long names and finds an .ovf after the disk', () => {
  it('img info and img convert (no -f) read the disk, never the tar as a raw disk; a tar with no .ovf is refused', () => {
    build();
    const src = readFileSync(p('src.raw'));
    for (const ova of ['long-gnu.ova', 'long-posix.ova', 'vmdk-first.ova']) {
      const info = run('img', ['info', p(ova)]);
      expect(info.status, ova).toBe(0);
      expect(info.stdout, ova).toContain('file format: ova');
      expect(info.stdout, ova).toContain('virtual size: 1 MiB (1048576 bytes)');
      const out = p(`${ova}.raw`);
      const r = run('img', ['convert', '-O', 'raw', p(ova), out]);
      expect(r.status, `${ova}: ${r.stderr}`).toBe(0);
      expect(readFileSync(out).equals(src), ova).toBe(true);
    }
    const r = run('img', ['convert', '-O', 'raw', p('plain.tar'), p('plain.raw')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/ERR_IMG_CORRUPT: ova: .*plain\.tar: the tar archive holds no \.ovf descriptor, so it is not an OVA/);
  });
});
