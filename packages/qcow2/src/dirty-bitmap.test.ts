// readQcow2DirtyBitmap: the bits of a persistent bitmap, as img's own writer (which keeps enabled bitmaps) left them,
// and refusals for what cannot be trusted. qemu's view of the same bits (qemu-nbd -B) is compared in @img/nbd's tests.
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { openQcow2 } from './open.js';
import { readQcow2DirtyBitmap } from './bitmaps.js';

const tmp = tempDir('img-qcow2-dirty-');
afterAll(() => tmp.cleanup());

describeQemu('readQcow2DirtyBitmap', () => {
  it('gives the runs img marked dirty, rounded to the granularity, and refuses an unknown or in-use bitmap', async () => {
    const file = join(tmp.path, 'd.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '8M']);
    qemuImg(['bitmap', '--add', '-g', '64k', file, 'b0']);
    const disk = await openQcow2(await FileStorage.open(file, { readOnly: false }), { readOnly: false });
    await disk.write(100_000, new Uint8Array(1000).fill(1)); // granule 1
    await disk.write(3 * 2 ** 20, new Uint8Array(200_000).fill(2)); // granules 48..51
    await disk.flush();
    const storage = await FileStorage.open(file, { forceShare: true }); // beside the writer, as qemu-img -U
    const b0 = await readQcow2DirtyBitmap(storage, 'b0', file);
    expect(b0.granularity).toBe(65536);
    expect(b0.enabled).toBe(true);
    expect(b0.runs(0, 8 * 2 ** 20).map((r) => [r.offset, r.length, r.dirty])).toEqual([
      [0, 65536, false],
      [65536, 65536, true],
      [131072, 3 * 2 ** 20 - 131072, false],
      [3 * 2 ** 20, 4 * 65536, true],
      [3 * 2 ** 20 + 4 * 65536, 5 * 2 ** 20 - 4 * 65536, false],
    ]);
    // A window starts and ends where asked.
    expect(b0.runs(70_000, 100_000).map((r) => [r.offset, r.length, r.dirty])).toEqual([
      [70_000, 131072 - 70_000, true],
      [131072, 170_000 - 131072, false],
    ]);
    await expect(readQcow2DirtyBitmap(storage, 'b9', file)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG', message: expect.stringContaining('"b0"') });
    // A change not yet flushed leaves the bitmap in use on disk: its bits are not to be trusted.
    await disk.write(0, new Uint8Array(512).fill(3));
    const inUse = await readQcow2DirtyBitmap(storage, 'b0', file).then(
      () => undefined,
      (e: unknown) => e as { code: string; message: string; data: { field?: string; offset?: number } },
    );
    expect(inUse).toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringContaining('in use'), data: { field: 'bitmap flags' } });
    // The offset names the entry's 32-bit big-endian flags, whose bit 0 (in_use) the file has set.
    const flags = await storage.read(inUse!.data.offset!, 4);
    expect(flags[3]! & 1).toBe(1);
    await disk.close();
    expect((await readQcow2DirtyBitmap(storage, 'b0', file)).runs(0, 65536)[0]!.dirty).toBe(true);
    await storage.close();
  });
});
