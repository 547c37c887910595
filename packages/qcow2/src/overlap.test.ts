/**
 * The overlap check and the allocator that trusts nothing (issue 13, points
 * 1 and 2): images built here whose L2 entries point guest data at metadata,
 * or whose refcounts lie; judged by the bytes of the file, the corrupt bit,
 * `qemu-img check` and a model of the guest bytes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, readU32Be, readU64Be, writeU32Be, writeU64Be, type Storage } from '@img/block';
import { describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import type { Qcow2Disk } from './image.js';
import { imageError } from '../test/fixtures.js';
import { OverlapMap, OVERLAP } from './overlap.js';

/**
 * A writable open of these images is refused by the open gate (open-gate.ts)
 * before anything is written; these tests judge the check behind it, the
 * one every write passes, so they open past the gate (as check -r all does)
 * where it refuses, and count that it did.
 */
let gateRefusals = 0;
async function openPastGate(storage: Storage): Promise<Qcow2Disk> {
  // The gate is tried on a copy: a refused open closes the storage it was given.
  const copy = MemoryStorage.from(await storage.read(0, await storage.size()), { name: storage.name });
  try {
    await (await openQcow2(copy, { readOnly: false })).close();
  } catch (e) {
    if (!ImageError.isInstance(e) || e.code !== 'ERR_IMG_CORRUPT') throw e;
    gateRefusals++;
    return openQcow2(storage, { readOnly: false, checkOnly: true });
  }
  return openQcow2(storage, { readOnly: false });
}

const CS = 4096;
const COVER = (CS / 8) * CS; // guest bytes one L2 table maps
const SIZE = 8 << 20;

/** Offset bits of the 64-bit L1/L2/refcount table entry at `at`. */
const entryAt = (b: Uint8Array, at: number) => (readU32Be(b, at) & 0xffffff) * 2 ** 32 + ((readU32Be(b, at + 4) & 0xfffffe00) >>> 0);

/** Writes an L1/L2 entry with the COPIED flag (bit 63) set, as for any cluster of refcount 1. */
function setCopied(b: Uint8Array, at: number, offset: number): void {
  writeU32Be(b, at, (0x80000000 | Math.floor(offset / 2 ** 32)) >>> 0);
  writeU32Be(b, at + 4, offset >>> 0);
}

interface Layout {
  bytes: Uint8Array;
  l1: number;
  refcountTable: number;
  refcountBlock: number;
  l2: number;
  l2b: number;
  /** Guest model after the writes the builder made. */
  model: Uint8Array;
}

/** A v3 image with 4 KiB clusters, data in guest clusters 0 and COVER (two L2 tables). */
async function build(): Promise<Layout> {
  const storage = new MemoryStorage({ name: 'o.qcow2' });
  const d = await createQcow2(storage, { size: SIZE, clusterSize: CS });
  const model = new Uint8Array(SIZE);
  for (const at of [0, COVER]) {
    const data = seededBytes(CS, at + 1);
    await d.write(at, data);
    model.set(data, at);
  }
  await d.close();
  const bytes = storage.toBytes().slice();
  const l1 = readU64Be(bytes, 40);
  const refcountTable = readU64Be(bytes, 48);
  return { bytes, l1, refcountTable, refcountBlock: entryAt(bytes, refcountTable), l2: entryAt(bytes, l1), l2b: entryAt(bytes, l1 + 8), model };
}

const { path: dir, cleanup } = tempDir('img-overlap-');
afterAll(cleanup);
let n = 0;
function toFile(bytes: Uint8Array): string {
  const file = join(dir, `i${n++}.qcow2`);
  writeFileSync(file, bytes);
  return file;
}

/** qemu-img check's counts (exit 0, 2 or 3 are all answers). */
function qemuCheck(bytes: Uint8Array): { corruptions: number; leaks: number } {
  const r = qemuImg(['check', '--output=json', '-f', 'qcow2', toFile(bytes)], { allowFail: true });
  const j = JSON.parse(r.stdout) as { corruptions?: number; leaks?: number };
  return { corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0 };
}

describe('OverlapMap', () => {
  it('finds the structure a range hits, ignores allowed kinds, and counts L2 references', () => {
    const m = new OverlapMap(CS);
    m.add(OVERLAP.ACTIVE_L1, 3 * CS, 2 * CS);
    m.add(OVERLAP.L2, 8 * CS, CS);
    m.add(OVERLAP.L2, 8 * CS, CS); // shared with a snapshot
    expect(m.find(0, 3 * CS)).toBeUndefined();
    expect(m.find(5 * CS - 1, 1)).toMatchObject({ kind: OVERLAP.ACTIVE_L1, offset: 3 * CS, length: 2 * CS, name: 'active L1 table' });
    expect(m.find(3 * CS + 8, 8, OVERLAP.ACTIVE_L1)).toBeUndefined();
    m.remove(OVERLAP.L2, 8 * CS, CS);
    expect(m.find(8 * CS, 1)?.name).toBe('L2 table');
    m.remove(OVERLAP.L2, 8 * CS, CS);
    expect(m.find(8 * CS, 1)).toBeUndefined();
    expect(() => m.check('x.qcow2', 4 * CS + 512, 1024)).toThrow(/^qcow2: x\.qcow2: preventing invalid write on metadata: the write of 1024 bytes at 0x4200\.\.0x45ff overlaps the active L1 table at 0x3000\.\.0x4fff$/);
  });
});

