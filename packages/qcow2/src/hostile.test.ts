/**
 * Regressions found by the hostile input campaign (test/fuzz-campaign.mjs,
 * README "Hostile input campaign"): each is the smallest image that shows
 * the problem, built here with qemu-img and a byte patch, judged by img's
 * own check and by qemu-img check.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { countWrites, entryAt, entryOffsetAt, qemuCheck, qemuImg, qemuIo, qemuQcow2, readQcow2Bytes, tempDir, writeCorruptQcow2 } from '@img/testkit';
import { amendQcow2 } from './amend.js';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';
import { loadFixture, setU32, setU64 } from '../test/fixtures.js';
import { compactQcow2 } from './compact.js';
import { sparsifyQcow2 } from './sparsify.js';
import { editQcow2Bitmaps, listQcow2Bitmaps } from './bitmap-edit.js';
import { readQcow2DirtyBitmap } from './bitmaps.js';

const tmp = tempDir('img-hostile-');
afterAll(() => tmp.cleanup());

async function check(path: string, repair?: 'leaks' | 'all') {
  const storage = await FileStorage.open(path, { readOnly: !repair });
  try {
    return await checkQcow2(storage, repair ? { repair } : {});
  } finally {
    await storage.close();
  }
}

/** The error a writable open of `path` fails with, or undefined if it opens. */
async function writableOpenError(path: string): Promise<{ code: string; message: string } | undefined> {
  const storage = await FileStorage.open(path, { readOnly: false });
  try {
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.close();
    return undefined;
  } catch (err) {
    return err as { code: string; message: string };
  } finally {
    await storage.close();
  }
}

async function readAll(path: string): Promise<Uint8Array> {
  const storage = await FileStorage.open(path);
  const disk = await openQcow2(storage);
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
    await storage.close();
  }
}

