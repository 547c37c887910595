import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRaw, MemoryStorage, sparseCopy, bytesEqual, validateExtentCover, collectExtents, diskExtents, lentStorage, mergeExtents, type Extent } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, qemuMap, tempDir } from '@img/testkit';
import { segments } from './segments.js';
import { loadL2, type MappingView, type ReaderState, type Segment } from './mapping-view.js';
import { decodeL2Entry, l1EntryOffset } from './mapping.js';
import { openQcow2, openQcow2Image } from './open.js';
import { closeQcow2 } from './io.js';
import type { Qcow2Image } from './core.js';
import { createQcow2 } from './create.js';
import { fixtureNames, imageError, loadFixture, memoryResolver, openBytes } from '../test/fixtures.js';

async function collect(gen: AsyncIterable<Segment>): Promise<Segment[] | string> {
  const out: Segment[] = [];
  try {
    for await (const s of gen) out.push({ ...s });
  } catch (e) {
    return `error: ${(e as Error).message}`;
  }
  return out;
}

/**
 * The model the walk is held to: every L2 entry decoded on its own by
 * decodeL2Entry into a segment (subclusters one by one), then merged
 * where kind matches, the runs touch and host offsets are both absent or
 * contiguous; compressed clusters never merge.
 */
async function modelSegments(state: ReaderState, view: MappingView, start: number, end: number): Promise<Segment[] | string> {
  const { clusterSize: cs, l2Coverage, l2Entries, subclusterSize: scs } = state.geom;
  const runs: Segment[] = [];
  const add = (s: Segment) => {
    const last = runs.at(-1);
    const hostsMeet = last !== undefined && (last.host === undefined ? s.host === undefined : s.host !== undefined && last.host + last.length === s.host);
    if (last && last.kind === s.kind && s.kind !== 'compressed' && last.offset + last.length === s.offset && hostsMeet) last.length += s.length;
    else runs.push(s.host === undefined ? { offset: s.offset, length: s.length, kind: s.kind } : s);
  };
  try {
    for (let pos = start; pos < end;) {
      const l1Index = Math.floor(pos / l2Coverage);
      const l1End = Math.min(end, (l1Index + 1) * l2Coverage);
      const l2Offset = l1EntryOffset(view.l1, l1Index, cs, state.file, view.l1Offset);
      if (l2Offset === 0) {
        add({ offset: pos, length: l1End - pos, kind: 'hole' });
        pos = l1End;
        continue;
      }
      const table = await loadL2(state, l2Offset, l1Index);
      for (; pos < l1End;) {
        const cStart = Math.floor(pos / cs) * cs;
        const cEnd = Math.min(l1End, cStart + cs);
        const e = decodeL2Entry(table, (cStart / cs) % l2Entries, state.entryGeom, state.file, l2Offset);
        if (e.type === 'unallocated') add({ offset: pos, length: cEnd - pos, kind: 'hole' });
        else if (e.type === 'zero') add({ offset: pos, length: cEnd - pos, kind: 'zero', host: e.host === undefined ? undefined : e.host + pos - cStart });
        else if (e.type === 'normal') add({ offset: pos, length: cEnd - pos, kind: 'data', host: e.host + pos - cStart });
        else if (e.type === 'compressed') runs.push({ offset: pos, length: cEnd - pos, kind: 'compressed', host: e.host, csize: e.size, clusterOffset: cStart });
        else {
          for (let p = pos; p < cEnd;) {
            const sc = Math.floor((p - cStart) / scs);
            const scEnd = Math.min(cEnd, cStart + (sc + 1) * scs);
            const kind = (e.alloc >>> sc) & 1 ? 'data' : (e.zero >>> sc) & 1 ? 'zero' : 'hole';
            add({ offset: p, length: scEnd - p, kind, host: e.host === undefined ? undefined : e.host + p - cStart });
            p = scEnd;
          }
        }
        pos = cEnd;
      }
    }
  } catch (e) {
    return `error: ${(e as Error).message}`;
  }
  return runs;
}

/** The walk over `[start, end)` says exactly what the model says (or fails the same way). */
async function expectModelWalk(core: Qcow2Image, start: number, end: number): Promise<void> {
  const walked = await collect(segments(core, core.active, start, end));
  expect(walked).toEqual(await modelSegments(core, core.active, start, end));
}

