/**
 * The sizing rule on footers whose current size is not CHS-exact, for the
 * creators real images carry: CHS only for "vpc " and "qemu" (qemu >= 10.0),
 * the current size for everyone else (the spec, libvhdi, qemu >= 10), the
 * maximal geometry always the current size, force_size_calc overriding.
 * Oracles: vhdimount (libvhdi reads the current size for every creator),
 * qemu-img 7.2 where it agrees (its current-size creators, and vpc/qemu),
 * and qemu-img 7.2 with force_size_calc for the others.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '@img/block';
import { describeQemu, describeWith, qemuImg, tempDir, loadVhdWriters, type VhdWriterImage } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { vhdDriver } from './driver.js';
import { chsForSectors, chsProduct } from './geometry.js';
import { openVhd } from './open.js';

const { vhdImage } = await loadVhdWriters();
type Built = VhdWriterImage;

/** 5 MiB + 61.5 KiB: the spec's CHS geometry of it covers 27 sectors (13.5 KiB) less. */
const SIZE = 5 * 1024 * 1024 + 123 * 512;
const CHS_SIZE = chsProduct(chsForSectors(SIZE / 512)) * 512;
/** qemu 7.2's current-size creators; every other creator it sizes by CHS. */
const QEMU72_CURRENT = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];
const CREATORS = ['caml', 'mkim', 'win ', 'vpc ', 'qemu', 'd2v ', 'vs  ', 'xen ', 'tap\0', 'wa\0\0', 'CTXS', 'qem2', 'vbox', 'go-v'];
const byChs = (c: string) => c === 'vpc ' || c === 'qemu';
const label = (c: string) => JSON.stringify(c);

const tmp = tempDir('vhd-size-');
afterAll(() => tmp.cleanup());

function build(creator: string, type: 'fixed' | 'dynamic'): Built {
  return vhdImage({ type, creator, size: SIZE, blocks: [0, 1, 2], blockSize: 2 * 1024 * 1024 });
}

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

it('the test sizes are what they claim: current size not CHS-exact', () => {
  expect(CHS_SIZE).toBeLessThan(SIZE);
  expect(SIZE - CHS_SIZE).toBe(27 * 512);
});

describe('virtual size by creator', () => {
  for (const type of ['fixed', 'dynamic'] as const) {
    for (const creator of CREATORS) {
      it(`${type} ${label(creator)}: ${byChs(creator) ? 'CHS' : 'current size'}, info says why, contents read`, async () => {
        const built = build(creator, type);
        const disk = await openVhd(MemoryStorage.from(built.bytes, { name: 'x.vhd' }));
        try {
          expect(disk.size).toBe(byChs(creator) ? CHS_SIZE : SIZE);
          const info = await disk.info();
          expect(info.formatSpecific!['size-rule']).toBe(byChs(creator) ? 'chs' : 'current-size');
          expect(String(info.formatSpecific!['size-rule-reason'])).toContain(JSON.stringify(creator));
          expect(sha(await disk.read(0, disk.size))).toBe(sha(built.content.subarray(0, disk.size)));
        } finally {
          await disk.close();
        }
      });
    }
  }

  it('force_size_calc overrides the creator rule, through the driver as the CLI passes it', async () => {
    const caml = build('caml', 'dynamic').bytes;
    const vpc = build('vpc ', 'fixed').bytes;
    const open = (b: Uint8Array, force?: string) => vhdDriver.open!(MemoryStorage.from(b), force ? ({ force_size_calc: force } as object) : {});
    expect((await open(caml, 'chs')).size).toBe(CHS_SIZE);
    expect((await open(vpc, 'current_size')).size).toBe(SIZE);
    const forced = await open(caml, 'chs');
    expect((await forced.info!()).formatSpecific).toMatchObject({ 'size-rule': 'chs', 'size-rule-reason': 'forced by force_size_calc=chs' });
    await expect(open(caml, 'geometry')).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG', data: { field: 'force_size_calc' } });
    expect((await openVhd(MemoryStorage.from(vpc), { sizeMode: 'current-size' })).size).toBe(SIZE);
  });

  it('the maximal geometry 65535/16/255 always means the current size, even forced to CHS', async () => {
    const built = vhdImage({ type: 'fixed', creator: 'vpc ', size: SIZE, geometry: { c: 65535, h: 16, s: 255 } });
    const disk = await vhdDriver.open!(MemoryStorage.from(built.bytes), { force_size_calc: 'chs' } as object);
    expect(disk.size).toBe(SIZE);
    expect((await disk.info!()).formatSpecific!['size-rule-reason']).toMatch(/maximal/);
  });
});