describe('check counts what qemu-img check counts, and repair all leaves nothing qemu-img check calls corrupt', () => {
  it('an L2 entry with a reserved bit set (bit 56)', async () => {
    const path = join(tmp.path, 'l2-reserved.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x33]]);
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(l2, entryAt(q, l2) | (1n << 56n));
    writeFileSync(path, q.bytes);
    const before = await readAll(path);
    expect(qemuCheck(path).status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/L2 entry at 0x[0-9a-f]+ has reserved bits set/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.corruptionsFixed).toBe(1);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
  });

  for (const compat of ['1.1', '0.10'] as const) {
    it(`compat=${compat}: a snapshot table entry without the disk size in its extra data ${compat === '1.1' ? 'is incomplete, and repair all writes the table again' : 'is complete in version 2'} (seed 1103 case 44; seeds 1002 and 1004 left it)`, async () => {
      const path = join(tmp.path, `snapshot-incomplete-${compat}.qcow2`);
      qemuQcow2(path, '1M', `cluster_size=4096,compat=${compat}`, [[0, 4096, 0x55]]);
      qemuImg(['snapshot', '-c', 's1', path]);
      // A second entry, read from the zeros after the first (a cluster of them appended, so that it lies in the
      // file): no extra data, no id, no name.
      const q = readQcow2Bytes(path);
      q.view.setUint32(60, 2); // nb_snapshots
      writeFileSync(path, Buffer.concat([q.bytes, new Uint8Array(4096)]));
      const before = await readAll(path);
      const v3 = compat === '1.1';
      expect(qemuCheck(path).status).toBe(v3 ? 2 : 0);
      const found = await check(path);
      expect(found.corruptions).toBe(v3 ? 1 : 0);
      if (!v3) return;
      expect(found.messages[0]).toBe('ERROR snapshot table entry 1 is incomplete');
      const repaired = await check(path, 'all');
      expect(repaired).toMatchObject({ corruptions: 0, corruptionsFixed: 1, leaks: 0 });
      expect(repaired.messages[0]).toBe('Repairing snapshot table entry 1 is incomplete');
      expect(qemuCheck(path).status).toBe(0);
      expect(await check(path)).toMatchObject({ corruptions: 0, leaks: 0 });
      expect(await readAll(path)).toEqual(before);
      // Both entries stay; the first keeps its table and still applies.
      expect(
        qemuImg(['snapshot', '-l', path])
          .stdout.split('\n')
          .filter((l) => /^\d|^ {10}/.test(l)),
      ).toHaveLength(2);
      qemuImg(['snapshot', '-a', 's1', path]);
      expect(qemuCheck(path).status).toBe(0);
      expect(await readAll(path)).toEqual(before);
    });
  }

  it('a compressed descriptor with the COPIED flag set', async () => {
    const path = join(tmp.path, 'compressed-copied.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x33]]);
    // qemu-img convert -c compresses guest cluster 0.
    qemuImg(['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', path, `${path}.c`]);
    const c = readQcow2Bytes(`${path}.c`);
    const cl2 = Number(entryAt(c, c.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    c.view.setBigUint64(cl2, entryAt(c, cl2) | (1n << 63n));
    writeFileSync(path, c.bytes);
    const before = await readAll(path);
    expect(qemuCheck(path).status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/is compressed with the COPIED flag set/);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
  });

  it('an L1 entry holding the COPIED flag and no L2 table offset (qemu-img check reads the header as its table)', async () => {
    const path = join(tmp.path, 'l1-flags-only.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x44]]);
    q.view.setBigUint64(q.l1Offset, 1n << 63n);
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/active L1 entry 0 at 0x[0-9a-f]+ has flags but no L2 table offset/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    // The cleared entry's old table and data were leaks: repaired too.
    expect(repaired.leaks).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(new Uint8Array(1024 * 1024));
  });

  it('repair leaks with an L1 entry of flags without an offset frees nothing qemu-img check reaches through the header (seed 1001 case 137)', async () => {
    const path = join(tmp.path, 'l1-flags-only-leaks.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x44]]);
    const l2 = entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n;
    const data = entryAt(q, Number(l2)) & 0x00ff_ffff_ffff_fe00n;
    q.view.setBigUint64(q.l1Offset, 1n << 63n);
    // A word of the header cluster's free tail that names the data cluster: qemu-img check, reading the header as
    // the entry's L2 table, counts it as a reference; the L2 table itself is a leak for both.
    q.view.setBigUint64(0x800, data);
    writeFileSync(path, q.bytes);
    const qemuBefore = qemuCheck(path).result as { corruptions: number; leaks?: number };
    expect(qemuBefore.leaks).toBe(1);
    expect((await check(path)).leaks).toBe(2);
    await check(path, 'leaks');
    const qemuAfter = qemuCheck(path).result as { corruptions: number };
    expect(qemuAfter.corruptions).toBe(qemuBefore.corruptions);
    expect((await check(path)).corruptions).toBe(1);
  });

  it('a writable open refuses an L1 entry of flags without an offset, and opens again after repair all', async () => {
    const path = join(tmp.path, 'l1-flags-only-write.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x44]]);
    q.view.setBigUint64(q.l1Offset, 1n << 63n);
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/L1 entry 0 at 0x[0-9a-f]+ has flags \(0x8000000000000000\) but no L2 table offset/) });
    await storage.close();
    expect(readFileSync(path)).toEqual(before);
    // Read-only opens still work.
    expect(await readAll(path)).toEqual(new Uint8Array(1024 * 1024));
    await check(path, 'all');
    const again = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await again.write(0, new Uint8Array(4096).fill(9));
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a refcount table entry naming the refcount table, for a range past the end of the file: counted as qemu-img check counts it, and repair all clears it (seed 1001 case 1447)', async () => {
    const path = join(tmp.path, 'refblock-on-reftable.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=65536', [[0, 4096, 0x21]]);
    const rt = Number(q.view.getBigUint64(48));
    // Entry 5 covers clusters from 5 * 32768 on: none lies in the file.
    q.view.setBigUint64(rt + 5 * 8, BigInt(rt));
    writeFileSync(path, q.bytes);
    const qemuBefore = qemuCheck(path).result as { corruptions: number };
    const found = await check(path);
    expect(found.corruptions).toBe(qemuBefore.corruptions);
    expect(found.messages.join('\n')).toMatch(/refcount block 5 at 0x[0-9a-f]+ is used 2 times/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect((await readAll(path)).subarray(0, 4096).every((b) => b === 0x21)).toBe(true);
  });

  it('repair leaks sets the COPIED flags of clusters whose refcount it lowered to 1, as qemu-img check -r leaks does (seed 1002 case 683)', async () => {
    const path = join(tmp.path, 'leaks-copied.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 8192, 0x41]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    const q = readQcow2Bytes(path);
    // The snapshot is forgotten: its L1 table leaks, and the clusters it shared keep refcount 2 without COPIED.
    q.view.setUint32(60, 0); // nb_snapshots
    writeFileSync(path, q.bytes);
    const before = qemuCheck(path).result as { corruptions?: number; leaks: number };
    expect(before.corruptions ?? 0).toBe(0);
    expect(before.leaks).toBeGreaterThan(0);
    const guest = await readAll(path);
    const repaired = await check(path, 'leaks');
    expect(repaired.leaks).toBe(0);
    expect(repaired.corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(guest);
  });

  it('refcount table entries for ranges past the end of the file naming blocks outside it (bits 56-63 are offset bits there): counted as qemu-img check counts them, and repair all clears them (seed 1003 case 1372)', async () => {
    const path = join(tmp.path, 'refcount-blocks-outside.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 8192, 0x13]]);
    const rt = Number(q.view.getBigUint64(48));
    q.view.setBigUint64(rt + 31 * 8, 0x0800_0000_0000_0000n);
    q.view.setBigUint64(rt + 73 * 8, 0x8000_0000_0000_0000n);
    q.view.setBigUint64(rt + 100 * 8, 0x1_0000_0000n);
    writeFileSync(path, q.bytes);
    const before = await readAll(path);
    const qemu = qemuCheck(path);
    expect(qemu.stderr).toMatch(/refcount block 31 is outside image/);
    const found = await check(path);
    expect(found.corruptions).toBe(qemu.result?.corruptions);
    expect(found.corruptions).toBe(3);
    expect(found.messages.join('\n')).toMatch(/refcount block 73 at 0x8000000000000000 is unaligned or lies past the end of the file/);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
  });

  it('a refcount table entry with a reserved bit set: counted as qemu-img check counts it, and repair all clears the bit (seed 1002 case 802)', async () => {
    const path = join(tmp.path, 'reftable-reserved.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x51]]);
    const rt = Number(q.view.getBigUint64(48));
    q.view.setUint32(rt + 4, q.view.getUint32(rt + 4) | 0x10);
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).result?.corruptions).toBe(1);
    const found = await check(path);
    expect(found.corruptions).toBe(1);
    expect(found.messages.join('\n')).toMatch(/refcount table entry 0 at 0x[0-9a-f]+ has reserved bits set/);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect((await readAll(path)).subarray(0, 4096).every((b) => b === 0x51)).toBe(true);
  });

  it('a refcount table entry naming the refcount table, with a reserved bit: repair leaks changes nothing and fails, as qemu-img check -r leaks does (seed 1003 case 997 rebuilt the block: 44 corruptions, then 47)', async () => {
    const path = join(tmp.path, 'leaks-needs-rebuild.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 8192, 0x44]]);
    const rt = Number(q.view.getBigUint64(48));
    q.view.setBigUint64(rt, BigInt(rt) | 8n);
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const qemuCopy = `${path}.qemu`;
    writeFileSync(qemuCopy, before);
    const qemu = qemuImg(['check', '-r', 'leaks', qemuCopy], { allowFail: true });
    expect(qemu.stderr).toMatch(/need to rebuild refcount structures/);
    await expect(check(path, 'leaks')).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      data: { field: 'refcount table entry', offset: rt },
      message: expect.stringMatching(/^qcow2: .*leaks-needs-rebuild\.qcow2: cannot repair leaks: refcount table entry at 0x[0-9a-f]+ has reserved bits set, so the refcount structures need rebuilding, which only check -r all does; nothing was changed$/),
    });
    expect(readFileSync(path).equals(before)).toBe(true);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a cluster in use with refcount 0 next to a leak: repair leaks changes nothing and fails, as qemu-img check -r leaks does (seed 1007 case 549 lowered a refcount qemu counts as used: 46 corruptions, then 47)', async () => {
    const path = join(tmp.path, 'leaks-refcount-zero.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 8192, 0x45]]);
    const block = Number(q.view.getBigUint64(Number(q.view.getBigUint64(48))));
    const data = entryOffsetAt(q, entryOffsetAt(q, q.l1Offset)) / 4096;
    const end = q.bytes.length / 4096;
    q.view.setUint16(block + data * 2, 0); // a data cluster in use, refcount 0
    q.view.setUint16(block + end * 2, 1); // a leaked cluster at the end of the file
    const bytes = new Uint8Array(q.bytes.length + 4096);
    bytes.set(q.bytes);
    writeFileSync(path, bytes);
    const qemuCopy = `${path}.qemu`;
    writeFileSync(qemuCopy, bytes);
    const qemu = qemuImg(['check', '-r', 'leaks', qemuCopy], { allowFail: true });
    expect(qemu.stderr).toMatch(/need to rebuild refcount structures/);
    expect(new Uint8Array(readFileSync(qemuCopy))).toEqual(bytes);
    await expect(check(path, 'leaks')).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      data: { field: 'refcount', offset: data * 4096 },
      message: expect.stringMatching(/cannot repair leaks: cluster \d+ at 0x[0-9a-f]+ is in use \(1 references\) but its refcount is 0, so the refcount structures need rebuilding, which only check -r all does; nothing was changed$/),
    });
    expect(new Uint8Array(readFileSync(path))).toEqual(bytes);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a snapshot table on the active L1 table: repair all refuses before writing instead of stopping half-way (seed 1002 case 307)', async () => {
    const path = join(tmp.path, 'snapshot-table-on-l1.qcow2');
    // A v2 image whose snapshot's L1 table is the active one; then the snapshot table is moved onto it as well.
    writeCorruptQcow2(path, 'snapshot-l1-is-active', 2);
    const q = readQcow2Bytes(path);
    q.view.setBigUint64(64, BigInt(q.l1Offset)); // snapshots_offset
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    await expect(check(path, 'all')).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      data: { field: 'l1_table_offset', offset: 40 },
      message: expect.stringMatching(/cannot repair: the active L1 table at 0x[0-9a-f]+ lies on the snapshot table at 0x[0-9a-f]+, which its repair would overwrite; nothing was changed/),
    });
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('an L2 table on a bitmap table, after a refcount table entry with a reserved bit: repair all drops its L1 entry instead of stopping half-way at the overlap guard (seed 1003 case 162)', async () => {
    // The campaign's seed image and mutation: the refcount table entry gets bit 0, the L1 entry names b1's bitmap table.
    const path = join(tmp.path, 'l2-on-bitmap-table.qcow2');
    qemuQcow2(path, '8M', 'cluster_size=65536');
    qemuImg(['bitmap', '--add', path, 'b1']);
    qemuImg(['bitmap', '--add', '-g', '4096', path, 'b2']);
    qemuIo(path, 'qcow2', ['write -P 7 0 300k', 'write -P 8 5M 64k']);
    qemuImg(['bitmap', '--disable', path, 'b2']);
    const q = readQcow2Bytes(path);
    expect(entryAt(q, 0x10000)).toBe(0x20000n);
    q.view.setBigUint64(0x10000, 0x10001n);
    q.view.setBigUint64(q.l1Offset, 0x8000_0000_0008_0000n);
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    // b1's bitmap table read as an L2 table has entries with reserved bits: clearing them was refused by the guard.
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.messages.join('\n')).toMatch(/active L1 entry 0 at 0x30000 pointed at an L2 table at 0x80000 that lies on the bitmap table; cleared/);
    expect(qemuCheck(path).status).toBe(0);
    expect(qemuImg(['info', path], { allowFail: true }).stdout).toMatch(/name: b1[\s\S]*name: b2/);
  });

  it('an active L1 entry pointing at the L1 table itself: repair all drops the entry instead of failing half-way', async () => {
    const path = join(tmp.path, 'l1-is-its-l2.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x55]]);
    q.view.setBigUint64(q.l1Offset, (1n << 63n) | BigInt(q.l1Offset));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.messages.join('\n')).toMatch(/active L1 entry 0 at 0x[0-9a-f]+ pointed at an L2 table at 0x[0-9a-f]+ that lies on the active L1 table; cleared/);
    expect(qemuCheck(path).status).toBe(0);
    expect((await check(path)).corruptions).toBe(0);
  });

  it('an unaligned data cluster entry: check counts the cluster_size bytes from its offset as referenced, as qemu-img check does, and repair leaks lowers no refcount for it (seed 1003 case 168)', async () => {
    // The campaign's mutation: compressed-zlib-4k.qcow2's L2 entry at 0x4058 loses its compressed flag and sector count,
    // leaving a standard entry at 0x5800 (unaligned); the compressed cluster's refcount still counts it.
    const path = join(tmp.path, 'unaligned-entry.qcow2');
    writeFileSync(path, setU64(loadFixture('compressed-zlib-4k.qcow2'), 0x4058, 0x5800));
    const qemuBefore = qemuCheck(path);
    expect(qemuBefore.status).toBe(2);
    expect(qemuBefore.stderr).toMatch(/offset=5800: Data cluster is not properly aligned/);
    const found = await check(path);
    expect(found.corruptions).toBe(qemuBefore.result?.corruptions);
    expect(found.leaks).toBe(qemuBefore.result?.leaks ?? 0);
    expect(found.allocatedClusters).toBe(qemuBefore.result?.['allocated-clusters']);
    expect(found.fragmentedClusters).toBe(qemuBefore.result?.['fragmented-clusters']);
    await check(path, 'leaks');
    const qemuAfter = qemuCheck(path);
    expect(qemuAfter.result?.corruptions).toBe(qemuBefore.result?.corruptions);
    expect(qemuAfter.stderr).not.toMatch(/cluster 5 refcount/);
  });

  it('an L1 entry past a virtual size of 0: repair leaks frees nothing its table reaches (qemu-img check follows it)', async () => {
    const path = join(tmp.path, 'size-0.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 2 * 4096, 0x5b]]);
    q.view.setBigUint64(24, 0n);
    writeFileSync(path, q.bytes);
    const before = qemuCheck(path);
    const found = await check(path);
    expect(found.messages.join('\n')).toMatch(/L1 entry 0 at 0x[0-9a-f]+ points at an L2 table \(0x[0-9a-f]+\) past the virtual size/);
    await check(path, 'leaks');
    const after = qemuCheck(path);
    expect(after.status).toBe(before.status);
    expect(after.result?.corruptions ?? 0).toBe(before.result?.corruptions ?? 0);
  });

  it('a data cluster past the end of a truncated file: its COPIED flag is not judged (nor flipped by repair all)', async () => {
    const path = join(tmp.path, 'truncated.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 3 * 4096, 0x66]]);
    // The last data cluster is cut off; its L2 entry (COPIED, refcount 1 in a block still in the file) stays.
    writeFileSync(path, q.bytes.subarray(0, q.bytes.length - 4096));
    const qemuBefore = qemuCheck(path);
    expect(qemuBefore.status).toBe(2);
    const found = await check(path);
    expect(found.corruptions).toBe(qemuBefore.result?.corruptions);
    expect(found.messages.join('\n')).not.toMatch(/OFLAG_COPIED/);
    await check(path, 'all');
    // Repair all drops the entry (the cluster read as zeros): nothing is left for qemu-img check to count.
    expect(qemuCheck(path).status).toBe(0);
  });
});

/** Applies snapshot `name` of the image at `path` read-write: the error it fails with, or undefined. */
async function applyError(path: string, name: string): Promise<{ code?: string; message?: string } | undefined> {
  const storage = await FileStorage.open(path, { readOnly: false });
  let disk: Awaited<ReturnType<typeof openQcow2>>;
  try {
    disk = await openQcow2(storage, { readOnly: false });
  } catch (error) {
    // The writable open's gate refuses some images before the apply looks at them.
    await storage.close();
    return error as { code?: string; message?: string };
  }
  try {
    await disk.applySnapshot(name);
    return undefined;
  } catch (error) {
    return error as { code?: string; message?: string };
  } finally {
    await disk.close();
    await storage.close();
  }
}

describe('writes into damaged images leave them no worse', () => {
  it('a refcount table entry past the file naming a block in use: a snapshot create is refused with the entry named and nothing written (seed 1107 case 65, seed 1108 case 124: the error had no offset, and the refusal set the corrupt bit)', async () => {
    const path = join(tmp.path, 'snapshot-untrusted-block.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x41]]);
    const rt = Number(q.view.getBigUint64(48)); // 48: refcount_table_offset
    // Entry 1 covers clusters the file does not reach (the writable open's gate lets it through) and names block 0.
    q.view.setBigUint64(rt + 8, q.view.getBigUint64(rt));
    writeFileSync(path, q.bytes);
    const storage = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(storage, { readOnly: false });
    try {
      await expect(disk.createSnapshot('s1')).rejects.toMatchObject({
        code: 'ERR_IMG_CORRUPT',
        data: { field: 'refcount table entry', offset: rt + 8 },
        message: expect.stringMatching(new RegExp(`refusing the snapshot operation: refcount block 1 \\(refcount table entry at 0x${(rt + 8).toString(16)}\\) cannot be trusted`)),
      });
    } finally {
      await disk.close();
      await storage.close();
    }
    expect(new Uint8Array(readFileSync(path))).toEqual(q.bytes);
  });

  it("a bitmap data cluster that is also a guest data cluster: the writable open refuses (the bitmap tracker set a bit in the guest's bytes on a write elsewhere, a resize released the cluster), even once check -r all made qemu-img check call it clean (seed 1105 case 45, seed 1107 case 158)", async () => {
    const path = join(tmp.path, 'data-on-bitmap-data.qcow2');
    qemuQcow2(path, '8M', 'cluster_size=65536');
    qemuImg(['bitmap', '--add', path, 'b1']);
    qemuIo(path, 'qcow2', ['write -P 7 0 300k']);
    const q = readQcow2Bytes(path);
    // Bitmaps extension (spec: "Bitmaps extension"): its directory's first entry holds b1's bitmap table offset.
    let ext = q.view.getUint32(100); // 100: header_length
    while (q.view.getUint32(ext) !== 0x23852875) ext += 8 + Math.ceil(q.view.getUint32(ext + 4) / 8) * 8;
    const table = Number(q.view.getBigUint64(Number(q.view.getBigUint64(ext + 8 + 16)))); // 16: bitmap_directory_offset; entry 0: bitmap_table_offset
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    const guest3 = Number(entryAt(q, l2 + 3 * 8) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(table, BigInt(guest3));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).stderr).toMatch(new RegExp(`ERROR cluster ${guest3 / 65536} refcount=1 reference=2`));
    // Our repair raises the refcount to cover both uses, as qemu's does: qemu-img check then calls the image clean.
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    const before = readFileSync(path);
    const guest = Buffer.from(await readAll(path));
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      data: { offset: l2 + 3 * 8 },
      message: expect.stringMatching(
        new RegExp(`refusing to open for writing: the data cluster at 0x${guest3.toString(16)} \\(L2 entry at 0x${(l2 + 24).toString(16)}\\) is also a bitmap data cluster \\(bitmap table entry at 0x${table.toString(16)}\\); img check -r all cannot repair that`),
      ),
    });
    await storage.close();
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(Buffer.from(await readAll(path)).equals(guest)).toBe(true);
  });

  it('an L1 entry without COPIED whose L2 table has refcount 1: the write sets the flag instead of copying the table and clearing its entries', async () => {
    const path = join(tmp.path, 'l1-copied-missing.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4 * 4096, 0x77]]);
    q.view.setBigUint64(q.l1Offset, entryAt(q, q.l1Offset) & ~(1n << 63n));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).result?.corruptions).toBe(1);
    const storage = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.write(8 * 4096, new Uint8Array(4096).fill(0x78));
    await disk.close();
    await storage.close();
    expect(qemuCheck(path).status).toBe(0);
    const bytes = await readAll(path);
    expect(bytes.subarray(0, 4 * 4096).every((b) => b === 0x77)).toBe(true);
    expect(bytes.subarray(8 * 4096, 9 * 4096).every((b) => b === 0x78)).toBe(true);
  });

  it('a data cluster only a snapshot uses, with refcount 0: the writable open refuses (a write overwrote the snapshot with new data), check -r all repairs it (seed 1001 case 245)', async () => {
    const path = join(tmp.path, 'snapshot-only-refcount-0.qcow2');
    const q0 = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x61]]);
    const snapData = Number(entryAt(q0, Number(entryAt(q0, q0.l1Offset) & 0x00ff_ffff_ffff_fe00n)) & 0x00ff_ffff_ffff_fe00n);
    qemuImg(['snapshot', '-c', 's1', path]);
    // Guest cluster 0 moves to a new cluster: the old one is the snapshot's alone (refcount 1).
    qemuIo(path, 'qcow2', ['write -P 0x62 0 4096']);
    const q = readQcow2Bytes(path);
    const block = Number(q.view.getBigUint64(Number(q.view.getBigUint64(48))) & 0x00ff_ffff_ffff_fe00n);
    expect(q.view.getUint16(block + (snapData / 4096) * 2)).toBe(1);
    q.view.setUint16(block + (snapData / 4096) * 2, 0);
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      message: expect.stringMatching(new RegExp(`the data cluster at 0x${snapData.toString(16)} of snapshot 1 \\(L2 entry at 0x[0-9a-f]+\\) has refcount 0`)),
    });
    await storage.close();
    expect(readFileSync(path).equals(before)).toBe(true);
    await check(path, 'all');
    expect(qemuCheck(path).status).toBe(0);
    const again = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await again.write(8 * 4096, new Uint8Array(4096).fill(0x63));
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
    qemuImg(['convert', '-l', 'snapshot.name=s1', '-O', 'raw', path, `${path}.s1`]);
    expect(
      readFileSync(`${path}.s1`)
        .subarray(0, 4096)
        .every((b) => b === 0x61),
    ).toBe(true);
  });

  it('a dirty image whose L1 entry names the L1 table itself: the writable open refuses instead of its refcount repair dropping the entry (seed 1001 case 1161)', async () => {
    const path = join(tmp.path, 'dirty-l1-on-l1.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096,lazy_refcounts=on', [[0, 4096, 0x66]]);
    q.view.setBigUint64(q.l1Offset, (1n << 63n) | BigInt(q.l1Offset));
    q.view.setUint8(79, q.view.getUint8(79) | 1); // incompatible feature bit 0: dirty
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const guest = await readAll(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      data: { field: 'L1 entry', offset: q.l1Offset },
      message: expect.stringMatching(/the image is dirty and rebuilding its refcounts would drop guest data: active L1 entry 0 at 0x[0-9a-f]+ points at an L2 table at 0x[0-9a-f]+ that lies on the active L1 table/),
    });
    await storage.close();
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(await readAll(path)).toEqual(guest);
  });

  it('a refcount table entry for a range past the file naming a block just past its end: a writable open refuses (a write grew the file over that block), check -r all clears it (seed 1003 case 81 of the rerun)', async () => {
    const path = join(tmp.path, 'refcount-block-past-end.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x81]]);
    const rt = Number(q.view.getBigUint64(48));
    const end = q.bytes.length;
    q.view.setBigUint64(rt + 305 * 8, BigInt(end + 8 * 4096));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).stderr).toMatch(/refcount block 305 is outside image/);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', data: { field: 'refcount table entry', offset: rt + 305 * 8 } });
    await storage.close();
    expect((await check(path, 'all')).corruptions).toBe(0);
    const again = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(again, { readOnly: false });
    await disk.write(4096, new Uint8Array(16 * 4096).fill(0x18));
    await disk.close();
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a data cluster on the snapshot table: the writable open refuses (a snapshot operation rewrote the table under the guest cluster), check -r all gives the cluster a copy (seed 1003 case 793)', async () => {
    const path = join(tmp.path, 'data-on-snapshot-table.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 8192, 0x71]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    const q = readQcow2Bytes(path);
    const snapshotTable = Number(q.view.getBigUint64(64));
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    // Guest cluster 1 now maps the snapshot table (COPIED, as the campaign's mutation left it).
    q.view.setBigUint64(l2 + 8, (1n << 63n) | BigInt(snapshotTable));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const before = await readAll(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/refusing to open for writing: .*lies on metadata/) });
    await storage.close();
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
    const again = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(again, { readOnly: false });
    await disk.close();
    await again.close();
  });

  it("a snapshot's L1 entry of flags without an offset: the writable open refuses (a bitmap --add rewrote the header qemu-img check reads as that entry's L2 table: 11 corruptions, then 16; seed 1014 case 129), check -r all repairs it", async () => {
    const path = join(tmp.path, 'snapshot-flags-only-write.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x35]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    const s = readQcow2Bytes(path);
    const snapL1 = Number(s.view.getBigUint64(Number(s.view.getBigUint64(64))));
    s.view.setBigUint64(snapL1, 1n << 63n);
    writeFileSync(path, s.bytes);
    expect(qemuCheck(path).status).toBe(2);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(editQcow2Bitmaps(storage, [{ op: 'add', name: 'b' }])).rejects.toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      message: expect.stringMatching(new RegExp(`refusing to open for writing: snapshot 1: its L1 entry 0 at 0x${snapL1.toString(16)} has flags \\(0x8000000000000000\\) but no L2 table offset`)),
    });
    await storage.close();
    expect(new Uint8Array(readFileSync(path))).toEqual(s.bytes);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    const again = await FileStorage.open(path, { readOnly: false });
    await editQcow2Bitmaps(again, [{ op: 'add', name: 'b' }]);
    await again.close();
    expect(qemuCheck(path).status).toBe(0);
  });

  it('an unaligned data cluster entry into the L1 table: the writable open refuses (a resize moved the L1 table and freed the cluster the entry still names: qemu-img check 3 corruptions, then 4; seed 1014 case 92)', async () => {
    const path = join(tmp.path, 'unaligned-on-l1.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 2 * 4096, 0x36]]);
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(l2 + 8, (1n << 63n) | BigInt(q.l1Offset + 0x200));
    writeFileSync(path, q.bytes);
    const qemuBefore = qemuCheck(path);
    expect(qemuBefore.stderr).toMatch(/Data cluster is not properly aligned/);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/refusing to open for writing: the unaligned data cluster at 0x[0-9a-f]+ \(entry at 0x[0-9a-f]+\) lies on metadata/) });
    await storage.close();
    expect(new Uint8Array(readFileSync(path))).toEqual(q.bytes);
  });

  it('a data cluster past the end of the file with refcount 0: the writable open refuses (a snapshot took that cluster for its tables), check -r all drops it', async () => {
    const path = join(tmp.path, 'data-past-end.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4 * 4096, 0x79]]);
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(l2 + 8, (1n << 63n) | BigInt(q.bytes.length));
    writeFileSync(path, q.bytes);
    const e = await writableOpenError(path);
    expect(e?.code).toBe('ERR_IMG_CORRUPT');
    expect(e?.message).toMatch(/data cluster at 0x[0-9a-f]+ \(entry at 0x[0-9a-f]+\) lies past the end of the file with refcount 0/);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.messages.join('\n')).toMatch(/data cluster past the end of the file: dropped \(it reads as zeros\)/);
    expect(qemuCheck(path).status).toBe(0);
    const again = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(again, { readOnly: false });
    await disk.createSnapshot('s1');
    await disk.close();
    await again.close();
    const bytes = await readAll(path);
    expect(bytes.subarray(4096, 8192).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(0, 4096).every((b) => b === 0x79)).toBe(true);
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a file cut short under data clusters with their refcounts (a download that stopped): the writable open refuses, check -r all drops the references and their refcounts, and a snapshot after it leaves qemu-img check clean (qcow2 fuzz seed 1124 case 123)', async () => {
    const path = join(tmp.path, 'cut-short.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 16 * 4096, 0x5a]]);
    // The last five data clusters are cut off: the file ends inside the one before them.
    const end = Math.max(...Array.from({ length: 16 }, (_, j) => Number(entryAt(q, Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n) + j * 8) & 0x00ff_ffff_ffff_fe00n)));
    writeFileSync(path, q.bytes.subarray(0, end - 4 * 4096 - 1000));
    expect(qemuCheck(path).stderr).toMatch(/exceeding the end of the file/);
    const e = await writableOpenError(path);
    expect(e?.code).toBe('ERR_IMG_CORRUPT');
    expect(e?.message).toMatch(/refusing to open for writing: the data cluster at 0x[0-9a-f]+ \(entry at 0x[0-9a-f]+\) lies past the end of the file \(\d+ bytes\): the file was cut short; img check -r all may repair it/);
    const before = await readAll(path);
    const repaired = await check(path, 'all');
    expect(repaired.corruptions).toBe(0);
    expect(repaired.messages.join('\n')).toMatch(/Repaired: 5 refcounts of clusters past the end of the file that nothing uses set to 0/);
    expect(qemuCheck(path).status).toBe(0);
    // The guest reads what it read before (the cut-off clusters as zeros).
    expect(await readAll(path)).toEqual(before);
    const again = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(again, { readOnly: false });
    await disk.createSnapshot('s1');
    await disk.write(0, new Uint8Array(32 * 4096).fill(0x11));
    await disk.close();
    await again.close();
    // The file grew over where the cut-off clusters were: no leak there, and nothing else wrong.
    expect(qemuCheck(path).status).toBe(0);
    expect((await check(path)).leaks).toBe(0);
  });

  it('a compressed descriptor with the COPIED flag set: a snapshot create clears the flag, as qemu-img snapshot -c does (qemu-img check 1 corruption, then 2: the table both L1 tables share counted it twice; seed 1004 case 125)', async () => {
    const path = join(tmp.path, 'snapshot-compressed-copied.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [
      [0, 4096, 0x33],
      [4096, 4096, 0x44],
    ]);
    qemuImg(['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', path, `${path}.c`]);
    const c = readQcow2Bytes(`${path}.c`);
    const cl2 = Number(entryAt(c, c.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    c.view.setBigUint64(cl2, entryAt(c, cl2) | (1n << 63n));
    writeFileSync(path, c.bytes);
    writeFileSync(`${path}.qemu`, c.bytes);
    const before = await readAll(path);
    expect(qemuCheck(path).result?.corruptions).toBe(1);
    // The reference: qemu-img snapshot -c walks the table and clears the flag.
    qemuImg(['snapshot', '-c', 's1', `${path}.qemu`]);
    expect(qemuCheck(`${path}.qemu`).status).toBe(0);
    const storage = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.createSnapshot('s1');
    await disk.close();
    await storage.close();
    expect(qemuCheck(path).status).toBe(0);
    expect((await check(path)).corruptions).toBe(0);
    expect(await readAll(path)).toEqual(before);
    const reopened = await FileStorage.open(path, { readOnly: false });
    const again = await openQcow2(reopened, { readOnly: false });
    await again.applySnapshot('s1');
    await again.deleteSnapshot('s1');
    await again.close();
    await reopened.close();
    expect(qemuCheck(path).status).toBe(0);
    expect(await readAll(path)).toEqual(before);
  });

  it('a data cluster of a snapshot on the refcount table, with refcount 1: the writable open refuses (applying the snapshot released the old refcount table under it: qemu-img check 1 corruption, then 2; seed 1105 case 94), check -r all repairs it and the apply then keeps the image clean', async () => {
    const path = join(tmp.path, 'snapshot-data-on-refcount-table.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4 * 4096, 0x31]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    // The active layer gets its own L2 table: the one the snapshot keeps is its alone.
    qemuIo(path, 'qcow2', ['write -P 0x32 0 4096']);
    const q = readQcow2Bytes(path);
    const refcountTable = Number(q.view.getBigUint64(48)); // 48: refcount_table_offset
    const snapL1 = Number(q.view.getBigUint64(Number(q.view.getBigUint64(64)))); // 64: snapshots_offset; entry 0: l1_table_offset
    const snapL2 = entryOffsetAt(q, snapL1);
    expect(snapL2).not.toBe(entryOffsetAt(q, q.l1Offset));
    q.view.setBigUint64(snapL2 + 3 * 8, BigInt(refcountTable));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).result?.corruptions).toBe(1);
    expect(await applyError(path, 's1')).toMatchObject({
      code: 'ERR_IMG_CORRUPT',
      message: expect.stringMatching(
        new RegExp(
          `refusing to open for writing: the data cluster of a snapshot at 0x${refcountTable.toString(16)} \\(entry at 0x${(snapL2 + 24).toString(16)}\\) is also the refcount table at 0x${refcountTable.toString(16)}, with refcount 1 for 2 uses; img check -r all may repair it`,
        ),
      ),
    });
    expect(qemuCheck(path).result?.corruptions).toBe(1);
    expect((await check(path, 'all')).corruptions).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
    expect(await applyError(path, 's1')).toBeUndefined();
    expect(qemuCheck(path).status).toBe(0);
  });

  it("a snapshot's L1 entry of flags without an offset: applying the snapshot is refused and nothing is written (the apply made it the active layer's: qemu-img check 11 corruptions, then 18; seed 1004 case 377)", async () => {
    const path = join(tmp.path, 'apply-flags-only.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x33]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    const s = readQcow2Bytes(path);
    const snapL1 = Number(s.view.getBigUint64(Number(s.view.getBigUint64(64))));
    s.view.setBigUint64(snapL1, 1n << 63n);
    writeFileSync(path, s.bytes);
    expect(q.l1Offset).not.toBe(snapL1);
    const e = await applyError(path, 's1');
    expect(e?.code).toBe('ERR_IMG_CORRUPT');
    expect(e?.message).toMatch(new RegExp(`apply-flags-only\\.qcow2.*snapshot 1: its L1 entry 0 at 0x${snapL1.toString(16)} has flags \\(0x8000000000000000\\) but no L2 table offset`));
    // Not even the corrupt bit: qemu-img check reads the header as that entry's L2 table (11 corruptions, then 12).
    expect(new Uint8Array(readFileSync(path))).toEqual(s.bytes);
  });

  it("a snapshot's L1 entry aimed at the refcount table: applying the snapshot is refused and nothing is written (the commit freed the old refcount table the new active layer used as an L2 table: qemu-img check 3 corruptions, then 4; seed 1007 case 430)", async () => {
    const path = join(tmp.path, 'apply-table-on-refcounts.qcow2');
    qemuQcow2(path, '1M', 'cluster_size=4096', [[0, 4096, 0x33]]);
    qemuImg(['snapshot', '-c', 's1', path]);
    const s = readQcow2Bytes(path);
    const refcountTable = s.view.getBigUint64(48);
    const snapL1 = Number(s.view.getBigUint64(Number(s.view.getBigUint64(64))));
    s.view.setBigUint64(snapL1, (1n << 63n) | refcountTable);
    writeFileSync(path, s.bytes);
    const before = qemuCheck(path).result?.corruptions as number;
    expect(before).toBeGreaterThan(0);
    const e = await applyError(path, 's1');
    expect(e?.code).toBe('ERR_IMG_CORRUPT');
    // Since seed 1105 case 94 the writable open's gate refuses it first (a snapshot's table on metadata without a refcount for both).
    expect(e?.message).toMatch(new RegExp(`the L2 table of snapshot 1 at 0x${refcountTable.toString(16)} \\(entry at 0x${snapL1.toString(16)}\\) is also the refcount table at 0x${refcountTable.toString(16)}, with refcount 1 for 2 uses`));
    expect(new Uint8Array(readFileSync(path))).toEqual(s.bytes);
    expect(qemuCheck(path).result?.corruptions).toBe(before);
  });

  it('compressed data after a snapshot commit: it starts a fresh cluster, not the free tail of a cluster the commit freed and handed out again', async () => {
    // Found through a damaged image; an undamaged one shows it: after the apply the freed compressed cluster is the new
    // active L2 table, and packing into its tail was refused as a write on metadata (the image then marked corrupt).
    const storage = MemoryStorage.from(loadFixture('refcount-8.qcow2'), { name: 'tail.qcow2' });
    const cs = 4096;
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.createSnapshot('s');
    await disk.writeCompressed(6 * cs, new Uint8Array(cs).fill(0x11));
    await disk.writeCompressed(12 * cs, new Uint8Array(cs).fill(0x12));
    await disk.applySnapshot('s');
    await disk.deleteSnapshot('s');
    await disk.writeCompressed(24 * cs, new Uint8Array(cs).fill(0x22));
    expect((await disk.read(24 * cs, cs)).every((b) => b === 0x22)).toBe(true);
    await disk.close();
    const c = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'c.qcow2' }));
    expect(c.corruptions).toBe(0);
  });
});

