import { copyFileSync, readFileSync, statSync, truncateSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { countWrites, describeQemu, loadManifest, qemuCompare, qemuImg, qemuInfo, seededBytes, slowStorage, tempDir, testImagesDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { vhdChecksum } from './checksum.js';
import { coalesceVhd } from './coalesce.js';
import { createVhd } from './create.js';
import { vhdDriver } from './driver.js';
import { createVhdFile, openVhdFile } from './node.js';
import { openVhd } from './open.js';
import { readVhdLayout } from './read-layout.js';

const tmp = tempDir('vhd-maintain-');
afterAll(() => tmp.cleanup());
let n = 0;
const path = (name: string) => join(tmp.path, `${n++}-${name}`);

function patch(file: string, at: number, bytes: number[]): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, at);
  closeSync(fd);
}

async function check(file: string, repair?: 'leaks' | 'all') {
  const storage = await FileStorage.open(file, { readOnly: !repair });
  try {
    return await checkVhd(storage, repair ? { repair } : {});
  } finally {
    await storage.close();
  }
}

async function dynamicWithData(file: string, size = 6 * 1024 * 1024): Promise<Uint8Array> {
  const d = await createVhdFile(file, { size });
  const data = seededBytes(3 * 1024 * 1024, 9);
  await d.write(1024 * 1024, data);
  const all = await d.read(0, d.size);
  await d.close();
  return all;
}

