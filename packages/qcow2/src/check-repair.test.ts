/**
 * `check -r all` on every corruption the writable-open gate refuses (issue
 * 13): after img's repair qemu-img check reports nothing, img's check
 * reports nothing, the guest reads what every reader read before, the
 * image opens writable, and writes (img's and qemu's) keep it clean.
 *
 * qemu-img check -r all on a copy of the same image is the bar, run in
 * each test (qemu 7.2 results, for the record):
 * - shared data cluster, shared L2 table, compressed span: qemu raises the
 *   refcount to 2 and clears COPIED, so the image checks clean, but the
 *   first write to one user leaves the other at refcount 1 without COPIED
 *   (1-2 OFLAG_COPIED errors). img copies the cluster for each extra user
 *   (the compressed one is decompressed into its own cluster), so writes
 *   keep it clean.
 * - shared data cluster that a snapshot also uses (refcount 2 for 3 uses,
 *   COPIED clear): qemu raises the refcount to 3 and checks clean; img
 *   copies it for the second active user. (Before this, img's gate let it
 *   through: two copy-on-writes would have freed the snapshot's cluster.)
 * - snapshot L1 is the active L1: qemu sets refcount 2 and checks clean,
 *   but its next write to the active layer is refused as a write on the
 *   inactive L1 table and marks the image corrupt. img gives the snapshot
 *   its own L1 copy: writes go through and the snapshot keeps its data.
 * - header refcount 0, missing refcount block, refcount table listing
 *   itself as a block, data cluster at refcount 0: qemu repairs (rebuilding
 *   refcount blocks); img does too.
 * - data cluster on the refcount block: qemu rebuilds the refcount
 *   structure elsewhere, so the old block becomes the guest's cluster;
 *   img gives the guest a copy of the bytes it read before the repair.
 *   Both read as before and stay clean through writes.
 * - L2 table on the refcount table: qemu rebuilds the refcount structure
 *   elsewhere and keeps the old table as that range's L2 table (its
 *   entries, refcount block offsets, map guest clusters onto the old
 *   refcount block). img clears the L1 entry instead and says so: that
 *   range then reads as zeros, where under qemu it reads old refcounts,
 *   which were never guest data. Both check clean and stay clean.
 */
import { afterAll, expect, it } from 'vitest';
import { copyFileSync, openSync, writeSync, closeSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { ImageError } from '@img/block';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuIo, tempDir, writeCheckBomb, writeCorruptQcow2, QCOW2_CORRUPTIONS, type Qcow2Corruption, withStorage } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