describe('bounded work', () => {
  it('snapshots sharing one large L1 table: check and a writable open refuse in one step instead of reading it per snapshot (a 1 MiB file asked for 50 MiB)', async () => {
    const path = join(tmp.path, 'snapshot-l1-bomb.qcow2');
    const cs = 65536;
    const q = qemuQcow2(path, '64M', `cluster_size=${cs}`, [[0, 4096, 0x5a]]);
    const entries = 128 * 1024;
    const l1At = Math.ceil(q.bytes.length / cs) * cs;
    const snapshotsAt = l1At + entries * 8;
    const count = 50;
    const entry = (i: number) => {
      const id = new TextEncoder().encode(String(i + 1));
      const size = Math.ceil((40 + 16 + id.length) / 8) * 8;
      const e = new DataView(new ArrayBuffer(size));
      e.setBigUint64(0, BigInt(l1At));
      e.setUint32(8, entries);
      e.setUint16(12, id.length);
      e.setUint32(36, 16);
      e.setBigUint64(48, 64n << 20n);
      new Uint8Array(e.buffer).set(id, 56);
      return new Uint8Array(e.buffer);
    };
    const table = Array.from({ length: count }, (_, i) => entry(i));
    const bytes = new Uint8Array(snapshotsAt + table.reduce((n, t) => n + t.length, 0));
    bytes.set(q.bytes);
    let at = snapshotsAt;
    for (const t of table) {
      bytes.set(t, at);
      at += t.length;
    }
    const view = new DataView(bytes.buffer);
    view.setUint32(60, count);
    view.setBigUint64(64, BigInt(snapshotsAt));
    writeFileSync(path, bytes);
    const e = await check(path).then(
      () => undefined,
      (err: unknown) => err as { code: string; message: string; data: { field?: string } },
    );
    expect(e?.code).toBe('ERR_IMG_CORRUPT');
    expect(e?.data.field).toBe('snapshot l1_size');
    expect(e?.message).toMatch(/the L1 tables of the 50 snapshots add up to 52428800 bytes, more than the \d+-byte file holds/);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(openQcow2(storage, { readOnly: false })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
    await storage.close();
    // Reading needs no snapshot's table: the guest data is still there.
    expect((await readAll(path)).subarray(0, 4096).every((b) => b === 0x5a)).toBe(true);
  });
  it('every COPIED flag of a preallocated image cleared: repair all writes each table once, not each entry, and leaves the bytes qemu-img check -r all leaves (1 M entries took 183 s one write each)', async () => {
    const path = join(tmp.path, 'copied-cleared.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata,cluster_size=4096', path, '64M']);
    const q = readQcow2Bytes(path);
    let entries = 0;
    for (let i = 0; i < 32; i++) {
      const l2 = Number(entryAt(q, q.l1Offset + i * 8) & 0x00ff_ffff_ffff_fe00n);
      for (let j = 0; j < 512; j++) {
        const e = entryAt(q, l2 + j * 8);
        if (e) {
          q.view.setBigUint64(l2 + j * 8, e & ~(1n << 63n));
          entries++;
        }
      }
    }
    expect(entries).toBe(16384);
    writeFileSync(path, q.bytes);
    writeFileSync(`${path}.qemu`, q.bytes);
    qemuImg(['check', '-r', 'all', `${path}.qemu`], { allowFail: true });
    const storage = await FileStorage.open(path, { readOnly: false });
    const writes = countWrites(storage);
    const r = await checkQcow2(storage, { repair: 'all' });
    await storage.close();
    expect([r.corruptions, r.corruptionsFixed]).toEqual([0, entries]);
    // One write per L2 table (32), and a few for the header and refcounts.
    expect(writes()).toBeLessThanOrEqual(40);
    expect(Buffer.compare(readFileSync(path), readFileSync(`${path}.qemu`))).toBe(0);
  });
});

