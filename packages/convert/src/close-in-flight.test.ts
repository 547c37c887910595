// close() while operations are in flight (audit-api finding 1): every format's Disk waits for the operations called
// before close() to settle, then flushes and closes; operations called after it are ERR_IMG_CLOSED. Before, VHD and
// VMDK closed the file under a write already started (ERR_IMG_CLOSED "file is closed", the data lost, and an
// unawaited write ended the process), and qcow2 refused most of 200 overlapping writes and leaked clusters.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, qemuCheck, qemuCompare, tempDir } from '@img/testkit';
import { FileStorage } from '@img/block/node';
import { checkVhd } from '@img/vhd';
import { openImageFile } from './node.js';
import { EVERY_FORMAT, makeEveryFormat } from './test/every-format.js';

const MiB = 1024 * 1024;
const FORMATS = EVERY_FORMAT;

describeQemu('close() with operations in flight', () => {
  const tmp = tempDir('img-close-in-flight-');
  const at = (name: string) => join(tmp.path, name);
  afterAll(() => tmp.cleanup());

  beforeAll(() => makeEveryFormat(at, ['write -P 0x55 0 1M', 'write -P 0x66 8M 128k']));

  for (const [format, ext, qemuFormat] of FORMATS) {
    it(`${format}: 200 unawaited writes, then close: all resolve, the data is there, qemu-img check is clean`, async () => {
      const file = at(`c.${ext}`);
      writeFileSync(file, readFileSync(at(`disk.${ext}`)));
      const model = new Uint8Array(readFileSync(at('disk.img')));
      const d = await openImageFile(file, { readOnly: false });
      const writes: Promise<string>[] = [];
      for (let k = 0; k < 200; k++) {
        // Overlapping 4 KiB .. 68 KiB writes spread over the disk (new clusters, grains and blocks, and ones in use).
        const offset = ((k * 7919) % 480) * 65536 + (k % 3) * 512;
        const data = new Uint8Array(4096 + (k % 17) * 4096).fill((k % 250) + 1);
        model.set(data, offset);
        writes.push(
          d.write(offset, data).then(
            () => 'ok',
            (e: { code?: string; message?: string }) => `${e.code}: ${e.message}`,
          ),
        );
      }
      await d.close();
      expect(new Set(await Promise.all(writes))).toEqual(new Set(['ok']));
      // Called after close: refused, and a second close is quiet.
      await expect(d.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
      await expect(d.read(0, 512)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
      await expect(d.flush()).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
      expect(() => d.extents()).toThrow(expect.objectContaining({ code: 'ERR_IMG_CLOSED' }) as Error);
      await d.close();
      if (format === 'vhd') {
        // qemu-img cannot check a VHD: img's own check, which follows qemu's rules for the other formats.
        const storage = await FileStorage.open(file);
        const check = await checkVhd(storage);
        await storage.close();
        expect(check.messages).toEqual([]);
        expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      } else if (format !== 'raw') {
        const check = qemuCheck(file, qemuFormat);
        expect(check.status, check.stderr).toBe(0);
        expect(check.result?.['leaks'] ?? 0).toBe(0);
        expect(check.result?.['corruptions'] ?? 0).toBe(0);
      }
      writeFileSync(at(`model-${format}.raw`), model);
      expect(qemuCompare(file, at(`model-${format}.raw`), qemuFormat, 'raw')).toBe(true);
    });

    it(`${format}: one unawaited write, then close: the write resolves (no unhandled rejection), nothing else is refused`, async () => {
      const file = at(`one.${ext}`);
      writeFileSync(file, readFileSync(at(`disk.${ext}`)));
      const d = await openImageFile(file, { readOnly: false });
      const w = d.write(0, new Uint8Array(4096).fill(1));
      const r = d.read(8 * MiB, 4096);
      const f = d.flush();
      const closing = d.close();
      // Called once close() has started: refused, although the close has not finished.
      const late = d.write(4096, new Uint8Array(512)).then(
        () => 'resolved',
        (e: { code?: string }) => e.code,
      );
      await closing;
      await expect(w).resolves.toBeUndefined();
      expect((await r).every((b) => b === 0x66)).toBe(true);
      await expect(f).resolves.toBeUndefined();
      expect(await late).toBe('ERR_IMG_CLOSED');
      const again = await openImageFile(file);
      expect((await again.read(0, 4096)).every((b) => b === 1)).toBe(true);
      expect((await again.read(4096, 4096)).every((b) => b === 0x55)).toBe(true);
      await again.close();
    });
  }
});
