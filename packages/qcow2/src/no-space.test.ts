// A write that finds the device full gives back the clusters it had allocated, as qemu's allocation abort does: a
// guest write, a compressed write, a snapshot create or apply (with a dirty bitmap to update), a bitmap add, a resize
// that moves the L1 table and a change of refcount width, on a storage that refuses to grow past a limit (ENOSPC),
// leave an image that reads as before and that img's check and `qemu-img check` find clean (no leaks, exit 0, not 3).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { fullAt, qemuCheck, seededBytes, tempDir } from '@img/testkit';
import { amendQcow2 } from './amend.js';
import { addQcow2Bitmap } from './bitmap-edit.js';
import { checkQcow2 } from './check-qcow2.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-qcow2-no-space-');
afterAll(() => tmp.cleanup());
const KIB = 1024;
const MIB = 1024 * KIB;

/** A 16 MiB image with 1 MiB of data at 0; its bytes. */
async function imageWithData(): Promise<Uint8Array> {
  const storage = new MemoryStorage({ name: 'full.qcow2' });
  const disk = await createQcow2(storage, { size: 16 * MIB });
  await disk.write(0, seededBytes(MIB, 1));
  await disk.close();
  return storage.toBytes();
}

/** Neither img's check nor qemu-img check finds anything in `bytes`, and the data at 0 reads as written. */
async function expectClean(bytes: Uint8Array, label: string): Promise<void> {
  const ours = await checkQcow2(MemoryStorage.from(bytes, { name: 'full.qcow2' }));
  expect({ leaks: ours.leaks, corruptions: ours.corruptions }, `${label}: img check: ${ours.messages.slice(0, 3).join('; ')}`).toEqual({ leaks: 0, corruptions: 0 });
  const disk = await openQcow2(MemoryStorage.from(bytes, { name: 'full.qcow2' }));
  expect(Buffer.from(await disk.read(0, MIB)).equals(Buffer.from(seededBytes(MIB, 1)))).toBe(true);
  await disk.close();
  const file = join(tmp.path, `${label.replace(/\W+/g, '-')}.qcow2`);
  writeFileSync(file, bytes);
  const q = qemuCheck(file, 'qcow2');
  expect(q.status, `${label}: qemu-img check: ${q.stderr}`).toBe(0);
}

describe('qcow2 on a full device: what a failed write allocated is given back', () => {
  it('a guest write that cannot land leaves no leaked clusters', async () => {
    const inner = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    const disk = await openQcow2(fullAt(inner, inner.toBytes().length + 256 * KIB), { readOnly: false });
    await expect(disk.write(4 * MIB, seededBytes(2 * MIB, 2))).rejects.toThrow(/ENOSPC/);
    await disk.close();
    await expectClean(inner.toBytes(), 'guest write');
  });

  it('a snapshot that cannot be written leaves no leaked clusters and no snapshot', async () => {
    const inner = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    const disk = await openQcow2(fullAt(inner, inner.toBytes().length + 64 * KIB), { readOnly: false });
    await expect(disk.createSnapshot('s1')).rejects.toThrow(/ENOSPC/);
    await disk.close();
    const bytes = inner.toBytes();
    await expectClean(bytes, 'snapshot');
    const again = await openQcow2(MemoryStorage.from(bytes, { name: 'full.qcow2' }));
    expect(again.snapshots).toEqual([]);
    await again.close();
  });

  it('a compressed write that cannot land leaves no leaked clusters', async () => {
    const inner = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    const disk = await openQcow2(fullAt(inner, inner.toBytes().length), { readOnly: false });
    const text = new TextEncoder().encode('compressible words, '.repeat(4000)).subarray(0, 64 * KIB);
    await expect(disk.writeCompressed(4 * MIB, text)).rejects.toThrow(/ENOSPC/);
    await disk.close();
    await expectClean(inner.toBytes(), 'compressed');
  });

  it('a snapshot apply whose dirty bitmap cannot be updated leaves no leaked clusters', async () => {
    const storage = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.createSnapshot('s1');
    await disk.close();
    const marked = MemoryStorage.from(storage.toBytes(), { name: 'full.qcow2' });
    await addQcow2Bitmap(marked, 'b');
    const inner = MemoryStorage.from(marked.toBytes(), { name: 'full.qcow2' });
    const full = await openQcow2(fullAt(inner, inner.toBytes().length), { readOnly: false });
    await full.applySnapshot('s1').catch(() => undefined);
    await full.close().catch(() => undefined);
    await expectClean(inner.toBytes(), 'snapshot apply');
  });

  it('a resize that moves the L1 table, and a change of refcount width, leave no leaked clusters', async () => {
    const inner = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    const disk = await openQcow2(fullAt(inner, inner.toBytes().length + 4 * KIB), { readOnly: false });
    await expect(disk.resize(64 * 1024 * MIB)).rejects.toThrow(/ENOSPC/);
    await disk.close();
    await expectClean(inner.toBytes(), 'resize');
    const again = MemoryStorage.from(inner.toBytes(), { name: 'full.qcow2' });
    await expect(amendQcow2(fullAt(again, again.toBytes().length + 4 * KIB), { refcountBits: 64 })).rejects.toThrow(/ENOSPC/);
    await expectClean(again.toBytes(), 'refcount width');
  });

  it('a bitmap that cannot be written leaves no leaked clusters', async () => {
    const inner = MemoryStorage.from(await imageWithData(), { name: 'full.qcow2' });
    await expect(addQcow2Bitmap(fullAt(inner, inner.toBytes().length + 64 * KIB), 'b')).rejects.toThrow(/ENOSPC/);
    await expectClean(inner.toBytes(), 'bitmap');
  });
});
