import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '@img/testkit';
import { MemoryStorage } from '../memory-storage.js';
import { preallocateRange } from '../preallocate.js';
import { FileStorage } from './file-storage.js';
import { seekAddon } from './seek.js';

const MiB = 1024 * 1024;
const native = typeof seekAddon()?.allocateRange === 'function';
if (!native) console.warn('native helper without allocateRange: FileStorage has no allocate here, and falloc writes zeros (fallback)');

describe('FileStorage.allocate and preallocateRange', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('is present exactly when the helper has allocateRange, and never on a read-only open', async () => {
    const path = join(tmp.path, 'present.bin');
    writeFileSync(path, new Uint8Array(4096));
    const rw = await FileStorage.open(path, { readOnly: false });
    expect(typeof rw.allocate === 'function').toBe(native);
    await rw.close();
    const ro = await FileStorage.open(path);
    expect(ro.allocate).toBeUndefined();
    await ro.close();
  });

  it.skipIf(!native)('gives a range its blocks, reading as zeros, growing the file, without touching the bytes before it', async () => {
    const path = join(tmp.path, 'grow.bin');
    writeFileSync(path, new Uint8Array(4096).fill(7));
    const s = await FileStorage.open(path, { readOnly: false });
    expect(await s.allocate!(4096, 8 * MiB)).toBe(true);
    await s.close();
    const st = statSync(path);
    expect(st.size).toBe(4096 + 8 * MiB);
    expect(st.blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
    const back = readFileSync(path);
    expect(back.subarray(0, 4096).every((b) => b === 7)).toBe(true);
    expect(back.subarray(4096).every((b) => b === 0)).toBe(true);
  });

  it('falloc allocates in one call where the storage can and writes nothing; where it cannot, and with full, writes zeros', async () => {
    const writes: number[] = [];
    const make = (canAllocate: boolean | undefined) => {
      const s = new MemoryStorage({ name: 'm' });
      const write = s.write.bind(s);
      s.write = (offset: number, data: Uint8Array) => {
        writes.push(data.length);
        return write(offset, data);
      };
      if (canAllocate !== undefined) (s as { allocate?: (o: number, n: number) => Promise<boolean> }).allocate = () => Promise.resolve(canAllocate);
      return s;
    };
    await preallocateRange(make(true), 0, 10 * MiB, 'falloc');
    expect(writes).toEqual([]);
    await preallocateRange(make(false), 0, 10 * MiB, 'falloc');
    expect(writes.reduce((a, b) => a + b, 0)).toBe(10 * MiB);
    writes.length = 0;
    await preallocateRange(make(true), 0, 5 * MiB, 'full');
    expect(writes.reduce((a, b) => a + b, 0)).toBe(5 * MiB);
    writes.length = 0;
    await preallocateRange(make(undefined), 0, MiB, 'falloc');
    expect(writes.reduce((a, b) => a + b, 0)).toBe(MiB);
  });
});
