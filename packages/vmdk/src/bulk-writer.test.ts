import { describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual, collectExtents } from '@img/block';
import { seededBytes } from '@img/testkit';
import { createVmdkFresh } from './bulk-writer.js';
import { checkVmdk } from './check.js';
import { openVmdk } from './open.js';

const MiB = 1024 * 1024;
const GRAIN = 65536;

async function fresh(storage: MemoryStorage, size = 8 * MiB) {
  const w = await createVmdkFresh(storage, { size });
  if (!w) throw new Error('no bulk writer for monolithicSparse');
  return w;
}

async function expectClean(bytes: Uint8Array): Promise<void> {
  const r = await checkVmdk(MemoryStorage.from(bytes, { name: 'x.vmdk', readOnly: true }));
  expect({ corruptions: r.corruptions, leaks: r.leaks }).toEqual({ corruptions: 0, leaks: 0 });
}

describe('the VMDK bulk writer (a new monolithicSparse image written by one copy)', () => {
  it('declines what needs the general writer: other subformats, zeroed_grain, a parent', async () => {
    for (const options of [{ subformat: 'streamOptimized' }, { subformat: 'monolithicFlat' }, { zeroedGrain: true }, { backingFile: 'p.vmdk' }]) {
      expect(await createVmdkFresh(new MemoryStorage({ name: 'd.vmdk' }), { size: MiB, ...options }), JSON.stringify(options)).toBeUndefined();
    }
  });

  it('until finish() the file is the empty image (a crash leaves it, reading as zeros); abort() cuts the grains off', async () => {
    const storage = new MemoryStorage({ name: 'e.vmdk' });
    const w = await fresh(storage);
    const emptySize = storage.toBytes().length;
    await w.write(3 * MiB, seededBytes(200_000, 1));
    const during = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'e.vmdk', readOnly: true }));
    expect(bytesEqual(await during.read(0, during.size), new Uint8Array(during.size))).toBe(true);
    await during.close();
    expect(storage.toBytes().length).toBeGreaterThan(emptySize + 3 * GRAIN);
    await w.abort();
    expect(storage.toBytes().length).toBe(emptySize);
    await expectClean(storage.toBytes());
  });

  it('gives back grains a zero-skipping copy wrote nothing into, grains covered in part at finish, and closes the gaps in guest order', async () => {
    const storage = new MemoryStorage({ name: 'g.vmdk' });
    const w = await fresh(storage);
    const model = new Uint8Array(w.size);
    // Placed before either is settled, as two batches in flight: 1 MiB of written zeros, then 1 MiB of data.
    const zeros = w.placeRuns!(MiB, MiB);
    const head = w.placeRuns!(0, 4096);
    const data = w.placeRuns!(4 * MiB, MiB);
    const d = seededBytes(MiB, 2);
    model.set(d, 4 * MiB);
    await storage.write(data[1]!, d);
    await w.settleRuns!(Float64Array.of(MiB, zeros[1]!, zeros[2]!, 0, head[1]!, 4096));
    const disk = await w.finish();
    expect(bytesEqual(await disk.read(0, disk.size), model)).toBe(true);
    const extents = (await collectExtents(disk.extents({ hostOffsets: true }))).filter((e) => e.kind === 'data');
    expect(extents.map((e) => [e.offset, e.length])).toEqual([[4 * MiB, MiB]]);
    // The 16 grains lie in guest order from the first grain's place.
    expect(extents[0]!.hostOffset).toBe(zeros[1]);
    await disk.close();
    await expectClean(storage.toBytes());
  });
});
