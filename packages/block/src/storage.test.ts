import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { tempDir } from '@img/testkit';
import { MemoryStorage } from './memory-storage.js';
import { FileStorage } from './node/file-storage.js';
import type { Storage } from './storage.js';
import { bytesEqual } from './bytes.js';
import { ImageError } from './errors.js';

type Op = { op: 'write'; pos: number; len: number; seed: number } | { op: 'truncate'; size: number } | { op: 'read'; pos: number; len: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('write' as const), pos: fc.integer({ min: 0, max: 300_000 }), len: fc.integer({ min: 0, max: 70_000 }), seed: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ op: fc.constant('truncate' as const), size: fc.integer({ min: 0, max: 400_000 }) }),
  fc.record({ op: fc.constant('read' as const), pos: fc.integer({ min: 0, max: 400_000 }), len: fc.integer({ min: 0, max: 70_000 }) }),
);

/** Runs ops against a storage and a flat model; checks every read. */
async function checkAgainstModel(storage: Storage, ops: Op[]): Promise<void> {
  let model = new Uint8Array(0);
  for (const o of ops) {
    if (o.op === 'write') {
      const data = new Uint8Array(o.len).map((_, i) => (i * o.seed + 1) & 0xff);
      await storage.write(o.pos, data);
      if (o.pos + o.len > model.length) {
        const grown = new Uint8Array(o.pos + o.len);
        grown.set(model);
        model = grown;
      }
      model.set(data, o.pos);
    } else if (o.op === 'truncate') {
      await storage.truncate(o.size);
      const next = new Uint8Array(o.size);
      next.set(model.subarray(0, o.size));
      model = next;
    } else {
      const got = await storage.read(o.pos, o.len);
      const expected = model.subarray(Math.min(o.pos, model.length), Math.min(o.pos + o.len, model.length));
      expect(bytesEqual(got, expected)).toBe(true);
      const target = new Uint8Array(o.len).fill(0xee);
      const n = await storage.readInto(o.pos, target);
      expect(n).toBe(expected.length);
      expect(bytesEqual(target.subarray(0, n), expected)).toBe(true);
    }
    expect(await storage.size()).toBe(model.length);
  }
  expect(bytesEqual(await storage.read(0, model.length), model)).toBe(true);
}

describe('MemoryStorage', () => {
  it('behaves like a flat byte array under random writes, truncates and reads', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 25 }), async (ops) => {
        await checkAgainstModel(new MemoryStorage(), ops);
      }),
      { seed: 7, numRuns: 150 },
    );
  });

  it('reports holes through ranges() and punches holes', async () => {
    const s = new MemoryStorage();
    await s.truncate(1024 * 1024);
    await s.write(200_000, new Uint8Array(10).fill(1));
    const ranges = await s.ranges(0, 1024 * 1024);
    expect(ranges.filter((r) => r.data)).toEqual([{ offset: 196_608, length: 65_536, data: true }]);
    expect(ranges.reduce((n, r) => n + r.length, 0)).toBe(1024 * 1024);
    await s.punchHole(0, 1024 * 1024);
    expect((await s.ranges(0, 1024 * 1024)).every((r) => !r.data)).toBe(true);
    expect((await s.read(200_000, 10)).every((b) => b === 0)).toBe(true);
  });

  it('refuses writes when read-only and use after close', async () => {
    const s = MemoryStorage.from(new Uint8Array([1, 2, 3]), { readOnly: true });
    await expect(s.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
    await s.close();
    await expect(s.size()).rejects.toSatisfy((e: unknown) => ImageError.isInstance(e) && e.code === 'ERR_IMG_CLOSED');
  });

  it('keeps its bytes after close: toBytes answers them (an image written in memory is read out after its Disk closed it)', async () => {
    const s = new MemoryStorage();
    await s.write(70_000, new Uint8Array([7, 8, 9]));
    await s.close();
    const bytes = s.toBytes();
    expect(bytes.length).toBe(70_003);
    expect([...bytes.subarray(70_000)]).toEqual([7, 8, 9]);
    expect(bytes.subarray(0, 70_000).every((b) => b === 0)).toBe(true);
  });

  it('costs only what is written for a huge sparse size', async () => {
    const s = new MemoryStorage();
    await s.truncate(2 ** 40);
    await s.write(2 ** 40 - 5, new Uint8Array([1, 2, 3, 4, 5]));
    expect(await s.read(2 ** 40 - 6, 6)).toEqual(new Uint8Array([0, 1, 2, 3, 4, 5]));
  });
});

describe('FileStorage', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());
  let n = 0;

  it('behaves like a flat byte array under random writes, truncates and reads', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 15 }), async (ops) => {
        const s = await FileStorage.create(join(tmp.path, `f${n++}.bin`));
        try {
          await checkAgainstModel(s, ops);
          await s.flush();
        } finally {
          await s.close();
        }
      }),
      { seed: 11, numRuns: 40 },
    );
  });

  it('writes several buffers with writev and keeps truncation sparse', async () => {
    const path = join(tmp.path, 'v.bin');
    const s = await FileStorage.create(path);
    await s.truncate(64 * 1024 * 1024);
    await s.writev(4096, [new Uint8Array([1, 2]), new Uint8Array([3]), new Uint8Array(0), new Uint8Array([4, 5, 6])]);
    expect(await s.read(4096, 7)).toEqual(new Uint8Array([1, 2, 3, 4, 5, 6, 0]));
    await s.close();
    expect(statSync(path).blocks * 512).toBeLessThan(1024 * 1024);
  });

  it('maps a missing file to ERR_IMG_NOT_FOUND naming the path', async () => {
    const path = join(tmp.path, 'missing.img');
    await expect(FileStorage.open(path)).rejects.toMatchObject({ code: 'ERR_IMG_NOT_FOUND', message: expect.stringContaining(path) });
  });

  it('refuses writes through a read-only handle', async () => {
    const path = join(tmp.path, 'ro.bin');
    await (await FileStorage.create(path)).close();
    const s = await FileStorage.open(path);
    await expect(s.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
    await s.close();
  });
});