describe('segments', () => {
  it.each(fixtureNames())('walks %s as the per-entry model does (whole disk and unaligned windows)', async (name) => {
    let core: Qcow2Image;
    try {
      core = await openQcow2Image(MemoryStorage.from(loadFixture(name), { name, readOnly: true }), { resolver: memoryResolver });
    } catch {
      return; // fixtures that refuse to open are the open gate's business
    }
    const size = core.active.size;
    try {
      await expectModelWalk(core, 0, size);
      let seed = name.length * 7919;
      for (let i = 0; i < 8; i++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const a = seed % size;
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const b = a + (seed % (size - a + 1));
        await expectModelWalk(core, a, b);
      }
    } finally {
      await closeQcow2(core);
    }
  });

  it.each(fixtureNames())('hands the extents of %s over in arrays that make the same merged cover as extents()', async (name) => {
    let disk: Awaited<ReturnType<typeof openQcow2>>;
    try {
      disk = await openQcow2(MemoryStorage.from(loadFixture(name), { name, readOnly: true }), { resolver: memoryResolver });
    } catch {
      return; // fixtures that refuse to open are the open gate's business
    }
    try {
      for (const options of [{}, { hostOffsets: true, fileHoles: true }, { hostOffsets: true, topOnly: true }]) {
        const arrays: Extent[][] = [];
        for await (const a of disk.extentBatches(options)) arrays.push(a.map((e) => ({ ...e })));
        expect(arrays.every((a) => a.length > 0)).toBe(true);
        const flat = arrays.flat();
        expect(validateExtentCover(flat, 0, disk.size)).toEqual([]);
        const single: Extent[] = [];
        for await (const e of disk.extents(options)) single.push({ ...e });
        expect(single).toEqual(flat);
      }
    } finally {
      await disk.close();
    }
  });

  it('hands a backing file\u2019s many extents under one hole of the top over in bounded arrays', async () => {
    const base = new MemoryStorage({ name: 'base.qcow2' });
    const b = await createQcow2(base, { size: 4 << 20, clusterSize: 512 });
    // Every other 512-byte cluster: 4096 runs of data and as many holes.
    for (let c = 0; c < 8192; c += 2) await b.write(c * 512, new Uint8Array(512).fill(1));
    await b.close();
    const top = new MemoryStorage({ name: 'top.qcow2' });
    const baseRead = MemoryStorage.from(base.toBytes(), { name: 'base.qcow2', readOnly: true });
    const t = await createQcow2(top, { size: 4 << 20, backingFile: 'base.qcow2', backingFormat: 'qcow2', noBacking: true });
    await t.close();
    const disk = await openQcow2(MemoryStorage.from(top.toBytes(), { name: 'top.qcow2', readOnly: true }), { resolver: async () => baseRead });
    try {
      const sizes: number[] = [];
      for await (const a of disk.extentBatches()) sizes.push(a.length);
      expect(sizes.reduce((x, y) => x + y, 0)).toBe(8192);
      expect(Math.max(...sizes)).toBeLessThanOrEqual(1025);
    } finally {
      await disk.close();
    }
  });

  it('hands a run of data clusters over a file of thousands of holes over in bounded arrays, split as the holes lie', async () => {
    const page = 64 * 1024; // MemoryStorage's page: its holes are whole pages
    const size = 256 * 1024 * 1024;
    const storage = new MemoryStorage({ name: 'holes.qcow2' });
    const w = await createQcow2(lentStorage(storage), { size });
    const chunk = new Uint8Array(16 * 1024 * 1024).fill(0x5a);
    for (let at = 0; at < size; at += chunk.length) await w.write(at, chunk);
    const stored = await diskExtents(w, { hostOffsets: true });
    await w.close();
    // One run of data clusters, one after another in the file.
    expect(stored).toHaveLength(1);
    const host = stored[0]!.hostOffset!;
    // Every other page of the data punched out of the file: 2048 holes under one run.
    for (let p = 0; p < size; p += 2 * page) expect(await storage.punchHole(host + p, page)).toBe(true);
    const disk = await openQcow2(storage);
    try {
      const sizes: number[] = [];
      const flat: Extent[] = [];
      for await (const a of disk.extentBatches({ fileHoles: true })) {
        sizes.push(a.length);
        for (const e of a) flat.push({ offset: e.offset, length: e.length, kind: e.kind });
      }
      const expected: Extent[] = [];
      for (let p = 0; p < size; p += page) expected.push({ offset: p, length: page, kind: (p / page) % 2 === 0 ? 'zero' : 'data' });
      expect(await collectExtents(mergeExtents(flat))).toEqual(expected);
      // A slice of 64 MiB of the run at a time (1024 pieces, put out once 1024 are waiting), not the 4096 pieces of the
      // whole run in one array.
      expect(Math.max(...sizes)).toBeLessThanOrEqual(2048);
    } finally {
      await disk.close();
    }
  });

  it('merges host-contiguous data clusters, splits fragmented ones, keeps zero and compressed clusters apart', async () => {
    const cs = 65536;
    const storage = new MemoryStorage();
    const disk = await createQcow2(storage, { size: 32 * cs });
    try {
      const fill = (v: number, n = cs) => new Uint8Array(n).fill(v);
      // Clusters 4..7 written in reverse: four host clusters, none after the one before.
      for (const c of [7, 6, 5, 4]) await disk.write(c * cs, fill(c));
      // Clusters 10..13 in order: one host run.
      await disk.write(10 * cs, fill(1, 4 * cs));
      await disk.writeZeroes(16 * cs, 2 * cs, { mayUnmap: false });
      await disk.writeCompressed(20 * cs, fill(9, 2 * cs));
      await disk.flush();
      const core = await openQcow2Image(MemoryStorage.from(storage.toBytes()));
      const segs = await collect(segments(core, core.active, 0, 24 * cs));
      expect(segs).toEqual(await modelSegments(core, core.active, 0, 24 * cs));
      await closeQcow2(core);
      const data = (segs as Segment[]).filter((s) => s.kind === 'data');
      expect(data.map((s) => [s.offset / cs, s.length / cs])).toEqual([
        [4, 1],
        [5, 1],
        [6, 1],
        [7, 1],
        [10, 4],
      ]);
      for (let i = 1; i < 4; i++) expect(data[i]!.host! + cs).toBe(data[i - 1]!.host);
      expect((segs as Segment[]).filter((s) => s.kind === 'compressed').map((s) => s.offset / cs)).toEqual([20, 21]);
      expect((segs as Segment[]).some((s) => s.kind === 'zero' && s.offset === 16 * cs && s.length === 2 * cs)).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it.each([512, 65536, 2 * 1024 * 1024])('joins entries that name the next clusters of the file as the model does, across carries and up to the largest offset (%i-byte clusters)', async (cs) => {
    const storage = new MemoryStorage();
    const created = await createQcow2(storage, { size: (cs / 8) * cs, clusterSize: cs });
    await created.write(0, new Uint8Array(512).fill(1));
    await created.close();
    const bytes = storage.toBytes();
    const probe = await openQcow2Image(MemoryStorage.from(bytes.slice()));
    const l2 = Number(new DataView(probe.active.l1.buffer, probe.active.l1.byteOffset).getBigUint64(0) & 0x00ff_ffff_ffff_fe00n);
    await closeQcow2(probe);
    const max = 2 ** 53 - 8 * 1024 * 1024;
    // Offsets just below where a carry crosses a byte (or several), and below the largest offset a reader takes.
    const bases = [cs, 2 ** 16 - 2 * cs, 2 ** 24 - 3 * cs, 2 ** 32 - 2 * cs, 2 ** 40 - cs, 2 ** 48 - 2 * cs, max - 3 * cs].map((b) => Math.max(cs, Math.floor(b / cs) * cs));
    let seed = cs;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return Math.floor(seed / 65536) % n; // the high bits: the low ones of this generator repeat every few steps
    };
    for (let round = 0; round < 12; round++) {
      const image = bytes.slice();
      const dv = new DataView(image.buffer, image.byteOffset);
      const entries = Math.min(cs / 8, 600);
      let host = bases[rand(bases.length)]!;
      let flags = 0x8000_0000_0000_0000n;
      for (let i = 0; i < entries; i++) {
        const step = rand(32);
        // Mostly the next cluster; now and then a gap, a step back, no COPIED flag, the zero flag, a reserved bit, a hole, a compressed flag, a new base, a jump.
        if (step === 0) host += 2 * cs;
        else if (step === 1) host = Math.max(cs, host - cs);
        else if (step === 2) flags ^= 0x8000_0000_0000_0000n;
        else if (step === 3) host = bases[rand(bases.length)]!;
        // The next cluster but 4 GiB or 256 TiB on: every 16-bit half but one continues the run.
        else if (step === 8) host += cs + 2 ** 32;
        else if (step === 9 && host + cs + 2 ** 48 < max) host += cs + 2 ** 48;
        else if (i > 0) host += cs;
        let value = flags | BigInt(Math.min(host, 2 ** 56 - cs));
        if (step === 4) value |= 1n;
        if (step === 5 && round % 4 === 0) value |= 1n << 56n;
        if (step === 6) value = 0n;
        // A compressed descriptor whose bytes below the top one continue the run: not a data cluster at all.
        if (step === 7) value |= 1n << 62n;
        dv.setBigUint64(l2 + i * 8, value);
      }
      const core = await openQcow2Image(MemoryStorage.from(image));
      try {
        await expectModelWalk(core, 0, core.active.size);
        await expectModelWalk(core, cs * 3 + 512, Math.min(core.active.size, cs * 300 + 1024));
      } finally {
        await closeQcow2(core);
      }
    }
  });

  it('refuses a corrupt L2 entry with the codec\u2019s error', async () => {
    const bytes = loadFixture('v3-64k.qcow2');
    const core = await openQcow2Image(MemoryStorage.from(bytes.slice()));
    const view = core.active;
    // Find the first L2 table and an allocated entry in it, then misalign that entry's offset.
    let l2 = 0;
    for (let i = 0; i * 8 < view.l1.length && !l2; i++) l2 = Number(new DataView(view.l1.buffer, view.l1.byteOffset + i * 8).getBigUint64(0) & 0x00ff_ffff_ffff_fe00n);
    await closeQcow2(core);
    expect(l2).toBeGreaterThan(0);
    let entry = -1;
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    for (let i = 0; i < 8192 && entry < 0; i++) {
      if (dv.getBigUint64(l2 + i * 8) & 0x00ff_ffff_ffff_fe00n) entry = i;
    }
    expect(entry).toBeGreaterThanOrEqual(0);
    dv.setBigUint64(l2 + entry * 8, 2n ** 63n + 65536n + 512n);
    const bad = await openBytes(bytes);
    try {
      const badCore = await openQcow2Image(MemoryStorage.from(bytes));
      const walked = await collect(segments(badCore, badCore.active, 0, bad.size));
      expect(walked).toMatch(/unaligned cluster offset/);
      expect(walked).toEqual(await modelSegments(badCore, badCore.active, 0, bad.size));
      await closeQcow2(badCore);
      const e = await imageError(
        (async () => {
          for await (const _ of bad.extents({ hostOffsets: true }));
        })(),
      );
      expect(e.code).toBe('ERR_IMG_CORRUPT');
    } finally {
      await bad.close();
    }
  });
});

describeQemu('qcow2 host runs against qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-host-runs-'));
  });
  afterAll(() => cleanup());

  it('reports the host offsets qemu-img map reports, and a copy to raw equals qemu-img convert (fragmented, zero, compressed, backing)', async () => {
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '8M']);
    qemuIo(base, 'qcow2', ['write -P 0x11 0 1M', 'write -P 0x22 3M 512k']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '8M']);
    // Reverse order (host clusters run backwards), a zero range over backing data, compressed clusters, partial clusters.
    qemuIo(top, 'qcow2', ['write -P 0x33 1536k 64k', 'write -P 0x34 1472k 64k', 'write -P 0x35 1408k 64k', 'write -z 3M 128k', 'write -c -P 0x44 5M 128k', 'write -P 0x55 6M 4k', 'write -P 0 7M 64k']);
    const disk = await openQcow2(await FileStorage.open(top), { resolver: fileResolver });
    try {
      const ours: Extent[] = [];
      for await (const e of disk.extents({ hostOffsets: true })) ours.push(e);
      const theirs = qemuMap(top);
      const oursData = ours.filter((e) => e.kind === 'data' && e.hostOffset !== undefined && (e.depth ?? 0) === 0).map((e) => [e.offset, e.length, e.hostOffset]);
      const theirsData = theirs
        .filter((e) => e.data && e.depth === 0 && e.offset !== undefined)
        .map((e) => [e.start, e.length, e.offset!] as [number, number, number])
        // qemu-img map also splits where the file below has a hole (the unwritten part of a copied-on-write cluster); join those.
        .reduce<[number, number, number][]>((acc, r) => {
          const last = acc.at(-1);
          if (last && last[0] + last[1] === r[0] && last[2] + last[1] === r[2]) last[1] += r[1];
          else acc.push([...r]);
          return acc;
        }, []);
      expect(oursData).toEqual(theirsData);
      expect(oursData.length).toBeGreaterThanOrEqual(4); // the three reversed clusters are three runs
      // In arrays: the backing file's extents inside the top's holes merge across the arrays as extents() merges them.
      const arrays: Extent[][] = [];
      for await (const a of disk.extentBatches({ hostOffsets: true })) arrays.push([...a]);
      expect(arrays.flat()).toEqual(ours);
      expect(validateExtentCover(ours, 0, disk.size)).toEqual([]);

      const out = join(dir, 'ours.raw');
      const dst = await createRaw(await FileStorage.create(out), { size: disk.size });
      await sparseCopy(disk, dst);
      await dst.close();
      const ref = join(dir, 'ref.raw');
      qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', top, ref]);
      expect(bytesEqual(new Uint8Array(readFileSync(out)), new Uint8Array(readFileSync(ref)))).toBe(true);
    } finally {
      await disk.close();
    }
  });
});
