/**
 * Layout validation (regions that overlap: readable, never writable) and
 * salvage of a cut last block, judged by the model of the bytes and by
 * qemu-img (convert -O raw of the same file).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { setVhdBacking } from './backing.js';
import { createVhd, createVhdImage } from './create.js';
import { openVhdFile } from './node.js';
import { openVhd } from './open.js';
import { writeVhd } from './write.js';

interface CorpusCase {
  name: string;
}
// Plain Node ESM with no types: imported by URL so that TypeScript leaves it alone.
const corpusUrl = new URL('../../../tools/make-corpus/vhd.mjs', import.meta.url).href;
const { cases, caseBytes } = (await import(corpusUrl)) as { cases: CorpusCase[]; caseBytes: (c: CorpusCase) => Uint8Array };
const corpus = (name: string) => caseBytes(cases.find((c) => c.name === name)!);

const tmp = tempDir('vhd-layout-');
afterAll(() => tmp.cleanup());
let n = 0;
const path = (name: string) => join(tmp.path, `${n++}-${name}`);

async function refusal(fn: () => Promise<unknown>): Promise<ImageError> {
  try {
    await fn();
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw e;
  }
  throw new Error('opened');
}

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, false);

describe('layout validation', () => {
  // The corpus image: header at 0x200, locator 0 at 0x600 (one sector), BAT at 0x800 (one sector), blocks 0 and 3 behind it.
  for (const [name, message] of [
    ['locator-over-bat', 'parent locator 0 [0x800, 0xa00) overlaps the BAT [0x800, 0xa00)'],
    ['locator-over-header', 'parent locator 0 [0x400, 0x600) overlaps the dynamic header [0x200, 0x600)'],
    ['locators-overlap', 'parent locator 0 [0x600, 0x800) overlaps parent locator 1 [0x600, 0x800)'],
    ['block-over-footer', 'block 3 [0x1c00, 0x2e00) overlaps the footer at the end of the file [0x2c00, 0x2e00)'],
  ] as const) {
    it(`${name}: a read-only open reads on and reports it; check counts it; writable and untrusted opens refuse it, naming both ranges`, async () => {
      const bytes = corpus(name);
      const disk = await openVhd(MemoryStorage.from(bytes, { name: 'x.vhd' }), { noBacking: true });
      expect(disk.problems.filter((p) => p.code === 'layout-overlap').map((p) => p.message)).toEqual([message]);
      await disk.read(0, disk.size);
      await disk.close();

      const report = await checkVhd(MemoryStorage.from(bytes, { name: 'x.vhd' }));
      expect(report.problems.filter((p) => p.code === 'layout-overlap')).toEqual([expect.objectContaining({ severity: 'corruption', message })]);
      expect(report.corruptions).toBeGreaterThan(0);

      const storage = MemoryStorage.from(bytes, { name: 'x.vhd' });
      const e = await refusal(() => openVhd(storage, { readOnly: false, noBacking: true }));
      expect(e.code).toBe('ERR_IMG_CORRUPT');
      expect(e.message).toBe(`vhd: x.vhd: ${message}, so a write to one would destroy the other; writable opens refuse it`);
      expect(storage.toBytes()).toEqual(bytes);
      expect((await refusal(() => openVhd(MemoryStorage.from(bytes), { untrusted: true, noBacking: true }))).code).toBe('ERR_IMG_CORRUPT');
    });
  }

  it('the locator over the BAT: rebase -u (setBacking) cannot run, and the BAT survives', async () => {
    const f = path('loc-bat.vhd');
    const bytes = corpus('locator-over-bat');
    writeFileSync(f, bytes);
    const e = await refusal(async () => {
      const d = await openVhdFile(f, { readOnly: false, noBacking: true });
      try {
        await d.setBacking('other.vhd', 'vpc');
      } finally {
        await d.close();
      }
    });
    expect(e.message).toMatch(/parent locator 0 \[0x800, 0xa00\) overlaps the BAT/);
    const after = new Uint8Array(readFileSync(f));
    expect(after).toEqual(bytes);
    // Blocks 0 and 3 are still mapped, and read as the corpus wrote them.
    expect(u32(after, 0x800)).not.toBe(0xffffffff);
    const d = await openVhdFile(f, { noBacking: true });
    expect((await d.read(0, 4096)).every((x) => x === 0x11)).toBe(true);
    expect((await d.read(3 * 4096, 4096)).every((x) => x === 0x33)).toBe(true);
    await d.close();
  });

  it('the block over the footer reads the footer bytes in its last sector (what the file holds)', async () => {
    const bytes = corpus('block-over-footer');
    const disk = await openVhd(MemoryStorage.from(bytes), { noBacking: true });
    const last = await disk.read(4 * 4096 - 512, 512);
    expect(last).toEqual(bytes.subarray(bytes.length - 512));
    await disk.close();
  });
});

describe('writers stay inside what they own (even if the layout changed behind the open)', () => {
  // These change the core's layout behind its back, so they work on the core (VhdImage) directly.
  it('a new block is never placed over metadata: the allocation is refused and the file is unchanged', async () => {
    const storage = new MemoryStorage({ name: 'w.vhd' });
    const core = await createVhdImage(storage, { size: 1 << 20, blockSize: 4096 });
    await writeVhd(core, 0, new Uint8Array(4096).fill(1));
    const s = core.state;
    s.metadata.push({ start: s.nextFree + 4096, end: s.nextFree + 4608, what: 'parent locator 3' });
    const before = storage.toBytes().slice();
    const e = await refusal(() => writeVhd(core, 8192, new Uint8Array(4096).fill(2)));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toMatch(/a new block would be written where it overlaps: block 2 and the footer behind it \[0x[0-9a-f]+, 0x[0-9a-f]+\) overlaps parent locator 3/);
    expect(storage.toBytes()).toEqual(before);
    await core.close();
  });

  it('setBacking neither zeroes nor reuses locator space that overlaps another structure', async () => {
    const ps = new MemoryStorage({ name: 'p.vhd' });
    const parent = await createVhd(ps, { size: 1 << 20, blockSize: 4096 });
    const cs = new MemoryStorage({ name: 'c.vhd' });
    const core = await createVhdImage(cs, { parent: { disk: parent, relativePath: 'p.vhd' }, blockSize: 4096 });
    const s = core.state;
    const locator = s.metadata.find((m) => m.what === 'parent locator 0')!;
    // Pretend another structure shares the locator's sector (open refuses such a file; this is the writer's own guard).
    s.metadata.push({ start: locator.start, end: locator.end, what: 'the BAT' });
    const old = cs.toBytes().slice(locator.start, locator.end);
    await setVhdBacking(core, 'other-parent.vhd', 'vpc');
    expect(cs.toBytes().slice(locator.start, locator.end)).toEqual(old);
    const placed = s.header!.parentLocators.filter((l) => l.platformDataLength > 0).map((l) => l.platformDataOffset);
    expect(placed.length).toBeGreaterThan(0);
    expect(placed.every((at) => at >= locator.end)).toBe(true);
    await core.close();
  });
});

/** A qemu-written dynamic VHD of 8 MiB (2 MiB blocks): blocks 0, 1 and 3 allocated, block 3 full of 0x33 ending with a distinct sector. */
function qemuImage(file: string): void {
  qemuImg(['create', '-f', 'vpc', file, '8M']);
  execFileSync('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 0 3M', '-c', 'write -P 0x33 6M 2M', '-c', 'write -P 0x77 8380416 8192', file]);
}