describeQemu('overlap check on guest writes', () => {
  const targets = [
    { name: 'active L1 table', at: (l: Layout) => l.l1 },
    { name: 'refcount table', at: (l: Layout) => l.refcountTable },
    { name: 'refcount block', at: (l: Layout) => l.refcountBlock },
    { name: 'L2 table', at: (l: Layout) => l.l2b },
  ];
  for (const t of targets) {
    it(`an L2 entry pointing a data cluster at the ${t.name}: the write is refused, the metadata unchanged, the image marked corrupt`, async () => {
      const l = await build();
      const target = t.at(l);
      // Guest cluster 1 (L2 table 0, entry 1) -> the metadata cluster, COPIED set as for any cluster of refcount 1.
      setCopied(l.bytes, l.l2 + 8, target);
      const before = l.bytes.slice();
      const storage = MemoryStorage.from(l.bytes.slice(), { name: 'o.qcow2' });
      const d = await openPastGate(storage);
      for (const write of [() => d.write(CS, seededBytes(CS, 9)), () => d.write(CS + 100, seededBytes(200, 9))]) {
        const e = await imageError(write());
        expect(e.code).toBe('ERR_IMG_CORRUPT');
        expect(e.message).toMatch(new RegExp(`preventing invalid write on metadata: .* overlaps the (${t.name}|marked corrupt)|marked corrupt by an earlier write`));
      }
      // Later writes anywhere are refused too.
      expect((await imageError(d.write(2 * COVER, seededBytes(CS, 3)))).code).toBe('ERR_IMG_CORRUPT');
      await d.close();
      const after = storage.toBytes();
      // Nothing changed but the header's incompatible features (bit 1: corrupt).
      expect(Buffer.from(after.subarray(CS)).equals(Buffer.from(before.subarray(CS)))).toBe(true);
      expect(readU32Be(after, 76) & 2).toBe(2);
      expect(Buffer.from(after.subarray(0, 72)).equals(Buffer.from(before.subarray(0, 72)))).toBe(true);
      // qemu-img agrees the image is corrupt, and can no longer be opened for writing.
      expect(qemuCheck(after).corruptions).toBeGreaterThan(0);
      const file = toFile(after);
      expect(qemuImg(['info', '-f', 'qcow2', file]).stdout).toMatch(/corrupt: true/);
      // Reads still work and show the old guest bytes elsewhere.
      const ro = await openQcow2(MemoryStorage.from(after, { name: 'o.qcow2', readOnly: true }), { readOnly: true });
      expect(Buffer.from(await ro.read(0, CS)).equals(Buffer.from(l.model.subarray(0, CS)))).toBe(true);
      await ro.close();
    });
  }

  it('the message names both ranges as qemu does', async () => {
    const l = await build();
    setCopied(l.bytes, l.l2 + 8, l.l1);
    const d = await openPastGate(MemoryStorage.from(l.bytes, { name: 'o.qcow2' }));
    const e = await imageError(d.write(CS, seededBytes(CS, 9)));
    const hex = (v: number) => `0x${v.toString(16)}`;
    expect(e.message).toBe(`qcow2: o.qcow2: preventing invalid write on metadata: the write of ${CS} bytes at ${hex(l.l1)}..${hex(l.l1 + CS - 1)} overlaps the active L1 table at ${hex(l.l1)}..${hex(l.l1 + CS - 1)}`);
    await d.close();
  });

  it('an L2 entry pointing at a snapshot L1 table (map rebuilt after snapshot create): refused, the snapshot intact', async () => {
    const l = await build();
    const storage = MemoryStorage.from(l.bytes, { name: 'o.qcow2' });
    let d = await openPastGate(storage);
    await d.createSnapshot('s1');
    // The map knows the new snapshot L1 in the same session: an allocating write never lands there.
    await d.write(4 * CS, seededBytes(CS, 5));
    await d.close();
    const bytes = storage.toBytes().slice();
    const snapL1 = readU64Be(bytes, readU64Be(bytes, 64)); // snapshots_offset at 64; l1_table_offset at 0 of the entry
    const l2 = entryAt(bytes, readU64Be(bytes, 40));
    setCopied(bytes, l2 + 8, snapL1);
    const before = bytes.slice();
    const s2 = MemoryStorage.from(bytes, { name: 'o.qcow2' });
    d = await openPastGate(s2);
    const e = await imageError(d.write(CS, seededBytes(CS, 9)));
    expect(e.message).toMatch(/overlaps the snapshot L1 table/);
    await d.close();
    const after = s2.toBytes();
    expect(Buffer.from(after.subarray(snapL1, snapL1 + CS)).equals(Buffer.from(before.subarray(snapL1, snapL1 + CS)))).toBe(true);
    expect(readU32Be(after, 76) & 2).toBe(2);
    expect(qemuCheck(after).corruptions).toBeGreaterThan(0);
  });

  it('an L1 entry pointing at the refcount table as its L2 table: the L2 update is refused', async () => {
    const l = await build();
    setCopied(l.bytes, l.l1 + 8, l.refcountTable);
    const before = l.bytes.slice();
    const storage = MemoryStorage.from(l.bytes.slice(), { name: 'o.qcow2' });
    const d = await openPastGate(storage);
    const e = await imageError(d.write(COVER + 5 * CS, seededBytes(CS, 4)));
    expect(e.message).toMatch(/overlaps the refcount table/);
    await d.close();
    const after = storage.toBytes();
    expect(Buffer.from(after.subarray(l.refcountTable, l.refcountTable + CS)).equals(Buffer.from(before.subarray(l.refcountTable, l.refcountTable + CS)))).toBe(true);
    expect(readU32Be(after, 76) & 2).toBe(2);
  });
});