const CS = 65536;
const { path: dir, cleanup } = tempDir('img-check-repair-');
afterAll(cleanup);

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** What the gate says for each case. */
const GATE: Record<Qcow2Corruption, RegExp> = {
  'shared-data-cluster': /data cluster is used 2 times at 0x50000 \(entry at 0x40008\) with refcount 1 and the COPIED flag set/,
  'shared-data-with-snapshot': /data cluster is used 2 times \(and 1 time by snapshots\) at 0x50000 \(entry at 0x80008\) with refcount 2;/,
  'shared-l2-table': /L2 table is used 2 times at 0x40000 \(entry at 0x30008\) with refcount 1 and the COPIED flag set/,
  'compressed-span': /compressed data spans into a cluster in use at 0x60000 \(entry at 0x40008\)/,
  'snapshot-l1-is-active': /the L1 table of snapshot 1 at 0x30000 is the active L1 table at 0x30000/,
  'header-refcount-0': /the header cluster has refcount 0 in the refcount block at 0x20000: the allocator would hand it out again/,
  'missing-refcount-block': /the header cluster has no refcount to trust \(refcount table entry 0 at 0x10000: it is missing/,
  'refcount-table-as-block': /has no refcount to trust \(refcount table entry 0 at 0x10000: its refcount block at 0x10000 is the refcount table\)/,
  'data-refcount-0': /the data cluster at 0x50000 \(L2 entry at 0x40000\) has refcount 0 in the refcount block at 0x20000/,
  'data-on-refcount-block': /the data cluster at 0x20000 \(entry at 0x40008\) lies on metadata/,
  'l2-on-refcount-table': /the L2 table at 0x10000 \(entry at 0x30008\) lies on metadata/,
};

/** What the repair says it did, where it did more than set refcounts. */
const REPAIRED: Partial<Record<Qcow2Corruption, RegExp>> = {
  'shared-data-cluster': /Repaired: data cluster at 0x50000 used by 2 entries: copied \(L2 entry at 0x40008\)/,
  'shared-data-with-snapshot': /Repaired: data cluster at 0x50000 used by 2 entries: copied \(L2 entry at 0x80008\)/,
  'shared-l2-table': /Repaired: the L2 table at 0x40000 was used by 2 active L1 entries; the entries at 0x30008 have copies of their own/,
  'compressed-span': /Repaired: compressed cluster whose sectors reach a data cluster in use: decompressed into a cluster of its own \(L2 entry at 0x40000\)/,
  'snapshot-l1-is-active': /Repaired: the L1 table of snapshot 1 was the active L1 table at 0x30000; a copy of it is at 0x[0-9a-f]+/,
  'data-on-refcount-block': /Repaired: data cluster on the refcount block: copied \(L2 entry at 0x40008\)/,
  'l2-on-refcount-table': /Repaired: active L1 entry 1 at 0x30008 pointed at an L2 table at 0x10000 that lies on the refcount table; cleared/,
};

/** qemu-img check's counts (any exit status is an answer). */
function counts(path: string): { corruptions: number; leaks: number; status: number } {
  const r = qemuCheck(path);
  return { corruptions: Number(r.result?.corruptions ?? 0), leaks: Number(r.result?.leaks ?? 0), status: r.status };
}

/** Overwrites [offset, offset + data.length) of a raw file. */
function patchRaw(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

async function openWritable(path: string) {
  return openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
}

describeQemu('check -r all repairs what the open gate refuses (issue 13)', () => {
  for (const kind of QCOW2_CORRUPTIONS) {
    for (const version of [2, 3] as const) {
      it(`${kind}, v${version}`, async () => {
        const path = join(dir, `${kind}-v${version}.qcow2`);
        writeCorruptQcow2(path, kind, version);
        expect(counts(path).status).toBe(2);

        // The gate refuses, names the problem and writes nothing.
        const unchanged = sha(path);
        const err = await openWritable(path).then(
          async (d) => {
            await d.close();
            return undefined;
          },
          (e: unknown) => e,
        );
        expect(ImageError.isInstance(err) && err.code).toBe('ERR_IMG_CORRUPT');
        expect((err as Error).message).toMatch(GATE[kind]);
        expect((err as Error).message).toMatch(/refusing to open for writing: .*img check -r all may repair it/);
        expect(sha(path)).toBe(unchanged);

        // What every reader reads now (qemu reads the corrupt image read-only), the snapshot too.
        const before = join(dir, `${kind}-v${version}.raw`);
        qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', path, before]);
        const snapshot = kind === 'snapshot-l1-is-active' || kind === 'shared-data-with-snapshot' ? join(dir, `${kind}-v${version}-s1.raw`) : undefined;
        if (snapshot) qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', '-l', 'snapshot.name=s1', path, snapshot]);

        // The bar: qemu-img check -r all on a copy.
        const theirs = join(dir, `${kind}-v${version}-qemu.qcow2`);
        copyFileSync(path, theirs);
        qemuImg(['check', '-q', '-r', 'all', '-f', 'qcow2', theirs], { allowFail: true });
        const bar = counts(theirs);

        const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
        expect(fixed).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
        expect(fixed.corruptionsFixed).toBeGreaterThan(0);
        const said = REPAIRED[kind];
        if (said) expect(fixed.messages.join('\n')).toMatch(said);
        const after = counts(path);
        expect(after).toEqual({ corruptions: 0, leaks: 0, status: 0 });
        expect(after.corruptions).toBeLessThanOrEqual(bar.corruptions);
        expect(await withStorage(FileStorage.open(path), (s) => checkQcow2(s))).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });

        // The guest reads what it read before, except a range the repair dropped (and said so).
        if (kind === 'l2-on-refcount-table') {
          // Guest range 512 MiB..1 GiB (L1 entry 1) read the refcount table as L2 entries; now it reads zeros.
          expect(
            readFileSync(before)
              .subarray(2 ** 29, 2 ** 29 + CS)
              .some((x) => x !== 0),
          ).toBe(true);
          truncateSync(before, 2 ** 29);
          truncateSync(before, 2 ** 30);
        }
        expect(qemuCompare(path, before, 'qcow2', 'raw')).toBe(true);
        if (snapshot) {
          qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', '-l', 'snapshot.name=s1', path, `${snapshot}.now`]);
          expect(sha(`${snapshot}.now`)).toBe(sha(snapshot));
        }

        // Opens writable; img's write to guest cluster 0 and qemu's to cluster 1 keep it clean.
        const d = await openWritable(path);
        const a = new Uint8Array(CS).fill(0x33);
        await d.write(0, a);
        await d.close();
        qemuIo(path, 'qcow2', ['write -P 0x44 64k 64k']);
        patchRaw(before, 0, a);
        patchRaw(before, CS, new Uint8Array(CS).fill(0x44));
        expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
        expect(await withStorage(FileStorage.open(path), (s) => checkQcow2(s))).toMatchObject({ corruptions: 0, leaks: 0 });
        expect(qemuCompare(path, before, 'qcow2', 'raw')).toBe(true);
        // The snapshot kept its data through the writes to the active layer.
        if (snapshot) {
          qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', '-l', 'snapshot.name=s1', path, `${snapshot}.later`]);
          expect(sha(`${snapshot}.later`)).toBe(sha(snapshot));
        }
      });
    }
  }

  it('extended L2 entries: two guest clusters on one host cluster get a cluster each, subcluster bitmaps kept', async () => {
    const path = join(dir, 'extended.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536,extended_l2=on', path, '1M']);
    // Guest cluster 0 fully written, guest cluster 1 only in its first subcluster (2 KiB).
    qemuIo(path, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 64k 2k']);
    const bytes = readFileSync(path);
    const l1 = Number(bytes.readBigUInt64BE(40));
    const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00ff_ffff_ffff_fe00n);
    // Entry 1 keeps its bitmap (subcluster 0 allocated) and takes entry 0's cluster.
    bytes.copy(bytes, l2 + 16, l2, l2 + 8);
    writeFileSync(path, bytes);
    expect(counts(path).status).toBe(2);
    const before = join(dir, 'extended.raw');
    qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', path, before]);
    const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(fixed.messages.join('\n')).toMatch(/Repaired: data cluster at 0x50000 used by 2 entries: copied \(L2 entry at 0x40010\)/);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    expect(qemuCompare(path, before, 'qcow2', 'raw')).toBe(true);
    const d = await openWritable(path);
    await d.write(0, new Uint8Array(CS).fill(0x33));
    await d.close();
    patchRaw(before, 0, new Uint8Array(CS).fill(0x33));
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    expect(qemuCompare(path, before, 'qcow2', 'raw')).toBe(true);
  });

  it('a preallocated zero cluster on a data cluster in use keeps reading zeros, without the cluster (v3)', async () => {
    const path = join(dir, 'zero-shared.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', path, '1M']);
    qemuIo(path, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 64k 64k']);
    const bytes = readFileSync(path);
    const l2 = Number(bytes.readBigUInt64BE(Number(bytes.readBigUInt64BE(40))) & 0x00ff_ffff_ffff_fe00n);
    // Entry 1: the zero flag, with entry 0's cluster as its preallocated host cluster.
    bytes.writeBigUInt64BE(bytes.readBigUInt64BE(l2) | 1n, l2 + 8);
    writeFileSync(path, bytes);
    expect(counts(path).status).toBe(2);
    const err = await openWritable(path).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/data cluster is used 2 times at 0x50000 \(entry at 0x40008\)/);
    const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(fixed.messages.join('\n')).toMatch(/a zero cluster\): it keeps reading zeros without a cluster \(L2 entry at 0x40008\)/);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    expect(readFileSync(path).readBigUInt64BE(l2 + 8)).toBe(1n);
    await using d = await openWritable(path);
    expect((await d.read(0, CS)).every((b) => b === 0x11)).toBe(true);
    expect((await d.read(CS, CS)).every((b) => b === 0)).toBe(true);
  });

  it('two snapshots whose L1 tables are the active one share one copy, and keep their data through writes', async () => {
    const path = join(dir, 'two-snapshots.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', path, '1M']);
    qemuIo(path, 'qcow2', ['write -P 0x11 0 64k']);
    qemuImg(['snapshot', '-c', 's1', path]);
    qemuImg(['snapshot', '-c', 's2', path]);
    const bytes = readFileSync(path);
    const l1 = bytes.readBigUInt64BE(40);
    let entry = Number(bytes.readBigUInt64BE(64));
    for (let i = 0; i < 2; i++) {
      bytes.writeBigUInt64BE(l1, entry);
      const size = 40 + bytes.readUInt32BE(entry + 36) + bytes.readUInt16BE(entry + 12) + bytes.readUInt16BE(entry + 14);
      entry += Math.ceil(size / 8) * 8;
    }
    writeFileSync(path, bytes);
    expect(counts(path).status).toBe(2);
    const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(fixed.messages.join('\n')).toMatch(/Repaired: the L1 table of snapshots 1, 2 was the active L1 table at 0x30000; a copy of it is at 0x[0-9a-f]+/);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    const d = await openWritable(path);
    await d.write(0, new Uint8Array(CS).fill(0x33));
    await d.close();
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    for (const name of ['s1', 's2']) {
      await using snap = await openQcow2(await FileStorage.open(path), { snapshot: name });
      expect((await snap.read(0, CS)).every((b) => b === 0x11)).toBe(true);
    }
    // Deleting one snapshot leaves the other's L1 table (refcount 2 -> 1) and data in place.
    qemuImg(['snapshot', '-d', 's1', path]);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    await using snap = await openQcow2(await FileStorage.open(path), { snapshot: 's2' });
    expect((await snap.read(0, CS)).every((b) => b === 0x11)).toBe(true);
  });

  it('a crafted image with 65536 references to one cluster: copies stay within the budget, the rest is dropped and said', async () => {
    const path = join(dir, 'bomb.qcow2');
    // 8 L1 entries on one L2 table whose 8192 entries all point at one data cluster (refcount 16 bits: 65535 at most).
    writeCheckBomb(path, '4G');
    const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    const text = fixed.messages.join('\n');
    expect(text).toMatch(/the L2 table at 0x40000 was used by 8 active L1 entries; the entries at 0x30008, .* have copies of their own/);
    expect(text).toMatch(/data cluster at 0x50000 used by 65536 entries: dropped, as copies would exceed the repair's copy budget \(it reads as zeros\)/);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    // The first user keeps the data; the file grew by the L2 copies only.
    await using disk = await openQcow2(await FileStorage.open(path));
    expect((await disk.read(0, CS)).every((b) => b === 0x55)).toBe(true);
    expect((await disk.read(CS, CS)).every((b) => b === 0)).toBe(true);
    expect(readFileSync(path).length).toBeLessThan(2 * 1024 * 1024);
  });

  it('the check bomb (8 TiB, 134 M references in 448 KiB): extra L1 entries cleared, extra L2 entries dropped, the file does not grow', async () => {
    const path = join(dir, 'bomb8t.qcow2');
    writeCheckBomb(path);
    const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    const text = fixed.messages.join('\n');
    expect(text).toMatch(/the L2 table at 0x50000 was used by 16384 active L1 entries; the entries at 0x30008, .* and 16375 more were cleared, as copies would exceed the repair's copy budget/);
    expect(text).toMatch(/data cluster at 0x60000 used by 8192 entries: dropped/);
    expect(counts(path)).toEqual({ corruptions: 0, leaks: 0, status: 0 });
    expect(readFileSync(path).length).toBe(448 * 1024);
    await using disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    expect((await disk.read(0, CS)).every((b) => b === 0x55)).toBe(true);
    expect((await disk.read(2 ** 29, CS)).every((b) => b === 0)).toBe(true);
  });
});
