/**
 * Untrusted opens refuse footers that cannot be trusted (ERR_IMG_UNSAFE,
 * one sentence naming the file, the field and its offset): copies that
 * disagree, a bad checksum, an MBR boot signature where a footer ends.
 * Trusted opens read on as qemu does and record each in `problems`, and
 * check reports it with its code and offset.
 */
import { loadVhdWriters } from '@img/testkit';
import { ImageError, MemoryStorage } from '@img/block';
import { describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { vhdChecksum } from './checksum.js';
import { openVhd } from './open.js';

const { vhdImage } = await loadVhdWriters();

const SIZE = 4 * 1024 * 1024;
const dynamic = (spec: Record<string, unknown> = {}) => vhdImage({ size: SIZE, blocks: [0], ...spec }).bytes;
const fixed = (spec: Record<string, unknown> = {}) => vhdImage({ type: 'fixed', size: SIZE, ...spec }).bytes;

function reseal(b: Uint8Array, at: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at + 64, vhdChecksum(b.subarray(at, at + 512), 64), false);
}

async function refusal(bytes: Uint8Array): Promise<ImageError> {
  try {
    await openVhd(MemoryStorage.from(bytes, { name: 'u.vhd' }), { untrusted: true, noBacking: true });
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw e;
  }
  throw new Error('the untrusted open succeeded');
}

async function trusted(bytes: Uint8Array) {
  const disk = await openVhd(MemoryStorage.from(bytes, { name: 't.vhd' }), { noBacking: true });
  const problems = disk.problems.map((p) => [p.code, p.offset]);
  await disk.close();
  const check = await checkVhd(MemoryStorage.from(bytes, { name: 't.vhd' }));
  return { problems, check: check.problems.filter((p) => p.severity !== 'info').map((p) => [p.code, p.offset]) };
}

describe('untrusted opens refuse untrustworthy footers', () => {
  it('accepts pristine dynamic and fixed images', async () => {
    for (const b of [dynamic(), fixed()]) await (await openVhd(MemoryStorage.from(b), { untrusted: true })).close();
  });

  it('footer copies that disagree (both valid): refused, naming the copy; trusted: recorded and checked', async () => {
    const b = dynamic();
    b[0x18] = b[0x18]! ^ 1; // the copy's timestamp
    reseal(b, 0);
    const tail = b.length - 512;
    const e = await refusal(b);
    expect(e.code).toBe('ERR_IMG_UNSAFE');
    expect(e.message).toMatch(/^vhd: u\.vhd: the footer copy at the end of the file \(0x[0-9a-f]+\) differs from the one at 0x0/);
    expect(e.data).toMatchObject({ file: 'u.vhd', field: 'footer', offset: tail });
    // Trusted: a copy differing only in its timestamp is a stale copy (an interrupted footer update).
    expect(await trusted(b)).toEqual({ problems: [['footer-copy-stale', tail]], check: [['footer-copy-stale', tail]] });
  });

  it('copies describing different disks', async () => {
    const b = dynamic();
    b[0x44] = b[0x44]! ^ 1; // the copy's unique id
    reseal(b, 0);
    expect((await refusal(b)).code).toBe('ERR_IMG_UNSAFE');
    const tail = b.length - 512;
    expect(await trusted(b)).toEqual({ problems: [['footer-copies-differ', tail]], check: [['footer-copies-differ', tail]] });
  });

  it('a missing footer at the end behind a valid copy', async () => {
    const b = dynamic();
    b.fill(0, b.length - 512);
    const e = await refusal(b);
    expect([e.code, e.data.offset]).toEqual(['ERR_IMG_UNSAFE', b.length - 512]);
    expect(e.message).toMatch(/is missing or invalid/);
  });

  it('a bad footer checksum (the one in use, or the copy)', async () => {
    const both = dynamic();
    both[64] = both[64]! ^ 1;
    both[both.length - 512 + 64] = both[both.length - 512 + 64]! ^ 1;
    let e = await refusal(both);
    expect(e.code).toBe('ERR_IMG_UNSAFE');
    expect(e.message).toBe('vhd: u.vhd: footer checksum at 0x40 is wrong, and untrusted opens need a valid footer');
    expect(e.data).toMatchObject({ field: 'footer checksum', offset: 0x40 });
    expect((await trusted(both)).problems).toContainEqual(['footer-checksum', 0x40]);

    const copy = dynamic();
    copy[64] = copy[64]! ^ 1;
    e = await refusal(copy);
    expect([e.code, e.data.offset]).toEqual(['ERR_IMG_UNSAFE', 0]);
    expect(await trusted(copy)).toEqual({ problems: [['footer-copy-invalid', 0]], check: [['footer-copy-invalid', 0]] });

    const f = fixed();
    f[f.length - 512 + 64] = f[f.length - 512 + 64]! ^ 1;
    e = await refusal(f);
    expect([e.code, e.data.offset]).toEqual(['ERR_IMG_UNSAFE', SIZE + 64]);
    expect((await trusted(f)).check).toEqual([['footer-checksum', SIZE + 64]]);
  });

  it('an MBR boot signature 0x55AA at bytes 510-511 of the footer: a raw disk whose last sector looks like a footer', async () => {
    const f = fixed({ bootSignature: true });
    let e = await refusal(f);
    expect(e.code).toBe('ERR_IMG_UNSAFE');
    expect(e.message).toMatch(/^vhd: u\.vhd: the footer at 0x400000 \(the end of the file\) carries the MBR boot signature 0x55AA at 0x4001fe/);
    expect(e.data).toMatchObject({ field: 'footer reserved', offset: SIZE + 510 });
    expect(await trusted(f)).toEqual({ problems: [['footer-boot-signature', SIZE + 510]], check: [['footer-boot-signature', SIZE + 510]] });

    const d = dynamic({ bootSignature: true });
    e = await refusal(d);
    expect([e.code, e.data.offset]).toEqual(['ERR_IMG_UNSAFE', 510]);
    expect((await trusted(d)).problems).toEqual([
      ['footer-boot-signature', 510],
      ['footer-boot-signature', d.length - 2],
    ]);
  });

  it('a fixed disk whose guest data starts with a boot sector is fine: only the footer is judged', async () => {
    const f = fixed();
    f[510] = 0x55;
    f[511] = 0xaa;
    await (await openVhd(MemoryStorage.from(f), { untrusted: true })).close();
  });
});
