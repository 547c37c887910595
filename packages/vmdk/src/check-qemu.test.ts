// checkVmdk against qemu-img check on damaged VMDKs: where qemu-img's VMDK check stops ("ERROR: cluster offset for
// sector N points after EOF", then "Check failed: Invalid argument", exit 1), checkVmdk's verdict is a check error with
// qemu's line, so img check exits 1 too; what only img finds (a grain in the descriptor, two entries sharing a grain, a
// grain table past the end of the file, which qemu reads as zeros) stays a corruption (img 2, qemu 0).
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { checkVmdk, type VmdkCheckResult } from './check.js';

const tmp = tempDir('img-vmdk-check-qemu-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** img check's exit status for a result (packages/convert's rule, as qemu-img's). */
const exitOf = (r: VmdkCheckResult) => (r.checkErrors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0);

async function check(name: string): Promise<VmdkCheckResult> {
  const storage = await FileStorage.open(p(name), { readOnly: true });
  try {
    return await checkVmdk(storage, { resolver: fileResolver });
  } finally {
    await storage.close();
  }
}

function qemuCheck(name: string): { status: number; first: string; failed: string | undefined } {
  const r = qemuImg(['check', p(name)], { allowFail: true });
  return { status: r.status, first: r.stderr.split('\n')[0]!, failed: /Check failed: (.*)/.exec(r.stderr)?.[1] };
}

/** The sparse header's fields a damage aims at. */
function layout(bytes: Buffer): { gd: number; rgd: number; gt0: number } {
  const gd = Number(bytes.readBigUInt64LE(56)) * 512;
  return { gd, rgd: Number(bytes.readBigUInt64LE(48)) * 512, gt0: bytes.readUInt32LE(gd) * 512 };
}

type Damage = (b: Buffer) => Buffer;
const damages: [string, Damage, 'qemu' | 'img-only' | 'clean'][] = [
  ['grain 0 far past the end', (b) => (b.writeUInt32LE(0x7fff_0000, layout(b).gt0), b), 'qemu'],
  ['grain 1 far past the end', (b) => (b.writeUInt32LE(0x7fff_0000, layout(b).gt0 + 4), b), 'qemu'],
  ['an unallocated grain just past the end', (b) => (b.writeUInt32LE(b.length / 512 + 10, layout(b).gt0 + 4 * 200), b), 'qemu'],
  ['the last grain cut off (file truncated)', (b) => b.subarray(0, b.length - 65536), 'qemu'],
  ['a grain table in the descriptor (its text read as entries)', (b) => (b.writeUInt32LE(1, layout(b).gd), b), 'qemu'],
  ['a grain in the descriptor', (b) => (b.writeUInt32LE(1, layout(b).gt0), b), 'img-only'],
  ['two entries share a grain', (b) => (b.writeUInt32LE(b.readUInt32LE(layout(b).gt0), layout(b).gt0 + 400), b), 'img-only'],
  ['a grain table past the end of the file', (b) => (b.writeUInt32LE(0x7fff_0000, layout(b).gd), b), 'img-only'],
  ['the redundant table disagrees', (b) => (b.writeUInt32LE(12345, b.readUInt32LE(layout(b).rgd) * 512 + 200), b), 'clean'],
];

describeQemu('checkVmdk: qemu-img check exit status and first line on damaged VMDKs', () => {
  it('monolithicSparse: where qemu stops the check (exit 1), img check does, with the same line; img-only findings stay corruptions', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', p('base.vmdk'), '16M']);
    qemuIo(p('base.vmdk'), 'vmdk', ['write -P 0x33 0 192k', 'write -P 0x44 8M 64k']);
    const base = readFileSync(p('base.vmdk'));
    for (const [what, damage, kind] of damages) {
      writeFileSync(p('bad.vmdk'), damage(Buffer.from(base)));
      const theirs = qemuCheck('bad.vmdk');
      const ours = await check('bad.vmdk');
      if (kind === 'qemu') {
        expect([what, exitOf(ours), ours.messages[0], ours.checkFailed]).toEqual([what, theirs.status, theirs.first, theirs.failed]);
        expect(theirs.status).toBe(1);
        expect(ours.problems[0]!.code).toBe('check-failed');
        expect(ours.corruptions, what).toBeGreaterThan(0); // img's own account of the damage
      } else if (kind === 'img-only') {
        expect([what, theirs.status, exitOf(ours), ours.checkFailed]).toEqual([what, 0, 2, undefined]);
      } else expect([what, theirs.status, exitOf(ours)]).toEqual([what, 0, 0]);
    }
  });

  it('streamOptimized: a grain table entry past the end stops both (exit 1); a damaged or cut compressed grain passes both', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', p('src.vmdk'), '16M']);
    qemuIo(p('src.vmdk'), 'vmdk', ['write -P 0x33 0 192k', 'write -P 0x44 8M 64k']);
    qemuImg(['convert', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.vmdk'), p('so.vmdk')]);
    const so = readFileSync(p('so.vmdk'));
    const { gt0 } = layout(so);
    const past = Buffer.from(so);
    past.writeUInt32LE(0x7fff_0000, gt0);
    const zeroed = Buffer.from(so);
    const grain = so.readUInt32LE(gt0) * 512;
    zeroed.fill(0, grain + 12, grain + 40);
    const cases: [string, Buffer, number][] = [
      ['grain 0 past the end', past, 1],
      // qemu and img look at where a compressed grain starts only, not at its stream (img reads it when asked).
      ['the stream cut short', so.subarray(0, so.length - 40000), 0],
      ['a compressed grain zeroed', zeroed, 0],
    ];
    for (const [what, bytes, status] of cases) {
      writeFileSync(p('so-bad.vmdk'), bytes);
      const theirs = qemuCheck('so-bad.vmdk');
      const ours = await check('so-bad.vmdk');
      expect([what, theirs.status, exitOf(ours)]).toEqual([what, status, status]);
      if (status === 1) expect(ours.messages[0]).toBe(theirs.first);
    }
  });

  it('twoGbMaxExtentSparse: the sector qemu names is the guest sector, counted across extents', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('t.vmdk'), '3G']);
    qemuIo(p('t.vmdk'), 'vmdk', ['write -P 0x55 2G 64k', 'write -P 0x66 2049M 64k']);
    const s2 = readFileSync(p('t-s002.vmdk'));
    const { gt0 } = layout(s2);
    s2.writeUInt32LE(0x7fff_0000, gt0 + 4 * 16); // grain 16 of the second extent: guest 2 GiB + 1 MiB
    writeFileSync(p('t-s002.vmdk'), s2);
    const theirs = qemuCheck('t.vmdk');
    const ours = await check('t.vmdk');
    expect(theirs.first).toBe(`ERROR: cluster offset for sector ${(2 * 2 ** 30 + 2 ** 20) / 512} points after EOF`);
    expect([exitOf(ours), ours.messages[0], ours.checkFailed]).toEqual([1, theirs.first, 'Invalid argument']);
    expect(ours.problems[0]).toMatchObject({ code: 'check-failed', file: p('t-s002.vmdk') });
  });

  it('a million grain table entries past the end of the file: counted, the first 1000 kept (a 33 MiB file of them made img check keep 4 M problems in 3.5 GB)', async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', p('many.vmdk'), '64G']);
    const bytes = readFileSync(p('many.vmdk'));
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const capacity = Number(view.getBigUint64(12, true));
    const grain = Number(view.getBigUint64(20, true));
    const perTable = view.getUint32(44, true);
    const tables = Math.ceil(capacity / grain / perTable);
    for (const dir of [Number(view.getBigUint64(48, true)), Number(view.getBigUint64(56, true))]) {
      for (let t = 0; t < tables; t++) {
        const at = view.getUint32(dir * 512 + t * 4, true) * 512;
        for (let i = 0; i < perTable; i++) view.setUint32(at + i * 4, 0x7fff0000, true);
      }
    }
    writeFileSync(p('many.vmdk'), bytes);
    const ours = await check('many.vmdk');
    const entries = tables * perTable;
    expect(entries).toBe(2 ** 20);
    // qemu-img's stop comes first (exit 1), then the first 1000 of img's findings and a line for the rest.
    expect([exitOf(ours), ours.checkFailed]).toEqual([1, 'Invalid argument']);
    expect(ours.corruptions).toBe(entries);
    expect(ours.problems).toHaveLength(1001);
    expect(ours.messages.at(-1)).toBe(`... and ${entries - 1000} more problems of the same kinds (the first 1000 are listed)`);
  });
});
