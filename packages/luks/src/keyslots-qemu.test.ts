// amendLuksKeySlots with qemu-img 7.2 as the oracle: a passphrase img adds opens the image in qemu-img (and reads
// what qemu-img wrote), one img erases no longer does; img erases a slot qemu-img added, leaving the header bytes
// qemu-img amend leaves; each refusal is qemu-img amend's sentence and leaves the file as it was; --force overwrites
// and erases the last slot as qemu-img's does. And the crash ordering, from the writes and flushes made.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MemoryStorage, optionHelpLines, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { installNodeCryptoPrimitives } from '@img/qcow2/node';
import { LUKS_HEADER_SIZE, slotEntryOffset } from '@img/qcow2/luks';
import { describeQemu, qemuImg, seededBytes, tempDir, qemuImgLuks } from '@img/testkit';
import { createLuks } from './create.js';
import { amendLuksKeySlots, LUKS_AMEND_OPTIONS, type LuksKeySlotChange } from './keyslots.js';
import { readLuksVolume } from './header.js';

installNodeCryptoPrimitives();

const SECRETS: Record<string, string> = { s0: 'correct horse', s1: 'battery staple', s2: 'tr0ub4dor' };
const objects = Object.entries(SECRETS).flatMap(([id, data]) => ['--object', `secret,id=${id},data=${data}`]);
const opts = (file: string, id = 's0') => `driver=luks,file.filename=${file},key-secret=${id}`;

/** qemu-img with LUKS options, tried again while it fails to time PBKDF2 (see qemuImgLuks). */
const qemuLuks = (args: string[]) => qemuImgLuks(args);

async function amendFile(file: string, change: LuksKeySlotChange): Promise<number[]> {
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    return await amendLuksKeySlots(storage, change);
  } finally {
    await storage.close();
  }
}

async function activeSlots(file: string): Promise<number[]> {
  const storage = await FileStorage.open(file);
  try {
    const { header } = await readLuksVolume(storage, await storage.size(), file);
    return header.slots.flatMap((s, i) => (s.active ? [i] : []));
  } finally {
    await storage.close();
  }
}

