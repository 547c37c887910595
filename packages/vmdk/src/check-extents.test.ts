// checkVmdk of descriptor-file VMDKs opens and checks their extents: qemu-img check as the oracle for what opens.
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { checkVmdk } from './check.js';

const tmp = tempDir('img-vmdk-check-extents-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

async function check(name: string) {
  const storage = await FileStorage.open(p(name), { readOnly: true });
  try {
    return await checkVmdk(storage, { resolver: fileResolver });
  } finally {
    await storage.close();
  }
}

describeQemu('checkVmdk with a resolver: the extents of a descriptor file are checked, as qemu-img check opens them', () => {
  it('twoGbMaxExtentSparse and monolithicFlat: clean when whole; a missing extent file is a check error (qemu-img check exits 1)', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('t.vmdk'), '16M']);
    qemuIo(p('t.vmdk'), 'vmdk', ['write -P 0x11 0 1M']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p('f.vmdk'), '1M']);
    for (const [image, extent] of [
      ['t.vmdk', 't-s001.vmdk'],
      ['f.vmdk', 'f-flat.vmdk'],
    ] as const) {
      const whole = await check(image);
      expect([image, whole.corruptions, whole.checkErrors, qemuImg(['check', p(image)], { allowFail: true }).status]).toEqual([image, 0, 0, 0]);
      renameSync(p(extent), p(`${extent}.away`));
      const r = await check(image);
      expect(qemuImg(['check', p(image)], { allowFail: true }).status, image).toBe(1);
      expect(r.checkErrors, image).toBe(1);
      expect(r.problems.map((x) => x.code)).toEqual(['open-failed']);
      expect(r.messages).toHaveLength(1);
      expect(r.messages[0]).toMatch(new RegExp(`${extent.replace('.', '\\.')}.*no such file`, 'i'));
      renameSync(p(`${extent}.away`), p(extent));
    }
  });

  it('a sparse extent of a split image gets the checks a monolithicSparse file gets', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('g.vmdk'), '16M']);
    qemuIo(p('g.vmdk'), 'vmdk', ['write -P 0x22 0 128k']);
    const bytes = readFileSync(p('g-s001.vmdk'));
    const gd = Number(bytes.readBigUInt64LE(56)) * 512;
    const gt = bytes.readUInt32LE(gd) * 512;
    bytes.writeUInt32LE(0x7fff_0000, gt); // grain 0 far past the end of the extent file
    writeFileSync(p('g-s001.vmdk'), bytes);
    const r = await check('g.vmdk');
    // The redundant table still has the old entry: reported, but no corruption (the primary decides).
    expect(r.corruptions).toBe(1);
    expect(r.problems.map((x) => [x.code, x.file])).toEqual([
      ['check-failed', p('g-s001.vmdk')],
      ['redundant-mismatch', p('g-s001.vmdk')],
      ['grain-out-of-bounds', p('g-s001.vmdk')],
    ]);
    // qemu-img check stops there: "ERROR: cluster offset for sector 0 points after EOF", "Check failed: Invalid argument", exit 1.
    const qemu = qemuImg(['check', p('g.vmdk')], { allowFail: true });
    expect([r.checkErrors, r.messages[0], r.checkFailed]).toEqual([1, qemu.stderr.split('\n')[0], 'Invalid argument']);
    expect(qemu.status).toBe(1);
  });

  it('a descriptor that lists no extent is a check error, with or without a resolver', async () => {
    writeFileSync(p('none.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n');
    const r = await check('none.vmdk');
    expect([r.checkErrors, r.corruptions]).toEqual([1, 0]);
    expect(r.messages[0]).toMatch(/the descriptor lists no extent/);
    const storage = await FileStorage.open(p('none.vmdk'), { readOnly: true });
    const alone = await checkVmdk(storage);
    await storage.close();
    expect([alone.checkErrors, alone.messages]).toEqual([1, [`vmdk: ${p('none.vmdk')}: the descriptor lists no extent`]]);
  });
});
