import { MemoryStorage } from '@img/block';
import { nativeInflateAvailable } from '@img/block/node';
import { entryAt, qemuImg, readQcow2Bytes, seededBytes, tempDir } from '@img/testkit';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Codecs, setQcow2Codecs } from './compression.js';
import { openQcow2 } from './open.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;

/** 6 MiB of guest: random clusters (which qemu stores uncompressed), text-like ones, low-entropy ones, and more random. */
function guest(): Uint8Array {
  const g = new Uint8Array(6 * MiB);
  g.set(seededBytes(MiB + 3 * CS, 1), 0);
  const line = new TextEncoder().encode('the quick brown fox jumps over the lazy dog 0123456789\n');
  for (let at = 2 * MiB; at < 4 * MiB; at += line.length) g.set(line.subarray(0, Math.min(line.length, 4 * MiB - at)), at);
  // Four bits of entropy a byte: streams of about half a cluster, many sectors each.
  g.set(
    seededBytes(MiB, 3).map((b) => b & 0x0f),
    4 * MiB,
  );
  g.set(seededBytes(MiB, 2), 5 * MiB);
  return g;
}

/** Reads the whole guest, and a few ranges that start and end inside clusters, with or without batches. */
async function readAll(image: Uint8Array, batches: boolean): Promise<{ whole: Uint8Array | string; parts: (Uint8Array | string)[] }> {
  const saved = batches ? undefined : setQcow2Codecs({ ...qcow2Codecs(), inflateRawMany: undefined });
  try {
    const disk = await openQcow2(MemoryStorage.from(image, { name: 'c.qcow2' }));
    try {
      const whole = await disk.read(0, disk.size).catch((e: Error) => e.message);
      const parts: (Uint8Array | string)[] = [];
      for (const [at, n] of [
        [100, 5 * CS],
        [2 * MiB - 7, 3 * MiB],
        [5 * MiB + 3, CS],
      ] as const) {
        parts.push(await disk.read(at, n).catch((e: Error) => e.message));
      }
      return { whole, parts };
    } finally {
      await disk.close();
    }
  } finally {
    if (saved) setQcow2Codecs(saved);
  }
}

describe('runs of whole compressed clusters read and inflated together', () => {
  const dir = tempDir('qcow2-cruns-');
  afterAll(() => dir.cleanup());
  const data = guest();
  const raw = join(dir.path, 'g.raw');
  const path = join(dir.path, 'g.qcow2');
  writeFileSync(raw, data);
  qemuImg(['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', raw, path]);
  const q = readQcow2Bytes(path);
  const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
  const COMPRESSED = 1n << 62n;
  const SECTORS_SHIFT = 62n - (16n - 8n);

  it('read what qemu-img wrote, with the native batches and one cluster at a time alike', async () => {
    if (process.env.CI) expect(nativeInflateAvailable()).toBe(true);
    expect(entryAt(q, l2 + 8 * 40) & COMPRESSED).toBe(COMPRESSED);
    expect(entryAt(q, l2 + 8 * 70) & COMPRESSED).toBe(COMPRESSED);
    expect(Number((entryAt(q, l2 + 8 * 70) >> SECTORS_SHIFT) & 0xffn)).toBeGreaterThan(20);
    const many = await readAll(q.bytes, true);
    const one = await readAll(q.bytes, false);
    expect(typeof many.whole).not.toBe('string');
    expect(Buffer.from(many.whole as Uint8Array).equals(Buffer.from(data))).toBe(true);
    expect(Buffer.from(one.whole as Uint8Array).equals(Buffer.from(data))).toBe(true);
    const [a, b, c] = many.parts as Uint8Array[];
    expect(Buffer.from(a!).equals(Buffer.from(data.subarray(100, 100 + 5 * CS)))).toBe(true);
    expect(Buffer.from(b!).equals(Buffer.from(data.subarray(2 * MiB - 7, 5 * MiB - 7)))).toBe(true);
    expect(Buffer.from(c!).equals(Buffer.from(data.subarray(5 * MiB + 3, 5 * MiB + 3 + CS)))).toBe(true);
  });

  it('a bad stream and a stream cut short by its sector count fail with the same sentence either way', async () => {
    const cases: [string, (b: Uint8Array, v: DataView) => void, RegExp][] = [
      [
        'garbage in the stream of cluster 40',
        (b, v) => {
          const host = Number(v.getBigUint64(l2 + 8 * 40) & ((1n << SECTORS_SHIFT) - 1n));
          b.fill(0xff, host, host + 16);
        },
        /compressed cluster at 0x[0-9a-f]+ is not a valid deflate stream \(invalid (block type|distance too far back|stored block lengths)\)/,
      ],
      [
        'the sector count of cluster 70 cut to one',
        (_, v) => {
          const e = v.getBigUint64(l2 + 8 * 70);
          v.setBigUint64(l2 + 8 * 70, e & ~(((1n << 8n) - 1n) << SECTORS_SHIFT));
        },
        /compressed cluster at 0x[0-9a-f]+ inflates to \d+ bytes instead of one cluster \(65536\)/,
      ],
    ];
    for (const [what, patch, pattern] of cases) {
      const bytes = q.bytes.slice();
      patch(bytes, new DataView(bytes.buffer));
      const many = await readAll(bytes, true);
      const one = await readAll(bytes, false);
      expect(many.whole, what).toMatch(pattern);
      expect(many.whole, what).toBe(one.whole);
      expect(many.parts, what).toEqual(one.parts);
    }
  });
});