describeQemu('an allocator that trusts nothing', () => {
  const cases = [
    { name: 'header cluster refcount 0', lie: (l: Layout) => l.bytes.set([0, 0], l.refcountBlock) },
    { name: 'a missing refcount block', lie: (l: Layout) => writeU64Be(l.bytes, l.refcountTable, 0) },
    { name: 'a refcount table listing itself as a refcount block', lie: (l: Layout) => writeU64Be(l.bytes, l.refcountTable, l.refcountTable) },
  ];
  for (const c of cases) {
    it(`${c.name}: allocating writes never land on metadata, qemu-img check finds nothing new, the guest bytes match the model`, async () => {
      const l = await build();
      c.lie(l);
      const metadata = new Set([0, l.l1, l.refcountTable, l.refcountBlock, l.l2, l.l2b]);
      const dataBefore = new Set<number>();
      const ro = await openQcow2(MemoryStorage.from(l.bytes.slice(), { name: 'o.qcow2', readOnly: true }), { readOnly: true });
      for await (const e of ro.extents({ hostOffsets: true })) if (e.kind === 'data' && e.hostOffset !== undefined) for (let o = 0; o < e.length; o += CS) dataBefore.add(e.hostOffset + o);
      await ro.close();
      const checkedBefore = qemuCheck(l.bytes);

      const storage = MemoryStorage.from(l.bytes.slice(), { name: 'o.qcow2' });
      const d = await openPastGate(storage);
      const model = l.model.slice();
      // New clusters in both existing L2 tables, a new L2 table, and a multi-cluster write.
      for (const [at, len] of [
        [CS, CS],
        [COVER + CS, 2 * CS],
        [3 * COVER, CS],
        [5 * CS, 6 * CS],
        [COVER + 10 * CS, 100],
      ] as const) {
        const data = seededBytes(len, at + 7);
        await d.write(at, data);
        model.set(data, at);
      }
      await d.close();
      const after = storage.toBytes().slice();

      // Every host cluster of guest data: none is metadata or another guest cluster's.
      const check = await openQcow2(MemoryStorage.from(after, { name: 'o.qcow2', readOnly: true }), { readOnly: true });
      const hosts: number[] = [];
      for await (const e of check.extents({ hostOffsets: true })) if (e.kind === 'data' && e.hostOffset !== undefined) for (let o = 0; o < e.length; o += CS) hosts.push(e.hostOffset + o);
      const fresh = hosts.filter((h) => !dataBefore.has(h));
      expect(fresh.length).toBeGreaterThanOrEqual(1 + 2 + 1 + 6);
      for (const h of fresh) expect(metadata.has(h), `data at ${h}`).toBe(false);
      expect(new Set(hosts).size).toBe(hosts.length);
      for (const h of hosts) expect(h).toBeGreaterThan(0);
      expect(Buffer.from(await check.read(0, SIZE)).equals(Buffer.from(model))).toBe(true);
      await check.close();

      // qemu-img: no corruption beyond what was there, and qemu reads the model.
      const checkedAfter = qemuCheck(after);
      expect(checkedAfter.corruptions).toBeLessThanOrEqual(checkedBefore.corruptions);
      const raw = join(dir, `m${n++}.raw`);
      writeFileSync(raw, model);
      expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', toFile(after), raw], { allowFail: true }).status).toBe(0);
    });
  }
});

describe('the open gate in front of the overlap check', () => {
  it('refused the writable open of the images above before any write was tried', () => {
    // Runs after the tests above in this file (vitest keeps file order): each pointed guest data at metadata.
    expect(gateRefusals).toBeGreaterThanOrEqual(4);
  });
});