describeQemu('luks key slots with qemu-img amend', () => {
  const tmp = tempDir('img-luks-slots-');
  const p = (n: string) => join(tmp.path, n);
  const SIZE = 1 << 20;

  beforeAll(() => {
    writeFileSync(p('src.raw'), seededBytes(SIZE, 9));
    // base.luks: slot 0 opens with s0; two.luks: slot 0 with s0, slot 3 with s1 (both qemu-img's).
    qemuLuks(['convert', ...objects, '-f', 'raw', '-O', 'luks', '-o', 'key-secret=s0', p('src.raw'), p('base.luks')]);
    copyFileSync(p('base.luks'), p('two.luks'));
    qemuLuks(['amend', ...objects, '--image-opts', opts(p('two.luks')), '-o', 'state=active,new-secret=s1,keyslot=3']);
  }, 300_000);
  afterAll(() => tmp.cleanup());

  /** qemu-img's status opening `file` with secret `id`, comparing it with the source. */
  const qemuOpens = (file: string, id: string) => qemuImg(['compare', ...objects, '--image-opts', opts(file, id), `driver=raw,file.filename=${p('src.raw')}`], { allowFail: true });

  it('a passphrase img adds opens the image in qemu-img; one img erases does not', async () => {
    const file = p('add.luks');
    copyFileSync(p('base.luks'), file);
    expect(await amendFile(file, { state: 'active', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s1!, iterTimeMs: 10 })).toEqual([1]);
    expect(await activeSlots(file)).toEqual([0, 1]);
    expect(qemuOpens(file, 's1').stdout).toBe('Images are identical.\n');
    // In a slot named, with a passphrase of bytes.
    expect(await amendFile(file, { state: 'active', passphrase: SECRETS.s1!, newPassphrase: new TextEncoder().encode(SECRETS.s2!), keyslot: 6, iterTimeMs: 10 })).toEqual([6]);
    expect(qemuOpens(file, 's2').stdout).toBe('Images are identical.\n');
    // The first passphrase erased by itself: qemu-img refuses it and opens with the others.
    expect(await amendFile(file, { state: 'inactive', oldPassphrase: SECRETS.s0! })).toEqual([0]);
    const refused = qemuOpens(file, 's0');
    expect(refused.status).toBe(2); // compare's status for an image it cannot open
    expect(refused.stderr).toContain('Invalid password, cannot unlock any keyslot');
    expect(qemuOpens(file, 's1').status).toBe(0);
    // qemu-img info sees the slots img left.
    const info = JSON.parse(qemuImg(['info', '--output=json', file]).stdout)['format-specific'].data.slots as Array<{ active: boolean }>;
    expect(info.map((s) => s.active)).toEqual([false, true, false, false, false, false, true, false]);
  });

  it('img erases a slot qemu-img added, leaving the header qemu-img amend leaves', async () => {
    copyFileSync(p('two.luks'), p('ours.luks'));
    copyFileSync(p('two.luks'), p('theirs.luks'));
    expect(await amendFile(p('ours.luks'), { state: 'inactive', keyslot: 3 })).toEqual([3]);
    qemuImg(['amend', ...objects, '--image-opts', opts(p('theirs.luks')), '-o', 'state=inactive,keyslot=3']);
    const ours = readFileSync(p('ours.luks'));
    const theirs = readFileSync(p('theirs.luks'));
    expect(ours.subarray(0, LUKS_HEADER_SIZE).equals(theirs.subarray(0, LUKS_HEADER_SIZE))).toBe(true);
    // The key material is overwritten (random bytes, in both), the payload untouched.
    const before = readFileSync(p('two.luks'));
    const keyOffset = 4096 + 3 * 258048; // slot 3's material, as qemu-img info lists it
    const info = JSON.parse(qemuImg(['info', '--output=json', p('two.luks')]).stdout)['format-specific'].data.slots as Array<{ 'key-offset': number }>;
    expect(info[3]!['key-offset']).toBe(keyOffset);
    expect(ours.subarray(keyOffset, keyOffset + 4096).equals(before.subarray(keyOffset, keyOffset + 4096))).toBe(false);
    expect(ours.subarray(2068480).equals(before.subarray(2068480))).toBe(true);
    expect(qemuOpens(p('ours.luks'), 's1').status).toBe(2);
    expect(qemuOpens(p('ours.luks'), 's0').status).toBe(0);
  });

  it('refuses what qemu-img amend refuses, in its words, and leaves the file as it was', async () => {
    const cases: Array<[string, LuksKeySlotChange]> = [
      ['state=active,new-secret=s2,keyslot=3', { state: 'active', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s2!, keyslot: 3 }],
      ['state=active,new-secret=s2,keyslot=8', { state: 'active', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s2!, keyslot: 8 }],
      ['state=active', { state: 'active', passphrase: SECRETS.s0! }],
      ['state=active,new-secret=s2,old-secret=s0', { state: 'active', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s2!, oldPassphrase: SECRETS.s0! }],
      ['state=inactive,new-secret=s2', { state: 'inactive', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s2! }],
      ['state=inactive', { state: 'inactive', passphrase: SECRETS.s0! }],
      ['state=inactive,keyslot=5', { state: 'inactive', passphrase: SECRETS.s0!, keyslot: 5 }],
      ['state=inactive,keyslot=9', { state: 'inactive', passphrase: SECRETS.s0!, keyslot: 9 }],
      ['state=inactive,old-secret=s2', { state: 'inactive', passphrase: SECRETS.s0!, oldPassphrase: SECRETS.s2! }],
      ['state=inactive,keyslot=3,old-secret=s0', { state: 'inactive', passphrase: SECRETS.s0!, keyslot: 3, oldPassphrase: SECRETS.s0! }],
      ['state=foo', { state: 'foo' as 'active', passphrase: SECRETS.s0! }],
    ];
    const lastCases: Array<[string, LuksKeySlotChange]> = [
      ['state=inactive,keyslot=0', { state: 'inactive', passphrase: SECRETS.s0!, keyslot: 0 }],
      ['state=inactive,old-secret=s0', { state: 'inactive', passphrase: SECRETS.s0!, oldPassphrase: SECRETS.s0! }],
    ];
    for (const [base, list] of [
      ['two.luks', cases],
      ['base.luks', lastCases],
    ] as const) {
      for (const [o, change] of list) {
        const file = p('refused.luks');
        copyFileSync(p(base), file);
        const before = readFileSync(file);
        const theirs = qemuImg(['amend', ...objects, '--image-opts', opts(file), '-o', o], { allowFail: true });
        expect(theirs.status, o).toBe(1);
        const sentence = theirs.stderr.trim().replace(/^qemu-img: /, '');
        const ours = await amendFile(file, change).catch((e: unknown) => e);
        expect(ours, o).toMatchObject({ code: 'ERR_IMG_INVALID_ARG', message: `luks: ${sentence}` });
        expect(readFileSync(file).equals(before), o).toBe(true);
      }
    }
    // A wrong current passphrase: qemu-img does not open the image; img refuses before any change.
    const file = p('refused.luks');
    copyFileSync(p('two.luks'), file);
    expect(qemuImg(['amend', ...objects, '--image-opts', opts(file, 's2'), '-o', 'state=inactive,keyslot=3'], { allowFail: true }).status).toBe(1);
    await expect(amendFile(file, { state: 'inactive', passphrase: SECRETS.s2!, keyslot: 3 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG', message: expect.stringMatching(/^luks: .*passphrase unlocks none/) });
    expect(await activeSlots(file)).toEqual([0, 3]);
  });

  it('with force, overwrites an active slot and erases the last ones, as qemu-img amend --force', async () => {
    const file = p('force.luks');
    copyFileSync(p('two.luks'), file);
    expect(await amendFile(file, { state: 'active', passphrase: SECRETS.s0!, newPassphrase: SECRETS.s2!, keyslot: 3, iterTimeMs: 10, force: true })).toEqual([3]);
    expect(qemuOpens(file, 's2').status).toBe(0);
    expect(qemuOpens(file, 's1').status).toBe(2);
    expect(await amendFile(file, { state: 'inactive', oldPassphrase: SECRETS.s0! })).toEqual([0]);
    expect(await amendFile(file, { state: 'inactive', oldPassphrase: SECRETS.s2!, force: true })).toEqual([3]);
    expect(await activeSlots(file)).toEqual([]);
    for (const id of ['s0', 's1', 's2']) expect(qemuOpens(file, id).status).toBe(2);
  });

  it("LUKS_AMEND_OPTIONS is qemu-img amend -f luks -o help's list", () => {
    const theirs = qemuImg(['amend', '-f', 'luks', '-o', 'help']).stdout;
    // The same lines; qemu-img pads the names to 22 columns (img amend prints them so).
    const squeeze = (t: string) => t.replace(/ +- /g, ' - ');
    expect(squeeze(theirs)).toBe(squeeze(`Amend options for 'luks':\n${optionHelpLines(LUKS_AMEND_OPTIONS).join('\n')}\n`));
  });
});

/** A storage that records its writes (offset, length) and flushes, in order. */
function recording(inner: Storage, log: string[]): Storage {
  return new Proxy(inner, {
    get(target, key, receiver) {
      if (key === 'write') {
        return (at: number, data: Uint8Array) => {
          log.push(`write ${at} ${data.length}`);
          return target.write(at, data);
        };
      }
      if (key === 'flush') {
        return () => {
          log.push('flush');
          return target.flush();
        };
      }
      const v = Reflect.get(target, key, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

it('orders writes for crashes: material before its entry; an entry disabled before its material is overwritten', async () => {
  const storage = new MemoryStorage();
  await (await createLuks(storage, { size: 1 << 20, passphrase: 'a', iterTime: 10 })).flush();
  const { header } = await readLuksVolume(storage, await storage.size(), 'memory');
  const material = (i: number) => header.slots[i]!.keyOffset;
  const log: string[] = [];
  const rec = recording(storage, log);
  await amendLuksKeySlots(rec, { state: 'active', passphrase: 'a', newPassphrase: 'b', iterTimeMs: 10 });
  expect(log).toEqual([`write ${material(1)} 256000`, 'flush', `write ${slotEntryOffset(1)} 48`, 'flush']);
  log.length = 0;
  await amendLuksKeySlots(rec, { state: 'active', passphrase: 'a', newPassphrase: 'c', keyslot: 1, iterTimeMs: 10, force: true });
  expect(log).toEqual([`write ${slotEntryOffset(1)} 48`, 'flush', `write ${material(1)} 256000`, 'flush', `write ${slotEntryOffset(1)} 48`, 'flush']);
  log.length = 0;
  await amendLuksKeySlots(rec, { state: 'inactive', oldPassphrase: 'a' });
  expect(log).toEqual([`write ${slotEntryOffset(0)} 48`, 'flush', `write ${material(0)} 256000`, 'flush']);
});
