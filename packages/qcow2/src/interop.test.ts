/**
 * qemu-img as the oracle for what is generated at test time rather than
 * committed: 2 MiB clusters, a 1 TiB sparse image, snapshots of another
 * size than the image; and qemu-img info / map details for every fixture.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FileStorage, fileResolver } from '@img/block/node';
import { bytesEqual, diskExtents } from '@img/block';
import { type QemuMapEntry, loadManifest, describeQemu, qemuImg, qemuIo, qemuInfo, qemuMap, tempDir, normalizeExtents, normalizeQemuMap, seededBytes, diskSha256 } from '@img/testkit';
import { openQcow2, type Qcow2OpenOptions } from './open.js';
import { fixtureNames, fixturePath } from '../test/fixtures.js';
import './driver.js';

async function open(path: string, options: Qcow2OpenOptions = {}) {
  return openQcow2(await FileStorage.open(path), { resolver: fileResolver, ...options });
}

function qemuRawSha(path: string, dir: string, snapshot?: string): { sha: string; bytes: Uint8Array } {
  const out = join(dir, `export-${Math.random().toString(36).slice(2)}.raw`);
  qemuImg(['convert', '-O', 'raw', ...(snapshot ? ['-l', `snapshot.id=${snapshot}`] : []), path, out]);
  const bytes = new Uint8Array(readFileSync(out));
  return { sha: createHash('sha256').update(bytes).digest('hex'), bytes };
}

async function expectSameAsQemu(path: string, dir: string) {
  const disk = await open(path);
  try {
    expect(normalizeExtents(await diskExtents(disk))).toEqual(normalizeQemuMap(qemuMap(path)));
    expect(await diskSha256(disk)).toBe(qemuRawSha(path, dir).sha);
  } finally {
    await disk.close();
  }
}

describeQemu('qcow2 interop with qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-interop-'));
  });
  afterAll(() => cleanup());

  for (const type of ['zlib', 'zstd']) {
    it(`2 MiB clusters, ${type} compressed and mixed with normal and zero clusters`, async () => {
      const src = join(dir, `src-${type}.raw`);
      const data = new Uint8Array(6 * 1024 * 1024);
      data.set(seededBytes(1024 * 1024, 5), 0); // incompressible: stored uncompressed
      data.fill(0x42, 2 * 1024 * 1024, 3 * 1024 * 1024); // compressible
      data.set(new TextEncoder().encode('hello '.repeat(10000)), 4 * 1024 * 1024 + 12345);
      writeFileSync(src, data);
      const path = join(dir, `2m-${type}.qcow2`);
      qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=2M,compression_type=${type}`, src, path]);
      qemuImg(['resize', path, '10M']);
      qemuIo(path, 'qcow2', ['write -P 0x33 8M 100k', 'write -z 2M 2M']);
      await expectSameAsQemu(path, dir);
    });
  }

  it('2 MiB clusters with extended L2 entries (64 KiB subclusters) over a backing file', async () => {
    const base = join(dir, 'ext-base.qcow2');
    const top = join(dir, 'ext-top.qcow2');
    qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=2M', base, '6M']);
    qemuIo(base, 'qcow2', ['write -P 0x11 0 6M']);
    qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=2M,extended_l2=on', '-b', 'ext-base.qcow2', '-F', 'qcow2', top, '8M']);
    qemuIo(top, 'qcow2', ['write -P 0x22 64k 64k', 'write -z 1M 128k', 'write -P 0x23 7M 1k']);
    await expectSameAsQemu(top, dir);
  });

  it('a 1 TiB sparse image: extents and reads cost metadata only', async () => {
    const path = join(dir, 'big.qcow2');
    qemuImg(['create', '-f', 'qcow2', path, '1T']);
    qemuIo(path, 'qcow2', ['write -P 0x5a 0 64k', 'write -P 0x5b 512G 4k', 'write -z 700G 1M', 'write -P 0x5c 1099511562240 65536']);
    const disk = await open(path);
    try {
      expect(disk.size).toBe(2 ** 40);
      const t0 = performance.now();
      const ours = normalizeExtents(await diskExtents(disk));
      expect(performance.now() - t0).toBeLessThan(5000);
      expect(ours).toEqual(normalizeQemuMap(qemuMap(path)));
      expect((await disk.read(512 * 2 ** 30, 4))[3]).toBe(0x5b);
      expect((await disk.read(2 ** 40 - 1, 1))[0]).toBe(0x5c);
      expect((await disk.read(300 * 2 ** 30, 1024 * 1024)).every((b) => b === 0)).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('snapshots of another size than the image, compared with qemu-img convert -l', async () => {
    const path = join(dir, 'snap-resized.qcow2');
    qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', path, '128k']);
    qemuIo(path, 'qcow2', ['write -P 0x61 0 128k']);
    qemuImg(['snapshot', '-c', 'small', path]);
    qemuImg(['resize', path, '320k']);
    qemuIo(path, 'qcow2', ['write -P 0x62 4k 4k', 'write -P 0x63 300k 4k']);
    qemuImg(['snapshot', '-c', 'big', path]);
    const disk = await open(path);
    try {
      const snaps = disk.snapshots;
      expect(snaps.map((s) => [s.id, s.name, s.diskSize])).toEqual([
        ['1', 'small', 128 * 1024],
        ['2', 'big', 320 * 1024],
      ]);
      const qemuSnaps = (qemuInfo(path).snapshots as Array<Record<string, number>>).map((s) => [s['date-sec'], s['vm-state-size']]);
      expect(snaps.map((s) => [s.dateSec, s.vmStateSize])).toEqual(qemuSnaps);
      for (const s of snaps) {
        const snap = await disk.openSnapshot(s.name);
        expect(snap.size).toBe(s.diskSize);
        expect(snap.readOnly).toBe(true);
        // qemu exports a snapshot at the image's current size; the bytes past the snapshot's own size are zeros.
        const q = qemuRawSha(path, dir, s.id).bytes;
        const ours = await snap.read(0, snap.size);
        expect(bytesEqual(ours, q.subarray(0, snap.size))).toBe(true);
        expect(q.subarray(snap.size).every((b) => b === 0)).toBe(true);
        await snap.close();
      }
      // The active layer is still readable after the snapshot views closed.
      expect((await disk.read(300 * 1024, 1))[0]).toBe(0x63);
    } finally {
      await disk.close();
    }
  });

  it('info() matches qemu-img info for every fixture', async () => {
    for (const name of fixtureNames()) {
      const path = fixturePath(name);
      const q = qemuInfo(path);
      const disk = await open(path);
      try {
        const info = await disk.info();
        expect(info.virtualSize, name).toBe(q['virtual-size']);
        expect(info.clusterSize, name).toBe(q['cluster-size']);
        expect(info.dirty ?? false, name).toBe(q['dirty-flag'] ?? false);
        expect(info.backingFile, name).toBe(q['backing-filename']);
        if (info.formatSpecific?.['backing-format-probed']) {
          // qemu probes too but does not report the result; we do.
          expect(q['backing-filename-format'], name).toBeUndefined();
          expect(info.backingFormat, name).toBe('qcow2');
        } else {
          expect(info.backingFormat, name).toBe(q['backing-filename-format']);
        }
        if (q['full-backing-filename']) expect(info.fullBackingFile, name).toBe(q['full-backing-filename']);
        const data = (q['format-specific'] as { data: Record<string, unknown> }).data;
        const ours = { ...info.formatSpecific };
        delete ours['backing-format-probed'];
        expect(ours, name).toEqual(data);
        expect(
          (info.snapshots ?? []).map((s) => [s.id, s.name, s.vmStateSize, s.dateSec, s.dateNsec]),
          name,
        ).toEqual(((q.snapshots ?? []) as Array<Record<string, unknown>>).map((s) => [s.id, s.name, s['vm-state-size'], s['date-sec'], s['date-nsec']]));
      } finally {
        await disk.close();
      }
    }
  });

  it('extents with hostOffsets give qemu-img map offsets; topOnly gives the top layer alone', async () => {
    for (const name of fixtureNames()) {
      const path = fixturePath(name);
      const disk = await open(path);
      try {
        const ours = await diskExtents(disk, { hostOffsets: true });
        // The manifest holds qemu-img map as made with the fixture directory as cwd (data file names are cwd-relative for qemu).
        const entry = loadManifest().images.find((e) => e.file === `qcow2/${name}`)!;
        for (const m of entry.map) {
          if (m.offset === undefined) continue;
          for (const e of ours) {
            const s = Math.max(e.offset, m.start);
            const t = Math.min(e.offset + e.length, m.start + m.length);
            if (s >= t) continue;
            expect(e.hostOffset! + (s - e.offset), `${name} at ${s}`).toBe(m.offset + (s - m.start));
          }
        }
        const top = normalizeExtents(await diskExtents(disk, { topOnly: true }));
        // qemu 7.2 has no map --max-depth: open the image with its backing link cut instead.
        const hasBacking = (await disk.info()).backingFile !== undefined;
        const spec = JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path } });
        const qtop = normalizeQemuMap(hasBacking ? (JSON.parse(qemuImg(['map', '--output=json', `json:${spec}`]).stdout) as QemuMapEntry[]) : entry.map);
        expect(top, name).toEqual(qtop);
      } finally {
        await disk.close();
      }
    }
  });
});
