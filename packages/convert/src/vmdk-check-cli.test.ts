// img check of descriptor-file VMDKs opens their extents, with qemu-img check's exit status as the oracle.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-vmdk-check-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

describeQemu('img check on a descriptor-file VMDK checks its extents', () => {
  it('a missing extent file: exit 1 with one line naming it, as qemu-img check; a grain past the end of an extent: exit 1, "Check failed", as qemu-img check', () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('t.vmdk'), '16M']);
    qemuIo(p('t.vmdk'), 'vmdk', ['write -P 0x33 0 128k']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p('f.vmdk'), '1M']);
    for (const [image, extent] of [
      ['t.vmdk', 't-s001.vmdk'],
      ['f.vmdk', 'f-flat.vmdk'],
    ] as const) {
      expect(run('img', ['check', p(image)]).status, image).toBe(0);
      renameSync(p(extent), p(`${extent}.away`));
      const ours = run('img', ['check', p(image)]);
      const theirs = qemuImg(['check', p(image)], { allowFail: true });
      expect([image, ours.status]).toEqual([image, theirs.status]);
      expect(ours.status).toBe(1);
      expect(ours.stdout).toBe('');
      expect(ours.stderr.trim().split('\n')).toHaveLength(1);
      expect(ours.stderr).toContain(extent);
      renameSync(p(`${extent}.away`), p(extent));
    }
    const bytes = readFileSync(p('t-s001.vmdk'));
    const gd = Number(bytes.readBigUInt64LE(56)) * 512;
    bytes.writeUInt32LE(0x7fff_0000, bytes.readUInt32LE(gd) * 512);
    writeFileSync(p('t-s001.vmdk'), bytes);
    const bad = run('img', ['check', p('t.vmdk')]);
    const theirs = qemuImg(['check', p('t.vmdk')], { allowFail: true });
    expect(bad.status).toBe(theirs.status);
    expect(bad.status).toBe(1);
    // qemu-img's lines (its sector number), then img's own, then the failure; nothing on stdout, as qemu-img.
    expect(bad.stderr).toMatch(/^ERROR: cluster offset for sector 0 points after EOF\n/);
    expect(bad.stderr).toMatch(/t-s001\.vmdk: grain 0 at 0xfffe000000 lies past the end of the file/);
    expect(bad.stderr).toMatch(/\nimg check: Check failed: Invalid argument\n$/);
    expect(bad.stdout).toBe('');
    expect(run('img', ['check', '--output=json', p('t.vmdk')]).stdout).toBe('');
  });

  // CLI audit 3 finding 3: img check -r on a VMDK exited 1 (a failed check); qemu-img exits 63 (the format has no such
  // check), which scripts running check -r over every image tell apart from a failure.
  it('check -r leaks|all on a VMDK: exit 63, as qemu-img, and the image is untouched', () => {
    qemuImg(['create', '-q', '-f', 'vmdk', p('r.vmdk'), '4M']);
    qemuIo(p('r.vmdk'), 'vmdk', ['write -P 0x44 0 128k']);
    const before = readFileSync(p('r.vmdk'));
    for (const r of ['leaks', 'all']) {
      const ours = run('img', ['check', '-r', r, p('r.vmdk')]);
      expect([r, ours.status]).toEqual([r, qemuImg(['check', '-r', r, p('r.vmdk')], { allowFail: true }).status]);
      expect(ours.status).toBe(63);
      expect(ours.stdout).toBe('');
      expect(ours.stderr).toBe(`img check: ERR_IMG_UNSUPPORTED: vmdk: ${p('r.vmdk')}: repairing a VMDK is not supported\n`);
    }
    expect(readFileSync(p('r.vmdk')).equals(before)).toBe(true);
  });

  it('a descriptor with no extent: exit 1, "the descriptor lists no extent" (qemu-img 7.2 calls it clean; img cannot open it, so neither can it check it)', () => {
    writeFileSync(p('none.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n');
    const r = run('img', ['check', p('none.vmdk')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the descriptor lists no extent/);
  });
});
