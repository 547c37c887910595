// Resizing a qcow2 image with persistent bitmaps (resize, and amend -o size=, which resizes), judged against
// qemu-img resize on the same input: the same bitmap list (names, granularity, flags), the same dirty bits (read by
// qemu through qemu-nbd), qemu-img check clean. Then crash ordering: a crash after any write leaves an image qemu-img
// check calls clean whose bitmaps are the old ones, the resized ones, or marked in use (inconsistent, as qemu's own
// resize leaves them in between).
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeWith, FaultStorage, killedBytes, qemuBitmapList, qemuCheck, qemuDirtyBitmap, qemuImg, qemuIo, seededRandom, setQcow2BitmapInUse, tempDir, type CrashMode } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-qcow2-bitmap-resize-');
afterAll(() => tmp.cleanup());

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A 16 MiB image with an enabled bitmap (64 KiB granularity) and a disabled one (512 bytes), both with bits set. */
function base(name: string): string {
  const file = join(tmp.path, name);
  qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
  qemuImg(['bitmap', '--add', file, 'b0']);
  qemuImg(['bitmap', '--add', '-g', '512', '--disable', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 1 0 64k', 'write -P 1 15M 1M']);
  qemuImg(['bitmap', '--merge', 'b0', file, 'b1']);
  return file;
}

/**
 * What qemu sees of the bitmaps: list and bits; 'inconsistent' when one of them is marked in use (qemu will not read
 * it) or the image's autoclear bit 0 is clear (qemu ignores them all: the interim state of a cluster 0 switch that
 * takes more than one sector write, see bitmap-edit.ts).
 */
function qemuView(file: string): string {
  const list = qemuBitmapList(file);
  if (list.some((b) => b.flags.includes('in-use')) || (readFileSync(file)[95]! & 1) === 0) return 'inconsistent';
  return JSON.stringify(list.map((b) => ({ ...b, runs: qemuDirtyBitmap(file, b.name) })));
}

function clean(file: string, where: string): void {
  const q = qemuCheck(file, 'qcow2');
  expect(q.result, `${where}: ${q.stderr}`).toBeDefined();
  expect({ corruptions: q.result!.corruptions ?? 0, leaks: q.result!.leaks ?? 0, errors: q.result!['check-errors'] ?? 0 }, `${where}: qemu-img check`).toEqual({ corruptions: 0, leaks: 0, errors: 0 });
}

describeWith('nbdinfo', 'resize with persistent bitmaps, as qemu-img resize', () => {
  const sizes: Array<[string, number]> = [
    ['grow to 32M', 32 << 20],
    ['grow to 20000k (the last bitmap byte partly used)', 20000 * 1024],
    ['shrink to 8M', 8 << 20],
    ['shrink into a dirty granule (15733248)', 15733248],
  ];
  for (const [title, size] of sizes) {
    it(`${title}: bitmaps kept and resized as qemu-img resize leaves them`, async () => {
      const input = base(`in-${size}.qcow2`);
      const ours = join(tmp.path, `ours-${size}.qcow2`);
      const theirs = join(tmp.path, `qemu-${size}.qcow2`);
      writeFileSync(ours, readFileSync(input));
      writeFileSync(theirs, readFileSync(input));
      qemuImg(['resize', '-q', ...(size < 16 << 20 ? ['--shrink'] : []), theirs, String(size)]);
      const disk = await openQcow2(await FileStorage.open(ours, { readOnly: false }), { readOnly: false });
      await disk.resize(size, { shrink: true });
      await disk.close();
      clean(ours, title);
      expect(qemuImg(['info', '--output=json', ours]).stdout.includes('"virtual-size": ' + String(size))).toBe(true);
      expect(qemuView(ours)).toBe(qemuView(theirs));
      expect(qemuBitmapList(ours).map((b) => b.name)).toEqual(['b0', 'b1']);
    });
  }

  it('a bitmap marked in use is left as it is (qemu warns and leaves it); the others are resized', async () => {
    const input = base('in-use.qcow2');
    setQcow2BitmapInUse(input, 'b1');
    const ours = join(tmp.path, 'in-use-ours.qcow2');
    const theirs = join(tmp.path, 'in-use-qemu.qcow2');
    writeFileSync(ours, readFileSync(input));
    writeFileSync(theirs, readFileSync(input));
    // qemu-img resizes, then exits 1 over the bitmap it cannot use ("Bitmap 'b1' is inconsistent and cannot be used"); img exits 0.
    expect(qemuImg(['resize', '-q', theirs, '32M'], { allowFail: true }).stderr).toContain("Bitmap 'b1' is inconsistent");
    const disk = await openQcow2(await FileStorage.open(ours, { readOnly: false }), { readOnly: false });
    await disk.resize(32 << 20);
    await disk.close();
    clean(ours, 'in use');
    expect(qemuBitmapList(ours)).toEqual(qemuBitmapList(theirs));
    // The dirty runs agree; qemu-nbd shows qemu's b0 only up to the old size (qemu stops storing bitmaps at b1), img's over the whole disk.
    const dirty = (file: string) => qemuDirtyBitmap(file, 'b0').filter(([, , d]) => d);
    expect(dirty(ours)).toEqual(dirty(theirs));
    expect(qemuDirtyBitmap(ours, 'b0').at(-1)).toEqual([16 << 20, 16 << 20, false]);
  });

  it('writes before and after a resize in one session set their bits; a preallocating grow sets none', async () => {
    const file = base('session.qcow2');
    const disk = await openQcow2(await FileStorage.open(file, { readOnly: false }), { readOnly: false });
    await disk.write(4 << 20, new Uint8Array(4096).fill(7));
    await disk.resize(24 << 20, { preallocation: 'full' });
    await disk.write(20 << 20, new Uint8Array(4096).fill(8));
    await disk.close();
    clean(file, 'session');
    const dirty = qemuDirtyBitmap(file, 'b0').filter(([, , d]) => d);
    expect(dirty).toEqual([
      [0, 65536, true],
      [4 << 20, 65536, true],
      [15 << 20, 1 << 20, true],
      [20 << 20, 65536, true],
    ]);
  });

  it('every crash image of a grow and a shrink is clean, with the old, the resized or inconsistent bitmaps', { timeout: 300_000 }, async () => {
    const judge = join(tmp.path, 'judge.qcow2');
    const tally = { old: 0, new: 0, inUse: 0 };
    for (const [newSize, shrink] of [
      [32 << 20, false],
      [8 << 20, true],
    ] as const) {
      const start = Uint8Array.from(readFileSync(base(`crash-${newSize}.qcow2`)));
      writeFileSync(judge, start);
      const old = qemuView(judge);
      const fault = new FaultStorage(start, 'resize.qcow2');
      const disk = await openQcow2(fault, { readOnly: false });
      await disk.resize(newSize, { shrink });
      await disk.close();
      writeFileSync(judge, fault.current());
      const done = qemuView(judge);
      expect(done).not.toBe(old);
      const random = seededRandom(5);
      const judged = new Set<string>();
      for (const mode of ['kill', 'drop', 'subset', 'torn'] as Array<CrashMode | 'kill'>) {
        for (let n = 0; n <= fault.ops.length; n++) {
          const bytes = mode === 'kill' ? killedBytes(start, fault.ops, n) : (await fault.crashImage(n, mode, random)).toBytes();
          const key = sha(bytes);
          if (judged.has(key)) continue;
          judged.add(key);
          const where = `${newSize}: crash before op ${n} of ${fault.ops.length} (${mode})`;
          writeFileSync(judge, bytes);
          const q = qemuCheck(judge, 'qcow2');
          expect(q.result, `${where}: ${q.stderr}`).toBeDefined();
          expect({ corruptions: q.result!.corruptions ?? 0, errors: q.result!['check-errors'] ?? 0 }, `${where}: qemu-img check`).toEqual({ corruptions: 0, errors: 0 });
          const ours = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
          expect(ours.corruptions, `${where}: img check: ${ours.messages.slice(0, 3).join('; ')}`).toBe(0);
          const view = qemuView(judge);
          if (view === 'inconsistent') tally.inUse++;
          else if (view === old) tally.old++;
          else if (view === done) tally.new++;
          else expect.fail(`${where}: qemu sees bitmaps that are neither the old nor the resized ones: ${view}`);
        }
      }
    }
    expect(tally.old).toBeGreaterThan(0);
    expect(tally.new).toBeGreaterThan(0);
    expect(tally.inUse).toBeGreaterThan(0);
  });
});