/** Byte-equal (a fast compare: these are megabytes). */
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));

function rawOf(file: string): Uint8Array {
  const raw = `${file}.raw`;
  qemuImg(['convert', '-f', 'vpc', '-O', 'raw', file, raw]);
  return new Uint8Array(readFileSync(raw));
}

async function ours(file: string): Promise<Uint8Array> {
  const d = await openVhdFile(file);
  try {
    return await d.read(0, d.size);
  } finally {
    await d.close();
  }
}

describeQemu('layout damage as qemu-img reads it', () => {
  it('the block over the footer: qemu-img convert reads the footer in its last sector, as we do', async () => {
    const f = path('block-over-footer.vhd');
    const bytes = corpus('block-over-footer');
    writeFileSync(f, bytes);
    // (Block 3's bitmap is now data, 0x33: qemu ignores a dynamic disk's bitmap, we honour it; its last sector is marked in both.)
    const [a, b] = [await ours(f), rawOf(f)];
    const last = 4 * 4096 - 512;
    expect(same(a.subarray(last, last + 512), b.subarray(last, last + 512))).toBe(true);
    expect(same(b.subarray(last, last + 512), bytes.subarray(bytes.length - 512))).toBe(true);
    expect(same(a.subarray(0, 4096), b.subarray(0, 4096))).toBe(true);
  });
});

describeQemu('salvage: a file cut inside its last block', () => {
  it('cut by one byte past the footer: read-only opens read what qemu-img reads (the lost byte as zero)', async () => {
    const f = path('cut1.vhd');
    qemuImage(f);
    const whole = rawOf(f);
    truncateSync(f, statSync(f).size - 512 - 1);
    const want = rawOf(f);
    // The model: the whole image with the one lost byte (the last of block 3) zeroed.
    const model = whole.slice();
    model[8 * 1024 * 1024 - 1] = 0;
    expect(same(want, model)).toBe(true);
    expect(same(await ours(f), want)).toBe(true);
  });

  it('cut by a few sectors (qemu refuses it; the model of the bytes judges): zeros from the cut on', async () => {
    const f = path('cut3.vhd');
    qemuImage(f);
    const whole = rawOf(f);
    const size = statSync(f).size;
    const cut = size - 512 - 3 * 512 - 100;
    truncateSync(f, cut);
    // Block 3's data ends where the footer began: guest 8 MiB <-> file size - 512.
    const lostFrom = 8 * 1024 * 1024 - (size - 512 - cut);
    const model = whole.slice();
    model.fill(0, lostFrom, 8 * 1024 * 1024);
    expect(same(await ours(f), model)).toBe(true);
  });

  it('check reports the cut block (typed, corruption) and writable opens refuse it', async () => {
    const f = path('cut-check.vhd');
    qemuImage(f);
    truncateSync(f, statSync(f).size - 512 - 2048);
    const storage = await FileStorage.open(f, { readOnly: true });
    const report = await checkVhd(storage);
    await storage.close();
    const p = report.problems.find((x) => x.code === 'block-truncated');
    expect(p).toMatchObject({ severity: 'corruption' });
    expect(p!.message).toMatch(/^block 3 \[0x[0-9a-f]+, 0x[0-9a-f]+\) runs 2048 bytes past the end of the file \(0x[0-9a-f]+\): the file was cut, and those bytes read as zeros$/);
    const before = readFileSync(f);
    const e = await refusal(() => openVhdFile(f, { readOnly: false }));
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toMatch(/runs 2048 bytes past the end of the file .*: the file was cut, and writable opens refuse a cut image$/);
    expect(same(readFileSync(f), before)).toBe(true);
  });
});
