// Commands that walk the extents of an image with tens of millions of them (a 1.2 TiB qcow2 whose every other
// cluster is allocated has 20 M) take them as they come: map --output=json joined all its rows into one string
// (past V8's longest, "Invalid string length" after 7 minutes and 4 GB); compare kept a list of every zero range
// and --strict one of every extent (3.7 and 4.4 GB); map and measure asked the file for its holes once per extent
// (90 s where qemu-img map takes 19). These fakes count what the walks pull instead of making such an image.
import { openSync, closeSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { openImageFile } from './node.js';
import type { Disk, Extent, Storage, StorageRange } from '@img/block';
import { fileHoleStorages, mapExtentBatches, mapExtents } from './cli/file-holes.js';
import { firstDifference } from './cli/commands/compare.js';
import { firstStatusMismatch } from './cli/compare-status.js';
import { map } from './cli/commands/map.js';
import type { Io } from './cli/common.js';

const tmp = tempDir('img-extent-walks-');
afterAll(() => tmp.cleanup());

/** A raw-looking disk of `count` extents of 512 bytes each (`kindAt` says which), reading `fill` everywhere, that counts the extents pulled from it. */
function fakeDisk(count: number, kindAt: (i: number) => Extent['kind'], fill = 0, host?: { file: string }): Disk & { pulled: number } {
  const disk = {
    format: 'raw',
    size: count * 512,
    pulled: 0,
    async *extents(options?: { offset?: number; length?: number }): AsyncGenerator<Extent> {
      const first = Math.floor((options?.offset ?? 0) / 512);
      const end = first + Math.ceil((options?.length ?? count * 512) / 512);
      for (let i = first; i < Math.min(count, end); i++) {
        disk.pulled++;
        yield { offset: i * 512, length: 512, kind: kindAt(i), depth: 0, ...(host ? { hostOffset: i * 1024, file: host.file } : {}) };
      }
    },
    async readInto(_offset: number, target: Uint8Array): Promise<void> {
      target.fill(fill);
    },
    async info() {
      return {};
    },
  };
  return disk as unknown as Disk & { pulled: number };
}

describe('walks over many extents', () => {
  it('map asks a file for its holes a window at a time, not once per extent', async () => {
    let asked = 0;
    // The file holds data in its first 64 KiB only: every extent past that lies in a hole.
    const storage = {
      ranges: async (offset: number, length: number): Promise<StorageRange[]> => {
        asked++;
        const data = Math.max(0, Math.min(offset + length, 65536) - offset);
        return [...(data > 0 ? [{ offset, length: data, data: true }] : []), { offset: offset + data, length: length - data, data: false }];
      },
    } as unknown as Storage;
    // 100,000 data extents, each 512 bytes at every other KiB of the file, so none merge.
    const disk = fakeDisk(100_000, () => 'data', 0, { file: '/f' });
    let inHole = 0;
    let n = 0;
    for await (const e of mapExtents(disk, new Map([['/f', storage]]), { offset: 0, length: disk.size })) {
      n++;
      if (e.inHole) inHole++;
      else expect(e.hostOffset! + e.length).toBeLessThanOrEqual(65536);
    }
    expect([n, inHole]).toEqual([100_000, 100_000 - 64]);
    // 100 MB of file in windows of 64 MiB (one call per extent before).
    expect(asked).toBeLessThanOrEqual(4);
  });

  it('compare stops pulling extents at the first difference', async () => {
    // Data first (where the two differ), then a million zero and hole extents in turn.
    const kind = (i: number): Extent['kind'] => (i === 0 ? 'data' : i % 2 ? 'zero' : 'hole');
    const a = fakeDisk(1_000_000, kind, 1);
    const b = fakeDisk(1_000_000, kind, 2);
    expect(await firstDifference(a, b, false)).toEqual({ offset: 0, message: 'Content mismatch at offset 0!' });
    expect(a.pulled + b.pulled).toBeLessThan(100);
  });

  it('compare --strict stops pulling extents at the first status mismatch', async () => {
    const a = fakeDisk(1_000_000, (i) => (i % 2 ? 'zero' : 'hole'));
    const b = fakeDisk(1_000_000, (i) => (i === 3 ? 'data' : i % 2 ? 'zero' : 'hole'));
    expect(await firstStatusMismatch(a, b)).toBe(3 * 512);
    expect(a.pulled + b.pulled).toBeLessThan(100);
  });
});

/** A raw file of `pages` 4 KiB pages in the temporary folder, data in every other one (from the first). */
function everyOtherPage(name: string, pages: number): string {
  const file = join(tmp.path, name);
  const fd = openSync(file, 'w');
  const page = new Uint8Array(4096).fill(7);
  for (let i = 0; i < pages; i += 2) writeSync(fd, page, 0, page.length, i * 4096);
  ftruncateSync(fd, pages * 4096);
  closeSync(fd);
  return file;
}

describeQemu('img map --output=json on many extents', () => {
  it('prints as it walks, a chunk at a time, what qemu-img map prints', async () => {
    // A raw file with data in every other 4 KiB page: 20,000 extents, 1.8 MB of JSON.
    const file = everyOtherPage('pages.raw', 20_000);
    const chunks: string[] = [];
    const io: Io = { stdout: (text) => chunks.push(text), stderr: () => undefined, isTTY: false };
    expect(await map(['-f', 'raw', '--output=json', file], io)).toBe(0);
    expect(chunks.length).toBeGreaterThan(1);
    expect(Math.max(...chunks.map((c) => c.length))).toBeLessThan(1.1 * 2 ** 20);
    expect(chunks.join('')).toBe(qemuImg(['map', '-f', 'raw', '--output=json', file]).stdout);
  });

  it('maps a long run of clusters over a file of thousands of holes a window at a time, as qemu-img maps it', async () => {
    // 96 MiB of clusters in one run of the file (preallocation=metadata: all of it a hole), then every other 4 KiB
    // page of the run written: 12,288 holes under one run.
    const file = join(tmp.path, 'punched.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', file, '96M']);
    const run = (JSON.parse(qemuImg(['map', '--output=json', file]).stdout) as Array<{ present: boolean; offset?: number }>).find((r) => r.offset !== undefined)!;
    const fd = openSync(file, 'r+');
    const page = new Uint8Array(4096).fill(0x5a);
    for (let p = 4096; p < 96 * 2 ** 20; p += 8192) writeSync(fd, page, 0, page.length, run.offset! + p);
    closeSync(fd);
    const sizes: number[] = [];
    const disk = await openImageFile(file);
    try {
      const { storages, close } = await fileHoleStorages(disk);
      for await (const a of mapExtentBatches(disk, storages, { offset: 0, length: disk.size })) sizes.push(a.length);
      await close();
    } finally {
      await disk.close();
    }
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(24_576);
    // A window (64 MiB: 16,384 pieces) past the 4096 waiting, not the 24,576 pieces of the run at once.
    expect(Math.max(...sizes)).toBeLessThanOrEqual(4096 + 16_384);
    const chunks: string[] = [];
    const io: Io = { stdout: (text) => chunks.push(text), stderr: () => undefined, isTTY: false };
    expect(await map(['--output=json', file], io)).toBe(0);
    expect(chunks.join('')).toBe(qemuImg(['map', '--output=json', file]).stdout);
  });

  it('waits while stdout has no room: a slow reader holds the walk back and the output does not pile up', async () => {
    // 60,000 extents: 5.3 MB of JSON, 3.3 MB of the human form.
    const file = everyOtherPage('slow.raw', 60_000);
    for (const output of ['json', 'human']) {
      // A stdout that holds 1.5 MiB; the reader takes what is queued 2 ms after each wait begins.
      let queued = 0;
      let most = 0;
      let waits = 0;
      const chunks: string[] = [];
      const io: Io = {
        stdout: (text) => {
          chunks.push(text);
          queued += text.length;
          most = Math.max(most, queued);
        },
        stderr: () => undefined,
        isTTY: false,
        stdoutRoom: () => {
          if (queued < 1.5 * 2 ** 20) return undefined;
          waits++;
          return new Promise((resolve) => setTimeout(() => ((queued = 0), resolve()), 2));
        },
      };
      expect(await map(['-f', 'raw', `--output=${output}`, file], io)).toBe(0);
      expect(waits).toBeGreaterThan(0);
      // At most what the stdout holds and one more chunk of 1 MiB.
      expect(most).toBeLessThan(2.6 * 2 ** 20);
      expect(chunks.join('')).toBe(qemuImg(['map', '-f', 'raw', `--output=${output}`, file]).stdout);
    }
  });
});
