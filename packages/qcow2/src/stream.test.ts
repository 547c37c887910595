import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual, concatBytes } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, seededBytes, tempDir } from '@img/testkit';
import { streamQcow2 } from './stream.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { fixtureNames, fixturePath } from '../test/fixtures.js';

async function streamToBytes(it: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of it) parts.push(p);
  return concatBytes(parts);
}

describe('streamQcow2', () => {
  for (const options of [{}, { clusterSize: '4k' }, { clusterSize: 512, refcountBits: 1 }, { compat: 'v2', clusterSize: '8k' }, { extendedL2: true, clusterSize: '32k' }] as const) {
    it(`reads back as its source: ${JSON.stringify(options)}`, async () => {
      const src = await createQcow2(new MemoryStorage(), { size: 3 * 1024 * 1024 + 512, clusterSize: '4k' });
      await src.write(1000, seededBytes(300_000, 1));
      await src.write(2 * 1024 * 1024, seededBytes(5000, 2));
      await src.write(3 * 1024 * 1024, seededBytes(512, 3));
      await src.writeZeroes(1000, 4000);
      const bytes = await streamToBytes(streamQcow2(src, { ...options, chunkSize: 64 * 1024 }));
      const out = await openQcow2(MemoryStorage.from(bytes, { name: 'streamed.qcow2' }));
      expect(out.size).toBe(src.size);
      expect(bytesEqual(await out.read(0, out.size), await src.read(0, src.size))).toBe(true);
      const check = await checkQcow2(MemoryStorage.from(bytes));
      expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
    });
  }
});

describeQemu('streamQcow2 output judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-stream-'));
  });
  afterAll(() => cleanup());

  for (const name of fixtureNames().filter((n) => !n.startsWith('data-file'))) {
    it(`${name}: check clean, compare equal`, async () => {
      const src = await openQcow2(await FileStorage.open(fixturePath(name)), { resolver: fileResolver });
      const out = join(dir, name);
      await pipeline(Readable.from(streamQcow2(src, { clusterSize: '4k' })), createWriteStream(out));
      await src.close();
      expect(qemuCheck(out).status).toBe(0);
      expect(qemuCompare(fixturePath(name), out, 'qcow2', 'qcow2')).toBe(true);
    });
  }
});
