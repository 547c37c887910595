import { expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { ImageError } from '@img/block';
import { describeQemu, entryAt, qemuCheck, qemuImg, qemuIo, qemuQcow2, readQcow2Bytes, tempDir, type Qcow2Bytes, withStorage } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';
import { readRefcount, writeRefcount } from './refcount-entry.js';

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const l2Of = (q: Qcow2Bytes, i: number) => Number(entryAt(q, q.l1Offset + i * 8) & 0x00ff_ffff_ffff_fe00n);

/** Each case builds a corrupt image at `path` (64 KiB clusters, guest byte 0 is 0x11). */
/** `second`: what guest byte 65536 reads after the repair and a write to guest cluster 0. */
const cases: Array<{ name: string; build: (path: string) => void; message: RegExp; second: number }> = [
  {
    name: 'two guest clusters sharing one host cluster at refcount 1',
    build: (path) => {
      const q = qemuQcow2(path, '1M', 'cluster_size=65536', [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2 + 8, entryAt(q, l2));
      writeFileSync(path, q.bytes);
    },
    message: /data cluster is used 2 times at 0x50000 \(entry at 0x40008\) with refcount 1 and the COPIED flag set/,
    second: 0x11,
  },
  {
    name: 'an L2 table shared by two L1 entries',
    build: (path) => {
      const q = qemuQcow2(path, '2G', 'cluster_size=65536', [[0, 65536, 0x11]]);
      q.view.setBigUint64(q.l1Offset + 8, entryAt(q, q.l1Offset));
      writeFileSync(path, q.bytes);
    },
    message: /L2 table is used 2 times at 0x40000 \(entry at 0x30008\) with refcount 1 and the COPIED flag set/,
    second: 0,
  },
  {
    name: 'a compressed descriptor whose sector count spans the next cluster in use',
    build: (path) => {
      qemuQcow2(path, '1M', 'cluster_size=65536');
      qemuIo(path, 'qcow2', ['write -c -P 17 0 64k', 'write -P 34 64k 64k']);
      const c = readQcow2Bytes(path);
      const l2 = l2Of(c, 0);
      // 256 sectors from 0x50000: the compressed data now claims the data cluster at 0x60000 too.
      c.view.setUint32(l2, 0x7fc00000);
      writeFileSync(path, c.bytes);
    },
    message: /compressed data spans into a cluster in use at 0x60000 \(entry at 0x40008\) with refcount 1 and the COPIED flag set/,
    second: 0x22,
  },
  {
    name: 'a snapshot whose L1 table is the active one',
    build: (path) => {
      qemuQcow2(path, '1M', 'cluster_size=65536', [[0, 65536, 0x11]]);
      qemuImg(['snapshot', '-c', 's1', path]);
      const q = readQcow2Bytes(path);
      const table = Number(q.view.getBigUint64(64));
      q.view.setBigUint64(table, BigInt(q.l1Offset));
      writeFileSync(path, q.bytes);
    },
    message: /the L1 table of snapshot 1 at 0x[0-9a-f]+ is the active L1 table at 0x[0-9a-f]+/,
    second: 0,
  },
];

describeQemu('writable opens are gated by a consistency check (issue 13 point 3)', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const { path: dir, cleanup } = tempDir();
      try {
        const path = join(dir, 'bad.qcow2');
        c.build(path);
        expect(qemuCheck(path).status).toBe(2);
        const before = sha(path);
        const err = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(ImageError.isInstance(err)).toBe(true);
        expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
        expect((err as Error).message).toMatch(c.message);
        expect((err as Error).message).toMatch(/refusing to open for writing/);
        expect(sha(path)).toBe(before);
        // Read-only opens keep working.
        {
          await using disk = await openQcow2(await FileStorage.open(path));
          expect((await disk.read(0, 1))[0]).toBe(0x11);
        }
        // img check calls it corrupt too.
        expect((await withStorage(FileStorage.open(path), (s) => checkQcow2(s))).corruptions).toBeGreaterThan(0);
        // check -r all repairs every case (check-repair.test.ts covers each against qemu-img check -r all).
        const fixed = await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }));
        expect(fixed.corruptions).toBe(0);
        expect(qemuCheck(path).status).toBe(0);
        await using disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
        await disk.write(0, new Uint8Array(65536).fill(0x33));
        expect((await disk.read(0, 65536)).every((b) => b === 0x33)).toBe(true);
        expect((await disk.read(65536, 1))[0]).toBe(c.second);
        await disk.close();
        // Each user had its own cluster after the repair: the write leaves qemu-img check nothing to say.
        expect(qemuCheck(path).status).toBe(0);
      } finally {
        cleanup();
      }
    });
  }
});

