/**
 * A writable open refuses a sparse extent whose layout would let a write
 * land in metadata or in another grain (found by the hostile-input
 * campaign, tools/hostile): the image stays byte for byte as it was and
 * still opens read-only.
 */
import { ImageError, MemoryStorage } from '@img/block';
import { vmdkBytes } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { createVmdk } from './create.js';
import { openVmdk } from './open.js';
import { checkVmdk } from './check.js';

const GRAIN = 64 * 1024;

/** A monolithicSparse image (qemu's layout) of 4 MiB with `grains` grains written (grain i filled with i + 1). */
async function image(grains = 3): Promise<Uint8Array> {
  const s = new MemoryStorage({ name: 'g.vmdk' });
  const disk = await createVmdk(s, { size: 4 << 20 });
  for (let i = 0; i < grains; i++) await disk.write(i * GRAIN, new Uint8Array(GRAIN).fill(i + 1));
  await disk.close();
  return s.toBytes().slice();
}

/** Opens writable and writes grain 0 and a new grain 40; answers the error code, or 'ok'. */
async function writeInto(bytes: Uint8Array): Promise<string> {
  try {
    const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'g.vmdk' }), { readOnly: false });
    try {
      await disk.write(100, new Uint8Array(1000).fill(0xee));
      await disk.write(40 * GRAIN, new Uint8Array(GRAIN).fill(0xdd));
      await disk.flush();
    } finally {
      await disk.close();
    }
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return e.code;
    throw e;
  }
}

async function refusedUnchanged(damaged: Uint8Array, message: RegExp, checkCode?: string): Promise<void> {
  const before = damaged.slice();
  // check reports what a writable open refuses
  if (checkCode) {
    const r = await checkVmdk(MemoryStorage.from(before.slice(), { name: 'g.vmdk', readOnly: true }));
    expect(r.problems.map((p) => p.code)).toContain(checkCode);
    expect(r.corruptions).toBeGreaterThan(0);
  }
  const s = MemoryStorage.from(damaged, { name: 'g.vmdk' });
  await expect(openVmdk(s, { readOnly: false })).rejects.toThrow(message);
  expect(await writeInto(damaged)).toBe('ERR_IMG_CORRUPT');
  expect(Buffer.compare(s.toBytes(), before)).toBe(0);
  // Still readable as before: the refusal is for writes only.
  const ro = await openVmdk(MemoryStorage.from(before, { name: 'g.vmdk', readOnly: true }));
  await ro.close();
}

describe('writable opens refuse a layout a write would damage', () => {
  it('an undamaged image opens writable and takes writes', async () => {
    expect(await writeInto(await image())).toBe('ok');
  });

  it('two grain table entries naming one grain: a write to one would change the other', async () => {
    const v = vmdkBytes(await image());
    const table = v.tableOffset(0);
    v.view.setUint32(table + 4, v.view.getUint32(table, true), true);
    await refusedUnchanged(v.bytes, /the grain at 0x[0-9a-f]+ is named by two grain table entries/, 'grain-shared');
  });

  it('a grain table entry naming a grain table: a write would rewrite the table', async () => {
    const v = vmdkBytes(await image());
    const table = v.tableOffset(0);
    v.view.setUint32(table + 4, table / 512, true);
    await refusedUnchanged(v.bytes, /the grain table at 0x[0-9a-f]+ overlaps the grain at/, 'table-overlap');
  });

  it('a grain table entry one sector into another grain: the two grains share 63.5 KiB', async () => {
    const v = vmdkBytes(await image());
    const table = v.tableOffset(0);
    v.view.setUint32(table + 4, v.view.getUint32(table, true) + 1, true);
    await refusedUnchanged(v.bytes, /the grain at 0x[0-9a-f]+ overlaps the grain at 0x[0-9a-f]+/, 'grain-overlap');
  });

  it('a redundant grain directory entry naming the embedded descriptor: a new grain would write its entry there', async () => {
    const v = vmdkBytes(await image());
    const rgd = Number(v.view.getBigUint64(48, true)) * 512;
    v.view.setUint32(rgd, 2, true);
    await refusedUnchanged(v.bytes, /redundant grain directory entry 0 points to a grain table at 0x400, inside the embedded descriptor/, 'table-overlap');
  });

  it('an embedded descriptor area longer than the file: the CID update would zero everything after it', async () => {
    const v = vmdkBytes(await image(20));
    v.view.setBigUint64(36, 0x10000n, true); // 32 MiB of descriptor area in a 1.4 MiB file
    await refusedUnchanged(v.bytes, /the embedded descriptor \(0x200\.\.0x2000200\) runs past the end of the file/);
  });

  it('a last grain cut short by the end of the file: a new grain appended there would overlap it', async () => {
    const whole = await image();
    await refusedUnchanged(whole.slice(0, whole.length - 4096), /points to a grain at 0x[0-9a-f]+ that runs past the end of the file/, 'grain-out-of-bounds');
  });
});