function mountRead(image: string, mountPoint: string): Buffer {
  mkdirSync(mountPoint, { recursive: true });
  const r = spawnSync('vhdimount', [image, mountPoint], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`vhdimount failed (${r.status}): ${r.stderr}`);
  try {
    const layers = readdirSync(mountPoint).filter((n) => /^vhdi\d+$/.test(n));
    return readFileSync(join(mountPoint, layers.sort().at(-1)!));
  } finally {
    spawnSync('umount', [mountPoint]);
  }
}

describeWith('vhdimount', 'libvhdi agrees: the current size for every creator but vpc/qemu, same bytes', () => {
  const fuse = existsSync('/dev/fuse');
  it.skipIf(!fuse)('fixed and dynamic, every creator', async () => {
    let n = 0;
    for (const type of ['fixed', 'dynamic'] as const) {
      for (const creator of CREATORS) {
        const built = build(creator, type);
        const file = join(tmp.path, `m${n}.vhd`);
        writeFileSync(file, built.bytes);
        const theirs = mountRead(file, join(tmp.path, `mnt${n++}`));
        const disk = await openVhd(MemoryStorage.from(built.bytes));
        const ours = await disk.read(0, disk.size);
        await disk.close();
        // libvhdi sizes every disk by its current size; so do we except for Virtual PC and old qemu.
        expect([type, creator, theirs.length]).toEqual([type, creator, SIZE]);
        expect([type, creator, sha(theirs.subarray(0, ours.length))]).toEqual([type, creator, sha(ours)]);
        if (!byChs(creator)) expect(ours.length).toBe(theirs.length);
      }
    }
  });
});

describeQemu('qemu-img 7.2 agrees where it uses the same rule', () => {
  it('its current-size creators and vpc/qemu: same size and bytes; other creators: same size with force_size_calc=current_size', () => {
    let n = 0;
    for (const type of ['fixed', 'dynamic'] as const) {
      for (const creator of CREATORS) {
        const built = build(creator, type);
        const file = join(tmp.path, `q${n++}.vhd`);
        writeFileSync(file, built.bytes);
        const agrees = byChs(creator) || QEMU72_CURRENT.includes(creator);
        const spec = agrees ? ['-f', 'vpc', file] : ['--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${file}`];
        const info = JSON.parse(qemuImg(['info', '--output=json', ...spec]).stdout) as { 'virtual-size': number };
        expect([type, creator, info['virtual-size']]).toEqual([type, creator, byChs(creator) ? CHS_SIZE : SIZE]);
        if (!agrees) {
          // Without the option qemu 7.2 drops the tail: CHS, the old default this package no longer follows.
          const old = JSON.parse(qemuImg(['info', '--output=json', '-f', 'vpc', file]).stdout) as { 'virtual-size': number };
          expect(old['virtual-size']).toBe(CHS_SIZE);
        }
        const raw = `${file}.raw`;
        qemuImg(['convert', '-O', 'raw', ...(agrees ? ['-f', 'vpc', file] : ['--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${file}`]), raw]);
        const expected = built.content.subarray(0, byChs(creator) ? CHS_SIZE : SIZE);
        expect([type, creator, sha(readFileSync(raw))]).toEqual([type, creator, sha(expected)]);
      }
    }
  });
});