describe('one-shot functions validate the header as an open does', () => {
  it('cluster_bits 0: compact, sparsify and the bitmap functions fail with ERR_IMG_CORRUPT naming cluster_bits (compact threw a RangeError)', async () => {
    const bytes = () => setU32(loadFixture('bitmaps.qcow2'), 20, 0);
    const named = { code: 'ERR_IMG_CORRUPT', data: { field: 'cluster_bits', offset: 20 } };
    await expect(compactQcow2(MemoryStorage.from(bytes(), { name: 'c.qcow2' }))).rejects.toMatchObject(named);
    await expect(sparsifyQcow2(MemoryStorage.from(bytes(), { name: 's.qcow2' }))).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
    await expect(listQcow2Bitmaps(MemoryStorage.from(bytes(), { name: 'l.qcow2' }))).rejects.toMatchObject(named);
    await expect(readQcow2DirtyBitmap(MemoryStorage.from(bytes(), { name: 'r.qcow2' }), 'b0')).rejects.toMatchObject(named);
    await expect(editQcow2Bitmaps(MemoryStorage.from(bytes(), { name: 'e.qcow2' }), [{ op: 'add', name: 'x' }])).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT' });
  });
});

describe('header extensions', () => {
  it('a bitmaps extension shorter than 24 bytes: every entry point fails with ERR_IMG_CORRUPT naming its offset (seed 1001 case 138 named none)', async () => {
    // bitmaps.qcow2 keeps its bitmaps extension at 0x70: its length field is at 0x74.
    const bytes = () => setU32(loadFixture('bitmaps.qcow2'), 0x74, 5);
    const named = { code: 'ERR_IMG_CORRUPT', data: { field: 'bitmaps extension length', offset: 0x74, actual: 5 }, message: expect.stringMatching(/b\.qcow2: bitmaps extension at 0x70 is 5 bytes \(expected 24\)/) };
    await expect(openQcow2(MemoryStorage.from(bytes(), { name: 'b.qcow2' }))).rejects.toMatchObject(named);
    await expect(checkQcow2(MemoryStorage.from(bytes(), { name: 'b.qcow2' }))).rejects.toMatchObject(named);
    await expect(listQcow2Bitmaps(MemoryStorage.from(bytes(), { name: 'b.qcow2' }))).rejects.toMatchObject(named);
    await expect(compactQcow2(MemoryStorage.from(bytes(), { name: 'b.qcow2' }))).rejects.toMatchObject(named);
  });

  it('a known extension that appears twice: every entry point fails with ERR_IMG_CORRUPT naming the offset of the second (seed 1003 case 568 named none)', async () => {
    // bitmaps.qcow2 keeps its 24-byte bitmaps extension at 0x70 and the end marker at 0x90: a copy of it goes there.
    const bytes = () => {
      const b = loadFixture('bitmaps.qcow2');
      expect(b.subarray(0x90, 0xb8).every((x) => x === 0)).toBe(true);
      b.copyWithin(0x90, 0x70, 0x90);
      return b;
    };
    const named = { code: 'ERR_IMG_CORRUPT', data: { field: 'header extension', offset: 0x90 }, message: expect.stringMatching(/^qcow2: d\.qcow2: header extension 0x23852875 at 0x90 appears twice \(first at 0x70\)$/) };
    await expect(openQcow2(MemoryStorage.from(bytes(), { name: 'd.qcow2' }))).rejects.toMatchObject(named);
    await expect(checkQcow2(MemoryStorage.from(bytes(), { name: 'd.qcow2' }))).rejects.toMatchObject(named);
    await expect(listQcow2Bitmaps(MemoryStorage.from(bytes(), { name: 'd.qcow2' }))).rejects.toMatchObject(named);
  });
});