describeQemu('the gate refuses a cluster in use at refcount 0, at every refcount width', () => {
  for (const bits of [1, 8, 64]) {
    it(`refcount_bits=${bits}: the data cluster of guest cluster 0 at refcount 0`, async () => {
      const { path: dir, cleanup } = tempDir();
      try {
        const path = join(dir, 'rc0.qcow2');
        const q = qemuQcow2(path, '1M', `cluster_size=65536,refcount_bits=${bits}`, [
          [0, 65536, 0x11],
          [65536, 65536, 0x22],
        ]);
        const data = Number(entryAt(q, l2Of(q, 0)) & 0x00ff_ffff_ffff_fe00n);
        const block = Number(q.view.getBigUint64(Number(q.view.getBigUint64(48))));
        const blockBytes = q.bytes.subarray(block, block + q.clusterSize);
        expect(readRefcount(blockBytes, data / q.clusterSize, bits)).toBe(1);
        writeRefcount(blockBytes, data / q.clusterSize, bits, 0);
        writeFileSync(path, q.bytes);
        const err = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
        expect((err as Error).message).toMatch(new RegExp(`the data cluster at ${'0x' + data.toString(16)} \\(L2 entry at 0x40000\\) has refcount 0 in the refcount block at`));
        // check -r all sets the refcount, and the open goes through.
        expect((await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }))).corruptions).toBe(0);
        expect(qemuCheck(path).status).toBe(0);
        await (await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false })).close();
      } finally {
        cleanup();
      }
    });
  }
});

/**
 * Each builds an image with snapshot 1 whose guest cluster 0 (0x11) the
 * active layer still shares, then makes the active layer claim it alone:
 * qemu and an unchecked open write guest cluster 0 in place (or free it on
 * a copy-on-write and hand it out again), and the snapshot's 0x11 is gone.
 */
const sharedWithSnapshot: Array<{ name: string; build: (q: Qcow2Bytes) => void; message: RegExp }> = [
  {
    name: 'an entry of an L2 table the snapshot shares, with the COPIED flag set',
    build: (q) => {
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2, entryAt(q, l2) | (1n << 63n));
    },
    message: /the L2 table at 0x[0-9a-f]+ is also the L2 table of snapshot 1 \(entry at 0x[0-9a-f]+\), but its entry at 0x[0-9a-f]+ has the COPIED flag set, so a write would go in place/,
  },
  {
    name: 'the L1 entry of an L2 table the snapshot shares, with the COPIED flag set',
    build: (q) => {
      q.view.setBigUint64(q.l1Offset, entryAt(q, q.l1Offset) | (1n << 63n));
    },
    message: /the L2 table at 0x[0-9a-f]+ \(L1 entry 0 at 0x[0-9a-f]+\) has the COPIED flag set, so a write would go in place, but it is also the L2 table of snapshot 1/,
  },
  {
    name: 'a data cluster the snapshot uses, with the COPIED flag set in the active L2 table',
    build: (q) => {
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2, entryAt(q, l2) | (1n << 63n));
    },
    message: /the data cluster at 0x[0-9a-f]+ \(L2 entry at 0x[0-9a-f]+\) has the COPIED flag set, so a write would go in place, but it is also the data cluster of a snapshot/,
  },
  {
    name: 'a data cluster the snapshot uses, at refcount 1',
    build: (q) => {
      const data = Number(entryAt(q, l2Of(q, 0)) & 0x00ff_ffff_ffff_fe00n);
      const block = Number(q.view.getBigUint64(Number(q.view.getBigUint64(48))));
      writeRefcount(q.bytes.subarray(block, block + q.clusterSize), data / q.clusterSize, 16, 1);
    },
    message: /the data cluster at 0x[0-9a-f]+ \(L2 entry at 0x[0-9a-f]+\) has refcount 1 in the refcount block at 0x[0-9a-f]+: a snapshot uses it too, and a copy-on-write would free it under the snapshot/,
  },
];

describeQemu('the gate refuses an active layer that claims a cluster a snapshot uses', () => {
  sharedWithSnapshot.forEach((c, i) => {
    it(c.name, async () => {
      const { path: dir, cleanup } = tempDir();
      try {
        const path = join(dir, 'snap.qcow2');
        qemuQcow2(path, '1M', 'cluster_size=65536', [
          [0, 65536, 0x11],
          [65536, 65536, 0x22],
        ]);
        qemuImg(['snapshot', '-c', 's1', path]);
        // The last two cases give the active layer its own L2 table (a write after the snapshot copies it).
        if (i >= 2) qemuIo(path, 'qcow2', ['write -P 0x44 128k 4k']);
        expect(qemuCheck(path).status).toBe(0);
        const q = readQcow2Bytes(path);
        c.build(q);
        writeFileSync(path, q.bytes);
        expect(qemuCheck(path).status).toBe(2);
        const before = sha(path);
        const err = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
        expect((err as Error).message).toMatch(c.message);
        expect(sha(path)).toBe(before);
        // check -r all clears the flag or raises the refcount; writes then leave the snapshot as it was.
        expect((await withStorage(FileStorage.open(path, { readOnly: false }), (s) => checkQcow2(s, { repair: 'all' }))).corruptions).toBe(0);
        expect(qemuCheck(path).status).toBe(0);
        {
          await using disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
          await disk.write(0, new Uint8Array(4096).fill(0x33));
          await disk.write(3 * 65536, new Uint8Array(65536).fill(0x55));
        }
        expect(qemuCheck(path).status).toBe(0);
        qemuImg(['snapshot', '-a', 's1', path]);
        expect(qemuIo(path, 'qcow2', ['read -P 0x11 0 64k', 'read -P 0x22 64k 64k'])).not.toMatch(/verification failed/i);
      } finally {
        cleanup();
      }
    });
  });
});
