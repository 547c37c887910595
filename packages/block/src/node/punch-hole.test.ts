import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { seededBytes, tempDir } from '@img/testkit';
import { openRaw } from '../raw.js';
import { FileStorage } from './file-storage.js';
import { seekAddon } from './seek.js';

const MiB = 1024 * 1024;
const native = typeof seekAddon()?.punchHole === 'function';
if (!native) console.warn('native helper without punchHole: FileStorage has no punchHole here, and RawDisk.writeZeroes writes zeros (fallback)');

describe('FileStorage.punchHole', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  it('is present exactly when the helper has punchHole, and never on a read-only open', async () => {
    const path = join(tmp.path, 'present.bin');
    writeFileSync(path, new Uint8Array(4096));
    // One open at a time: a writable open of a file this process also reads is refused (the same-file guard).
    const rw = await FileStorage.open(path, { readOnly: false });
    expect(typeof rw.punchHole === 'function').toBe(native);
    await rw.close();
    const ro = await FileStorage.open(path);
    expect(ro.punchHole).toBeUndefined();
    await ro.close();
  });

  it.skipIf(!native)('makes an unaligned range read as zeros, keeps the size and the bytes around it, and gives back the whole blocks inside', async () => {
    const path = join(tmp.path, 'data.bin');
    const bytes = seededBytes(8 * MiB, 11);
    writeFileSync(path, bytes);
    execFileSync('sync', [path]);
    const before = statSync(path).blocks * 512;
    const s = await FileStorage.open(path, { readOnly: false });
    const from = MiB + 1234;
    const length = 3 * MiB + 777;
    expect(await s.punchHole!(from, length)).toBe(true);
    await s.close();
    // Read back by another open of the file, not through the storage that punched.
    const after = readFileSync(path);
    const expected = Buffer.from(bytes);
    expected.fill(0, from, from + length);
    expect(after.length).toBe(8 * MiB);
    expect(Buffer.compare(after, expected)).toBe(0);
    // At least the whole 64 KiB pieces inside the range went back (file systems allocate in 4 KiB or larger blocks).
    const freed = before - statSync(path).blocks * 512;
    expect(freed).toBeGreaterThanOrEqual(3 * MiB - 128 * 1024);
    expect(freed).toBeLessThanOrEqual(length + 128 * 1024);
  });

  it.skipIf(!native)('lets RawDisk.writeZeroes deallocate instead of writing zeros, and write them where asked not to unmap', async () => {
    const path = join(tmp.path, 'raw.img');
    writeFileSync(path, seededBytes(4 * MiB, 12));
    execFileSync('sync', [path]);
    const disk = await openRaw(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await disk.writeZeroes(MiB, 2 * MiB);
    await disk.writeZeroes(3 * MiB, MiB, { mayUnmap: false });
    await disk.flush();
    expect((await disk.read(MiB, 3 * MiB)).every((b) => b === 0)).toBe(true);
    await disk.close();
    execFileSync('sync', [path]);
    // The punched 2 MiB are gone from the file's blocks; the zeros written without unmapping are still there.
    expect(statSync(path).blocks * 512).toBeLessThanOrEqual(2 * MiB + 64 * 1024);
    const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', path]).toString()) as { start: number; length: number; data: boolean }[];
    const holes = map.filter((m) => !m.data);
    expect(holes.some((m) => m.start <= MiB && m.start + m.length >= 3 * MiB)).toBe(true);
  });

  it.skipIf(!native)('refuses a closed storage and bad numbers', async () => {
    const path = join(tmp.path, 'closed.bin');
    writeFileSync(path, new Uint8Array(8192));
    const s = await FileStorage.open(path, { readOnly: false });
    await expect(s.punchHole!(-1, 10)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(s.punchHole!(0, 1.5)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await s.close();
    await expect(s.punchHole!(0, 4096)).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });
});