describe('bitmaps of a disk whose size is not a multiple of 512 (seed 1001 case 679)', () => {
  it('the bitmap table covers whole sectors, as qemu counts the disk: qemu-img reads the bitmap added', async () => {
    const path = join(tmp.path, 'bitmap-odd-size.qcow2');
    const q = qemuQcow2(path, '32M', 'cluster_size=4096');
    // 16 MiB + 1 byte: qemu sees 16 MiB, one bitmap table entry at 512-byte granularity (4096 * 8 bits of 512 bytes).
    q.view.setBigUint64(24, BigInt(16 * 1024 * 1024 + 1));
    writeFileSync(path, q.bytes);
    expect(qemuCheck(path).status).toBe(0);
    const storage = await FileStorage.open(path, { readOnly: false });
    await editQcow2Bitmaps(storage, [{ op: 'add', name: 'b', granularity: 512 }]);
    await storage.close();
    expect(qemuImg(['info', path], { allowFail: true }).status).toBe(0);
    expect(qemuCheck(path).status).toBe(0);
  });

  it('a disk shorter than one sector: adding a bitmap is refused and the file is left as it was', async () => {
    const path = join(tmp.path, 'bitmap-one-byte.qcow2');
    const q = qemuQcow2(path, '1M', 'cluster_size=4096');
    q.view.setBigUint64(24, 1n);
    writeFileSync(path, q.bytes);
    const before = readFileSync(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(editQcow2Bitmaps(storage, [{ op: 'add', name: 'b' }])).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED', data: { field: 'size', offset: 24 } });
    await storage.close();
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(qemuImg(['info', path], { allowFail: true }).status).toBe(0);
  });
});

describe('amend goes through the writable-open gate', () => {
  it('an L2 table on the refcount table: amend refuses before writing anything (it skipped the gate)', async () => {
    const path = join(tmp.path, 'amend-gate.qcow2');
    writeCorruptQcow2(path, 'l2-on-refcount-table', 3);
    const before = readFileSync(path);
    const storage = await FileStorage.open(path, { readOnly: false });
    await expect(amendQcow2(storage, { compat: '0.10' })).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/refusing to open for writing: .*lies on metadata/) });
    await storage.close();
    expect(readFileSync(path).equals(before)).toBe(true);
  });
});