describe('checkVhd', () => {
  it('every fixture and a fresh image are clean', async () => {
    for (const e of loadManifest().images.filter((x) => x.format === 'vhd')) {
      const r = await check(join(testImagesDir, e.file));
      expect([e.file, r.corruptions, r.leaks, r.checkErrors]).toEqual([e.file, 0, 0, 0]);
    }
    const f = path('clean.vhd');
    await dynamicWithData(f);
    const fs = await FileStorage.open(f);
    const r = await vhdDriver.check!(fs);
    await fs.close();
    expect(r).toMatchObject({ format: 'vhd', corruptions: 0, leaks: 0, totalClusters: 3, allocatedClusters: 2, imageEndOffset: statSync(f).size });
  });

  it('a missing footer at the end is found and rewritten from the copy at offset 0', async () => {
    const f = path('nofooter.vhd');
    const content = await dynamicWithData(f);
    truncateSync(f, statSync(f).size - 512);
    expect((await check(f)).corruptions).toBe(1);
    const r = await check(f, 'all');
    expect(r.corruptionsFixed).toBe(1);
    expect(await check(f)).toMatchObject({ corruptions: 0, leaks: 0 });
    const d = await openVhdFile(f);
    expect(Buffer.from(await d.read(0, content.length)).equals(Buffer.from(content))).toBe(true);
    await d.close();
  });

  it('a mismatched footer copy and a bad header checksum are repaired', async () => {
    const f = path('mismatch.vhd');
    await dynamicWithData(f);
    patch(f, 0x18, [1, 2, 3, 4]); // timestamp of the copy at offset 0: its checksum no longer matches
    patch(f, 512 + 0x3c, [9]); // reserved byte of the dynamic header
    const before = await check(f);
    expect(before.corruptions).toBe(2);
    expect(
      before.problems
        .filter((p) => p.severity === 'corruption')
        .map((p) => p.code)
        .sort(),
    ).toEqual(['footer-copy-invalid', 'header-checksum']);
    expect(before.messages.join('\n')).toMatch(/footer copy at offset 0/);
    await check(f, 'all');
    expect(await check(f)).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('junk after the last block is a leak; repair truncates it', async () => {
    const f = path('junk.vhd');
    await dynamicWithData(f);
    const size = statSync(f).size;
    const fd = openSync(f, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, size);
    closeSync(fd);
    expect((await check(f)).leaks).toBe(1);
    expect((await check(f, 'leaks')).leaksFixed).toBe(1);
    expect(statSync(f).size).toBe(size);
    expect(await check(f)).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('bad BAT entries are counted, not thrown; repair clears those outside the file', async () => {
    const f = path('badbat.vhd');
    await dynamicWithData(f);
    patch(f, 1536, [0x00, 0xff, 0xff, 0x00]); // block 0 past the end
    const r = await check(f);
    expect(r.corruptions).toBe(1);
    expect(r.messages.join()).toMatch(/BAT entry 0 at 0x600 points past the end of the file/);
    expect(r.problems.filter((p) => p.severity === 'corruption').map((p) => [p.code, p.offset])).toEqual([['bat-entry-outside', 0x600]]);
    await expect(openVhdFile(f)).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
    await check(f, 'all');
    expect((await check(f)).corruptions).toBe(0);
    await (await openVhdFile(f)).close();
  });

  it("a BAT of 972,800 entries all past the end of a 3.7 MiB file: all counted, the first 1000 kept, one write per BAT sector to repair, and the counters after a repair are the repaired image's (as qemu-img check -r prints them)", async () => {
    const f = path('all-outside.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', f, '1900G']);
    const entries = readFileSync(f).readUInt32BE(512 + 28);
    const bat = Buffer.alloc(entries * 4);
    for (let i = 0; i < entries; i++) bat.writeUInt32BE(0x7fff0000, i * 4);
    const fd = openSync(f, 'r+');
    writeSync(fd, bat, 0, bat.length, Number(readFileSync(f).readBigUInt64BE(512 + 16)));
    closeSync(fd);
    const r = await check(f);
    expect([r.corruptions, r.problems.length]).toEqual([entries, 1000]);
    expect(r.messages.at(-1)).toBe(`... and ${entries - 1000} more problems of the same kinds (the first 1000 are listed)`);
    const storage = await FileStorage.open(f, { readOnly: false });
    const writes = countWrites(storage);
    const repaired = await checkVhd(storage, { repair: 'all' });
    await storage.close();
    expect([repaired.corruptionsFixed, repaired.corruptions, repaired.leaks]).toEqual([entries, 0, 0]);
    expect(writes()).toBeLessThanOrEqual(Math.ceil(entries / 128) + 4);
    expect((await check(f)).corruptions).toBe(0);
  });

  it('a header it cannot read is one corruption, not an exception', async () => {
    const f = path('badhdr.vhd');
    await dynamicWithData(f);
    patch(f, 512, [0x41]);
    const r = await check(f);
    expect(r.corruptions).toBe(1);
    expect(r.problems.map((p) => p.code)).toEqual(['unreadable']);
    expect(r.messages[0]).toMatch(/cxsparse/);
  });
});

describe('coalesceVhd', () => {
  async function chain(baseType: 'dynamic' | 'fixed') {
    const base = path(`base-${baseType}.vhd`);
    const child = path('child.vhd');
    const b = await createVhdFile(base, { type: baseType, size: 5 * 1024 * 1024 + 1536 });
    await b.write(0, seededBytes(b.size, 1));
    await b.close();
    const c = await createVhdFile(child, { parentPath: base, blockSize: 65536 });
    await c.write(100, seededBytes(70_000, 2));
    await c.write(3 * 1024 * 1024 + 7, seededBytes(1_000_000, 3));
    await c.writeZeroes(5 * 1024 * 1024, 1536);
    const view = await c.read(0, c.size);
    await c.close();
    return { base, child, view };
  }

  for (const baseType of ['dynamic', 'fixed'] as const) {
    it(`merges a child into a ${baseType} parent: the parent alone reads as the child did`, async () => {
      const { base, child, view } = await chain(baseType);
      const r = await coalesceVhd(await FileStorage.open(child), { resolver: fileResolver });
      expect(r.resumed).toBe(false);
      expect(r.sectors).toBeGreaterThan(0);
      const p = await openVhdFile(base);
      expect(Buffer.from(await p.read(0, p.size)).equals(Buffer.from(view))).toBe(true);
      await p.close();
      expect(await check(base)).toMatchObject({ corruptions: 0, leaks: 0 });
    });
  }

  it('an interrupted coalesce leaves the parent unreadable alone, the chain intact, and resumes', async () => {
    const { base, child, view } = await chain('dynamic');
    const stop = new AbortController(); // as a crash would stop the copy after 3 blocks
    await expect(coalesceVhd(await FileStorage.open(child), { resolver: fileResolver, signal: stop.signal, onProgress: (done) => done >= 3 && stop.abort() })).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED' });
    await expect(openVhdFile(base)).rejects.toMatchObject({ code: 'ERR_IMG_UNSAFE' });
    expect((await check(base)).problems.map((p) => p.code)).toContain('coalescing');
    const c = await openVhdFile(child);
    expect(Buffer.from(await c.read(0, c.size)).equals(Buffer.from(view))).toBe(true);
    await c.close();
    const r = await coalesceVhd(await FileStorage.open(child), { resolver: fileResolver });
    expect(r.resumed).toBe(true);
    const p = await openVhdFile(base);
    expect(Buffer.from(await p.read(0, p.size)).equals(Buffer.from(view))).toBe(true);
    await p.close();
  });

  it('merges the top of a 3-deep chain into its differencing parent', async () => {
    const images = new Map<string, MemoryStorage>();
    const mk = (name: string) => {
      const s = new MemoryStorage({ name });
      images.set(name, s);
      return s;
    };
    const base = await createVhd(mk('base.vhd'), { size: 1 << 20, blockSize: 4096 });
    await base.write(0, seededBytes(1 << 20, 4));
    const mid = await createVhd(mk('mid.vhd'), { parent: { disk: base, relativePath: 'base.vhd' }, blockSize: 4096 });
    await mid.write(5000, seededBytes(20_000, 5));
    const top = await createVhd(mk('top.vhd'), { parent: { disk: mid, relativePath: 'mid.vhd' }, blockSize: 8192 });
    await top.write(15_000, seededBytes(30_000, 6));
    const view = await top.read(0, 1 << 20);
    // Resolver over the live storages (the mid must be written in place).
    const resolver = async ({ name }: { name: string }) => images.get(name.replace(/^\.\//, ''))!;
    await coalesceVhd(images.get('top.vhd')!, { resolver });
    // coalesce closed them; read the results from copies.
    const copy = async ({ name }: { name: string }) => MemoryStorage.from(images.get(name.replace(/^\.\//, ''))!.toBytes(), { name });
    const again = await openVhd(await copy({ name: 'mid.vhd' }), { resolver: copy });
    expect(Buffer.from(await again.read(0, 1 << 20)).equals(Buffer.from(view))).toBe(true);
  });
});

describe('resize', () => {
  it('dynamic: grows within the BAT, grows the BAT by moving the first blocks, shrinks', async () => {
    const storage = new MemoryStorage({ name: 'r.vhd' });
    const d = await createVhd(storage, { size: 100_000, blockSize: 4096 });
    const data = seededBytes(100_000, 8);
    await d.write(0, data);
    await d.resize(100_352); // within the last block
    expect(d.size).toBe(100_352);
    await d.resize(3_000_000); // BAT: 25 -> 733 entries, 1 sector -> 6: blocks move
    expect(d.size).toBe(3_000_320);
    const again = await openVhd(MemoryStorage.from(storage.toBytes(), { name: 'r.vhd' }), { readOnly: false });
    expect(again.problems).toEqual([]);
    const got = await again.read(0, again.size);
    expect(Buffer.from(got.subarray(0, 100_000)).equals(Buffer.from(data))).toBe(true);
    expect(got.subarray(100_000).every((b) => b === 0)).toBe(true);
    await again.write(2_999_000, new Uint8Array(1000).fill(3));
    await expect(again.resize(50_000)).rejects.toThrow(/shrink/);
    await again.resize(50_000, { shrink: true });
    await again.resize(200_000);
    const after = await again.read(0, 200_000);
    // 50000 rounds up to 50176 (a sector): that much is kept.
    expect(Buffer.from(after.subarray(0, 50_176)).equals(Buffer.from(data.subarray(0, 50_176)))).toBe(true);
    expect(after.subarray(50_176).every((b) => b === 0)).toBe(true);
    expect((await checkVhd(MemoryStorage.from(storage.toBytes()))).corruptions).toBe(0);
  });

  it('differencing: our parent locators sit before the BAT, so a larger BAT moves blocks only', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b.vhd' }), { size: 1 << 20 });
    const s = new MemoryStorage({ name: 'c.vhd' });
    const c = await createVhd(s, { parent: { disk: base, relativePath: 'b.vhd', absolutePath: '/x/b.vhd' }, blockSize: 4096 });
    await c.write(0, new Uint8Array(4096).fill(2));
    const header = s.toBytes().slice(1024, 1536); // second sector of the dynamic header: the locator entries
    await c.resize(8 << 20);
    const bytes = s.toBytes();
    expect(Buffer.from(bytes.subarray(1024, 1536)).equals(Buffer.from(header))).toBe(true);
    const reopened = await openVhd(MemoryStorage.from(bytes, { name: 'c.vhd' }), { noBacking: true });
    expect((await readVhdLayout(reopened.storage)).header!.parentLocators[0]!.platformDataOffset).toBeLessThan((await readVhdLayout(reopened.storage)).header!.tableOffset);
    expect((await reopened.read(0, 1))[0]).toBe(2);
    expect((await checkVhd(MemoryStorage.from(bytes))).corruptions).toBe(0);
  });

  it('differencing: parent locators in the way of a larger BAT (Hyper-V layout) move too', async () => {
    const images = new Map<string, MemoryStorage>();
    const base = await createVhd(new MemoryStorage({ name: 'b.vhd' }), { size: 1 << 20 });
    await base.write(0, new Uint8Array(1 << 20).fill(1));
    const s = new MemoryStorage({ name: 'c.vhd' });
    const c = await createVhd(s, { parent: { disk: base, relativePath: 'b.vhd', absolutePath: '/x/b.vhd' }, blockSize: 4096, locatorPlacement: 'after-bat' });
    expect((await readVhdLayout(c.storage)).header!.parentLocators[0]!.platformDataOffset).toBeGreaterThan((await readVhdLayout(c.storage)).header!.tableOffset);
    await c.write(0, new Uint8Array(4096).fill(2));
    await c.resize(8 << 20);
    images.set('b.vhd', MemoryStorage.from(await base.read(0, 0)));
    const reopened = await openVhd(MemoryStorage.from(s.toBytes(), { name: 'c.vhd' }), { noBacking: true });
    expect(reopened.size).toBe(8 << 20);
    expect((await readVhdLayout(reopened.storage)).header!.parentLocators[0]!.platformDataOffset).toBeGreaterThan((await readVhdLayout(reopened.storage)).header!.tableOffset + 2048 * 4 - 1);
    const { parentCandidates } = await import('./chain.js');
    expect(await parentCandidates(await readVhdLayout(reopened.storage))).toContain('./b.vhd');
    expect((await checkVhd(MemoryStorage.from(s.toBytes()))).corruptions).toBe(0);
  });

  it('differencing: a parent locator in the way of a larger BAT whose data length runs far past the file moves only what the file holds (a 0xffffffff length made the resize copy 4 GiB; hostile campaign seed 1024 case 377)', async () => {
    const base = await createVhd(new MemoryStorage({ name: 'b.vhd' }), { size: 1 << 20 });
    const s = new MemoryStorage({ name: 'c.vhd' });
    const c = await createVhd(s, { parent: { disk: base, relativePath: 'b.vhd', absolutePath: '/x/b.vhd' }, blockSize: 4096, locatorPlacement: 'after-bat' });
    await c.write(0, new Uint8Array(4096).fill(2));
    await c.close();
    const bytes = s.toBytes();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const header = Number(view.getBigUint64(16)); // footer copy at 0, +16: data offset
    view.setUint32(header + 576 + 8, 0xffffffff); // locator entry 0, +8: platform data length
    view.setUint32(header + 36, vhdChecksum(bytes.subarray(header, header + 1024), 36));
    const damaged = MemoryStorage.from(bytes, { name: 'c.vhd' });
    const d = await openVhd(damaged, { readOnly: false, noBacking: true });
    await d.resize(8 << 20);
    await d.close();
    expect(damaged.toBytes().length).toBeLessThan(1 << 20);
    const reopened = await openVhd(MemoryStorage.from(damaged.toBytes(), { name: 'c.vhd' }), { noBacking: true });
    expect(reopened.size).toBe(8 << 20);
    expect((await reopened.read(0, 4096)).every((b) => b === 2)).toBe(true);
  });

  it('refuses a non-CHS-exact size for an image sized by CHS', async () => {
    const f = path('chs.vhd');
    copyFileSync(join(testImagesDir, 'vhd/dynamic-default.vhd'), f);
    const d = await openVhdFile(f, { readOnly: false });
    await expect(d.resize(d.size + 512 * 7)).rejects.toThrow(/CHS/);
    await d.close();
  });
});

describeQemu('qemu-img reads resized and coalesced images', () => {
  it('fixed and dynamic grown: qemu-img info shows the new size, compare is identical', async () => {
    for (const type of ['fixed', 'dynamic'] as const) {
      const f = path(`grow-${type}.vhd`);
      const d = await createVhdFile(f, { type, size: 1_000_000, blockSize: 4096 });
      const data = seededBytes(1_000_000, 12);
      await d.write(0, data);
      await d.resize(9_000_000);
      await d.write(8_000_000, data.subarray(0, 1000));
      const model = new Uint8Array(d.size);
      model.set(data);
      model.set(data.subarray(0, 1000), 8_000_000);
      await d.close();
      writeFileSync(`${f}.raw`, model);
      expect(qemuInfo(f, 'vpc')['virtual-size']).toBe(9_000_448);
      expect(qemuCompare(f, `${f}.raw`, 'vpc', 'raw')).toBe(true);
    }
  });

  it('a parent marked by an interrupted coalesce is refused by qemu too', async () => {
    const base = path('qbase.vhd');
    const b = await createVhdFile(base, { size: 1 << 20 });
    await b.close();
    const child = path('qchild.vhd');
    const c = await createVhdFile(child, { parentPath: base });
    await c.write(0, new Uint8Array(512).fill(1));
    await c.close();
    await expect(coalesceVhd(await FileStorage.open(child), { resolver: fileResolver, signal: AbortSignal.abort() })).rejects.toThrow();
    expect(qemuImg(['info', '-f', 'vpc', base], { allowFail: true }).status).not.toBe(0);
    expect(readFileSync(base).subarray(0, 8).toString()).toBe('coalesce');
  });
});

describe('resize while I/O is in flight', () => {
  it('overwrites and reads issued around a BAT-growing resize all land', async () => {
    // Every storage call waits a little (seeded), so that I/O interleaves with the resize.
    const storage = slowStorage(new MemoryStorage({ name: 'g.vhd' }));
    const d = await createVhd(storage, { size: 64 * 1024, blockSize: 4096 });
    const model = new Uint8Array(2 << 20);
    await d.write(0, new Uint8Array(64 * 1024).fill(1)); // every block allocated: overwrites need no allocator
    const ops: Promise<void>[] = [];
    for (let i = 15; i >= 0; i--) {
      const data = seededBytes(4096, i + 1);
      model.set(data, i * 4096);
      ops.push(d.write(i * 4096, data));
      if (i === 8) ops.push(d.resize(2 << 20));
      if (i < 4) ops.push(d.read(0, 8192).then(() => undefined));
    }
    await Promise.all(ops);
    await d.write((2 << 20) - 4096, seededBytes(4096, 99));
    model.set(seededBytes(4096, 99), (2 << 20) - 4096);
    const again = await openVhd(MemoryStorage.from(storage.toBytes()));
    expect(Buffer.from(await again.read(0, again.size)).equals(Buffer.from(model))).toBe(true);
  });
});

describe('parents in check and after coalesce', () => {
  it('check with a resolver finds a wrong parent; coalesce gives the parent a new timestamp its other children notice', async () => {
    const { coalesceVhdFile } = await import('./node.js');
    const base = path('pbase.vhd');
    const b = await createVhdFile(base, { size: 1 << 20, timestamp: new Date('2020-05-05Z') });
    await b.close();
    const c1 = path('c1.vhd');
    const c2 = path('c2.vhd');
    for (const c of [c1, c2]) {
      const d = await createVhdFile(c, { parentPath: base });
      await d.write(0, new Uint8Array(512).fill(1));
      await d.close();
    }
    const ok = await FileStorage.open(c2);
    expect(await checkVhd(ok, { resolver: fileResolver })).toMatchObject({ corruptions: 0 });
    await ok.close();
    await coalesceVhdFile(c1);
    const after = await openVhdFile(c2);
    expect(after.problems.map((p) => p.code)).toContain('parent-timestamp-mismatch');
    await after.close();
    // A different image under the parent's name: check reports it.
    const impostor = await createVhdFile(base, { size: 1 << 20 });
    await impostor.close();
    const s = await FileStorage.open(c2);
    const r = await checkVhd(s, { resolver: fileResolver });
    await s.close();
    expect(r.corruptions).toBe(1);
    expect(r.problems.filter((p) => p.severity === 'corruption').map((p) => p.code)).toEqual(['parent-unusable']);
    expect(r.messages.join()).toMatch(/unique id/);
  });
});
