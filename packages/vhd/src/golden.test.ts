import { FileStorage } from '@img/block/node';
import { diskExtents } from '@img/block';
import { goldenSuite, loadManifest, normalizeExtents, normalizeQemuMap, testImagesDir } from '@img/testkit';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openVhd } from './open.js';

// The 40 GiB fixture would hash 40 GiB of zeros (~30 s); its extents and a
// sample of reads are checked below instead.
const HUGE = 4 * 1024 ** 3;

goldenSuite({
  format: 'vhd',
  open: async (path) => openVhd(await FileStorage.open(path)),
  filter: (entry) => entry.virtualSize < HUGE,
});

describe('vhd fixtures larger than 4 GiB', () => {
  const entries = loadManifest().images.filter((e) => e.format === 'vhd' && e.virtualSize >= HUGE);
  for (const entry of entries) {
    it(`${entry.file}: size and extents match qemu-img, reads agree with the map`, async () => {
      const disk = await openVhd(await FileStorage.open(join(testImagesDir, entry.file)));
      try {
        expect(disk.size).toBe(entry.virtualSize);
        const ours = normalizeExtents(await diskExtents(disk));
        expect(ours).toEqual(normalizeQemuMap(entry.map));
        for (const e of ours) {
          const probe = await disk.read(e.offset + Math.floor(e.length / 2 / 512) * 512, 512);
          if (e.kind !== 'data') expect(probe.every((b) => b === 0)).toBe(true);
        }
      } finally {
        await disk.close();
      }
    });
  }
});

describe('vhd fixtures: header fields', () => {
  const entries = loadManifest().images.filter((e) => e.format === 'vhd');
  for (const entry of entries) {
    it(`${entry.file}: type, creator, block size and pinned id`, async () => {
      const disk = await openVhd(await FileStorage.open(join(testImagesDir, entry.file)));
      try {
        const x = entry.expect as { type: string; creatorApp: string; blockSize?: number; uuidByte: number; cylinders?: number; heads?: number; sectors?: number };
        const info = await disk.info();
        const fs = info.formatSpecific!;
        expect(fs.type).toBe(x.type);
        expect(fs['creator-app']).toBe(x.creatorApp);
        expect(info.clusterSize).toBe(x.blockSize);
        expect(fs.timestamp).toBe('2020-01-01T00:00:00.000Z');
        expect((fs.uuid as string).slice(0, 2)).toBe(x.uuidByte.toString(16).padStart(2, '0'));
        if (x.cylinders) expect(fs.geometry).toEqual({ cylinders: x.cylinders, heads: x.heads, sectors: x.sectors });
        expect(disk.problems).toEqual([]);
      } finally {
        await disk.close();
      }
    });
  }
});
