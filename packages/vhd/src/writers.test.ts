/**
 * Pristine VHDs laid out as Hyper-V, Windows 10, Virtual PC and vhd-util
 * write them (tools/make-corpus/vhd-writers.mjs builds them from each
 * writer's documented shape): check finds them clean (alignment padding,
 * reserved locator space, blktap's batmap are not leaks), a leak repair
 * leaves them byte for byte, they read as their writer meant, and space a
 * writer really leaked is still found.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, tempDir, loadVhdWriters } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { parseDynamicHeader } from './dynamic-header.js';
import { openVhd } from './open.js';

const { writers, vhdImage } = await loadVhdWriters();

function u32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0, false);
}

describe('pristine images of real writers', () => {
  for (const [name, make] of Object.entries(writers)) {
    it(`${name}: check is clean, a leak repair changes nothing, it reads as written`, async () => {
      const built = make();
      const storage = MemoryStorage.from(built.bytes, { name: `${name}.vhd` });
      const r = await checkVhd(storage);
      expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
      expect(r.imageEndOffset).toBe(built.bytes.length);
      const repaired = await checkVhd(storage, { repair: 'leaks' });
      expect([repaired.leaks, repaired.leaksFixed]).toEqual([0, 0]);
      expect(Buffer.from(storage.toBytes()).equals(Buffer.from(built.bytes))).toBe(true);
      const disk = await openVhd(storage, { noBacking: true, untrusted: true });
      try {
        expect(disk.problems).toEqual([]);
        const data = await disk.read(0, disk.size);
        expect(Buffer.from(data).equals(Buffer.from(built.content.subarray(0, disk.size)))).toBe(true);
      } finally {
        await disk.close();
      }
    });
  }

  it('a block written by us into a Hyper-V layout goes behind its blocks and the image checks clean', async () => {
    const built = writers['hyperv-dynamic']!();
    const storage = MemoryStorage.from(built.bytes, { name: 'hv.vhd' });
    const disk = await openVhd(storage, { readOnly: false });
    await disk.write(1 * 2 * 1024 * 1024 + 4096, new Uint8Array(4096).fill(0x5a));
    await disk.close(); // closes the storage too: check a copy of its bytes
    const after = MemoryStorage.from(storage.toBytes());
    expect(await after.size()).toBe(built.bytes.length + 512 + 2 * 1024 * 1024);
    const r = await checkVhd(after);
    expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
    const again = await openVhd(after);
    expect((await again.read(2 * 1024 * 1024, 8192)).subarray(4096)).toEqual(new Uint8Array(4096).fill(0x5a));
    expect(await again.read(0, 4096)).toEqual(built.content.subarray(0, 4096));
  });

  it('reserved locator space at the end of the file survives a write: new blocks go behind it', async () => {
    const built = writers['reserved-locators-empty']!();
    const storage = MemoryStorage.from(built.bytes, { name: 'r.vhd' });
    const reservedEnd = built.bytes.length - 512;
    const disk = await openVhd(storage, { readOnly: false });
    await disk.write(0, new Uint8Array(512).fill(1));
    await disk.close();
    const bat = new DataView(storage.toBytes().buffer).getUint32(built.tableOffset!, false);
    expect(bat * 512).toBe(reservedEnd);
    const r = await checkVhd(MemoryStorage.from(storage.toBytes()));
    expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
  });
});

describe('what a writer really leaked is still a leak', () => {
  it('an unreferenced block between aligned blocks is a leak (the repair cannot move it, so it stays one)', async () => {
    const built = writers['hyperv-dynamic']!();
    const b = built.bytes.slice();
    u32(b, built.tableOffset!, 0xffffffff); // block 0 at 2 MiB no longer referenced
    const r = await checkVhd(MemoryStorage.from(b));
    expect(r.problems.filter((p) => p.severity === 'leak').map((p) => [p.code, p.offset])).toEqual([['unreferenced-space', 0x800]]);
  });

  it('an unreferenced last block is junk: repair cuts it, keeps the padding the writer left, and re-checks clean', async () => {
    const built = writers['hyperv-dynamic']!();
    const b = built.bytes.slice();
    u32(b, built.tableOffset! + 2 * 4, 0xffffffff); // block 2 (the last one in the file)
    const storage = MemoryStorage.from(b);
    const r = await checkVhd(storage);
    expect(r.problems.map((p) => p.code)).toEqual(['junk-after-end']);
    const block0End = built.blockAt!.get(0)! + built.bitmapBytes! + 2 * 1024 * 1024;
    expect(r.imageEndOffset).toBe(block0End + 512);
    const fixed = await checkVhd(storage, { repair: 'leaks' });
    expect(fixed.leaksFixed).toBe(1);
    expect(await storage.size()).toBe(block0End + 512);
    const again = await checkVhd(storage);
    expect([again.corruptions, again.leaks]).toEqual([0, 0]);
  });

  it('a gap between unaligned blocks is a leak', async () => {
    const built = vhdImage({ size: 4 * 4096, blockSize: 4096, creator: 'qem2', blocks: [0, 1, 2] });
    const b = built.bytes.slice();
    u32(b, built.tableOffset! + 4, 0xffffffff);
    const r = await checkVhd(MemoryStorage.from(b));
    expect(r.problems.filter((p) => p.severity !== 'info').map((p) => p.code)).toEqual(['unreferenced-space']);
  });
});

describeQemu('images qemu-img writes are clean and a leak repair leaves them alone', () => {
  const tmp = tempDir('vhd-qemu-layout-');
  afterAll(() => tmp.cleanup());
  it('dynamic and fixed, with and without force_size, after qemu-io writes', async () => {
    let n = 0;
    for (const options of ['subformat=dynamic', 'subformat=dynamic,force_size=on', 'subformat=fixed']) {
      const file = join(tmp.path, `q${n++}.vhd`);
      qemuImg(['create', '-q', '-f', 'vpc', '-o', options, file, '7M']);
      qemuIo(file, 'vpc', ['write -P 0x61 0 65536', 'write -P 0x62 3M 1M']);
      const before = readFileSync(file);
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        const r = await checkVhd(storage, { repair: 'leaks' });
        expect([options, r.corruptions, r.leaks, r.leaksFixed, r.checkErrors], r.messages.join('; ')).toEqual([options, 0, 0, 0, 0]);
      } finally {
        await storage.close();
      }
      expect(readFileSync(file).equals(before)).toBe(true);
    }
  });
});

describe('maintenance keeps what a writer reserved', () => {
  it('growing the BAT over reserved locator space moves the reservation; over a batmap drops it; both check clean and read the same', async () => {
    for (const name of ['reserved-locators-dynamic', 'vhdutil-dynamic', 'hyperv-dynamic']) {
      const built = writers[name]!();
      const storage = MemoryStorage.from(built.bytes, { name: `${name}.vhd` });
      const disk = await openVhd(storage, { readOnly: false });
      const newSize = 600 * 1024 * 1024; // 300 BAT entries: the BAT grows past its first sector
      await disk.resize!(newSize);
      await disk.close();
      const after = MemoryStorage.from(storage.toBytes());
      const r = await checkVhd(after);
      expect([name, r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([name, 0, 0, 0]);
      const again = await openVhd(after);
      expect(again.size).toBe(newSize);
      const head = await again.read(0, built.size);
      expect(Buffer.from(head).equals(Buffer.from(built.content))).toBe(true);
      const h = parseDynamicHeader(after.toBytes().subarray(512, 1536)); // every fixture's header is at 0x200
      const batEnd = h.tableOffset + h.maxTableEntries * 4;
      for (const l of h.parentLocators) if (l.platformDataSpace) expect(l.platformDataOffset >= batEnd || l.platformDataOffset + 512 <= h.tableOffset).toBe(true);
      await again.close();
    }
  });

  it('makeEmpty does not cut reserved locator space', async () => {
    const built = writers['reserved-locators-empty']!();
    const storage = MemoryStorage.from(built.bytes);
    const disk = await openVhd(storage, { readOnly: false });
    await disk.write(0, new Uint8Array(4096).fill(7));
    await disk.makeEmpty!();
    await disk.close();
    expect(storage.toBytes().length).toBe(built.bytes.length);
    const r = await checkVhd(MemoryStorage.from(storage.toBytes()));
    expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
  });
});
