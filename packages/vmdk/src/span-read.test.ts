import { ImageError, MemoryStorage } from '@img/block';
import { tempDir } from '@img/testkit';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GRAIN_MARKER_HEADER } from './marker.js';
import { openVmdk } from './open.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * A guest of 6 MiB: random grains (whose zlib streams are longer than a
 * grain), text-like grains (a few KiB each), zeros between, and a last
 * grain cut short by the capacity; qemu-img writes it as streamOptimized.
 */
function guest(): Uint8Array {
  const g = new Uint8Array(6 * MiB - 20 * KiB);
  g.set(randomBytes(MiB + 3 * 64 * KiB), 0);
  const line = new TextEncoder().encode('the quick brown fox jumps over the lazy dog 0123456789\n');
  for (let at = 2 * MiB; at < 4 * MiB; at += line.length) g.set(line.subarray(0, Math.min(line.length, 4 * MiB - at)), at);
  g.set(randomBytes(g.length - 5 * MiB), 5 * MiB);
  return g;
}

function streamOptimized(dir: string, data: Uint8Array): Uint8Array {
  const raw = join(dir, 'g.raw');
  const vmdk = join(dir, 'g.vmdk');
  writeFileSync(raw, data);
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, vmdk]);
  return new Uint8Array(readFileSync(vmdk));
}

describe('streamOptimized reads: whole grains a span of the file at a time', () => {
  const dir = tempDir('vmdk-span-');
  afterAll(() => dir.cleanup());
  const data = guest();
  const image = streamOptimized(dir.path, data);
  const open = (bytes: Uint8Array) => openVmdk(MemoryStorage.from(bytes, { name: 'g.vmdk', readOnly: true }), {});

  it('reads what qemu-img wrote, in one read, in 4 MiB chunks and at odd offsets', async () => {
    const disk = await open(image);
    try {
      expect(disk.size).toBe(data.length);
      expect(Buffer.from(await disk.read(0, disk.size)).equals(Buffer.from(data))).toBe(true);
      for (let at = 0; at < disk.size; at += 4 * MiB) {
        const n = Math.min(4 * MiB, disk.size - at);
        expect(Buffer.from(await disk.read(at, n)).equals(Buffer.from(data.subarray(at, at + n)))).toBe(true);
      }
      for (const [at, n] of [
        [1000, 300 * KiB],
        [64 * KiB - 1, 129 * KiB],
        [disk.size - 70 * KiB, 70 * KiB],
      ] as const) {
        expect(Buffer.from(await disk.read(at, n)).equals(Buffer.from(data.subarray(at, at + n))), `${at}+${n}`).toBe(true);
      }
    } finally {
      await disk.close();
    }
  });

  it('a marker inside a span with a size of 0 is ERR_IMG_CORRUPT at its offset; one naming another sector reads by the table, as qemu', async () => {
    // The third grain's marker (the grain table maps it).
    const bad = image.slice();
    const view = new DataView(bad.buffer);
    let at = 64 * KiB; // qemu-img's first grain
    for (let k = 0; k < 2; k++) at += Math.ceil((GRAIN_MARKER_HEADER + view.getUint32(at + 8, true)) / 512) * 512;
    expect(Number(view.getBigUint64(at, true))).toBe(2 * 128);
    view.setBigUint64(at, 5n * 128n, true);
    const lenient = await open(bad);
    const good = await open(image);
    try {
      expect(Buffer.compare(await lenient.read(0, MiB), await good.read(0, MiB))).toBe(0);
    } finally {
      await lenient.close();
      await good.close();
    }
    view.setUint32(at + 8, 0, true);
    const disk = await open(bad);
    try {
      const err = await disk.read(0, MiB).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(err)).toBe(true);
      expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
      expect((err as ImageError).message).toContain(`0x${at.toString(16)}`);
    } finally {
      await disk.close();
    }
  });

  it('a broken zlib stream among text-like grains (inflated off the main thread) is ERR_IMG_CORRUPT at its marker', async () => {
    const bad = image.slice();
    const view = new DataView(bad.buffer);
    let at = 64 * KiB;
    while (Number(view.getBigUint64(at, true)) !== 34 * 128) at += Math.ceil((GRAIN_MARKER_HEADER + view.getUint32(at + 8, true)) / 512) * 512;
    const size = view.getUint32(at + 8, true);
    expect(size).toBeLessThan(32 * KiB); // compressible: the off-thread path
    bad.fill(0xff, at + GRAIN_MARKER_HEADER + 2, at + GRAIN_MARKER_HEADER + size);
    const disk = await open(bad);
    try {
      const err = await disk.read(2 * MiB, 2 * MiB).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(err)).toBe(true);
      expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
      expect((err as ImageError).message).toContain(`compressed grain at 0x${at.toString(16)}`);
      // The grains around it still read (the span buffer was not given back early).
      expect(Buffer.from(await disk.read(2 * MiB, 2 * 64 * KiB)).equals(Buffer.from(data.subarray(2 * MiB, 2 * MiB + 2 * 64 * KiB)))).toBe(true);
    } finally {
      await disk.close();
    }
  });
});
