// editQcow2Bitmaps against qemu-img bitmap: every operation is done by both on copies of one image, and the
// results compared through qemu (qemu-img info's bitmap list, the bits through qemu-nbd -B + nbdinfo --map),
// with qemu-img check clean after ours. Refusals carry qemu-img's wording.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeWith, qemuBitmapList, qemuCheck, qemuDirtyBitmap, qemuImg, qemuInfo, qemuIo, setQcow2BitmapInUse, tempDir, withStorage } from '@img/testkit';
import { editQcow2Bitmaps, type Qcow2BitmapOp } from './bitmap-edit.js';
import { readQcow2DirtyBitmap } from './bitmaps.js';

const tmp = tempDir('img-qcow2-bitmap-edit-');
afterAll(() => tmp.cleanup());
const at = (name: string) => join(tmp.path, name);

/** An 8 MiB image with bitmaps b0 (64 KiB, enabled, dirty in three places) and b1 (4 KiB, disabled, dirty in one). */
function base(): string {
  const file = at('base.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', file, '8M']);
  qemuImg(['bitmap', '--add', '-g', '64k', file, 'b0']);
  qemuImg(['bitmap', '--add', '-g', '4k', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 1 100000 1000', 'write -P 2 3M 200000']);
  qemuImg(['bitmap', '--disable', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 3 7M 4096']);
  return file;
}

/** qemu-img bitmap's arguments for each operation (the bitmap name last). */
function qemuArgs(ops: Qcow2BitmapOp[]): string[][] {
  return ops.map((o) => {
    switch (o.op) {
      case 'add':
        return ['--add', ...(o.granularity ? ['-g', String(o.granularity)] : []), ...(o.disabled ? ['--disable'] : []), o.name];
      case 'merge':
        return ['--merge', String(o.source), o.name];
      default:
        return [`--${o.op}`, o.name];
    }
  });
}

/** What qemu sees of every bitmap of a file. */
function seen(file: string) {
  return qemuBitmapList(file).map((b) => ({ ...b, runs: b.flags.includes('in-use') ? [] : qemuDirtyBitmap(file, b.name) }));
}

let n = 0;
async function both(ops: Qcow2BitmapOp[], from = base()) {
  const ours = at(`ours-${n}.qcow2`);
  const theirs = at(`theirs-${n++}.qcow2`);
  copyFileSync(from, ours);
  copyFileSync(from, theirs);
  // qemu-img bitmap takes one bitmap name per call: one call per operation, in order.
  for (const args of qemuArgs(ops)) {
    const name = args.pop()!;
    qemuImg(['bitmap', ...args, theirs, name]);
  }
  await withStorage(FileStorage.open(ours, { readOnly: false }), (s) => editQcow2Bitmaps(s, ops));
  return { ours, theirs };
}

describeWith('nbdinfo', 'editQcow2Bitmaps against qemu-img bitmap', () => {
  const cases: Array<[string, Qcow2BitmapOp[]]> = [
    ['add (default granularity)', [{ op: 'add', name: 'new' }]],
    ['add -g 128k --disable', [{ op: 'add', name: 'new', granularity: 131072, disabled: true }]],
    ['remove', [{ op: 'remove', name: 'b0' }]],
    [
      'remove both (the extension goes)',
      [
        { op: 'remove', name: 'b0' },
        { op: 'remove', name: 'b1' },
      ],
    ],
    ['clear', [{ op: 'clear', name: 'b0' }]],
    [
      'disable, enable',
      [
        { op: 'disable', name: 'b0' },
        { op: 'enable', name: 'b1' },
      ],
    ],
    ['merge into a finer bitmap', [{ op: 'merge', name: 'b1', source: 'b0' }]],
    ['merge into a coarser bitmap', [{ op: 'merge', name: 'b0', source: 'b1' }]],
    [
      'add, merge, clear the source, in one call',
      [
        { op: 'add', name: 'm', granularity: 1 << 20 },
        { op: 'merge', name: 'm', source: 'b1' },
        { op: 'merge', name: 'm', source: 'b0' },
        { op: 'clear', name: 'b0' },
      ],
    ],
  ];
  for (const [title, ops] of cases) {
    it(`${title}: the same bitmaps and bits as qemu-img, and qemu-img check clean`, async () => {
      const { ours, theirs } = await both(ops);
      expect(seen(ours)).toEqual(seen(theirs));
      const check = qemuCheck(ours, 'qcow2');
      expect(check.status, check.stderr).toBe(0);
      expect(check.result).not.toHaveProperty('leaks');
    });
  }

  it('merges a bitmap of another image (-b), as qemu-img does', async () => {
    const other = at('other.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', other, '8M']);
    qemuImg(['bitmap', '--add', '-g', '16k', other, 'x']);
    qemuIo(other, 'qcow2', ['write 5M 70000']);
    const ours = at('merge-b-ours.qcow2');
    const theirs = at('merge-b-theirs.qcow2');
    copyFileSync(base(), ours);
    copyFileSync(at('base.qcow2'), theirs);
    qemuImg(['bitmap', '--merge', 'x', '-b', other, '-F', 'qcow2', theirs, 'b0']);
    const src = await withStorage(FileStorage.open(other, { readOnly: true }), (s) => readQcow2DirtyBitmap(s, 'x', other));
    await withStorage(FileStorage.open(ours, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op: 'merge', name: 'b0', source: src }]));
    expect(seen(ours)).toEqual(seen(theirs));
    expect(qemuCheck(ours, 'qcow2').status).toBe(0);
    // Different virtual sizes: refused with qemu's sentence.
    qemuImg(['create', '-q', '-f', 'qcow2', at('small.qcow2'), '4M']);
    qemuImg(['bitmap', '--add', at('small.qcow2'), 's']);
    const small = await withStorage(FileStorage.open(at('small.qcow2'), { readOnly: true }), (s) => readQcow2DirtyBitmap(s, 's'));
    await expect(withStorage(FileStorage.open(ours, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op: 'merge', name: 'b0', source: small }]))).rejects.toMatchObject({
      code: 'ERR_IMG_INVALID_ARG',
      message: expect.stringContaining("Bitmaps are of different sizes (destination size is 8388608, source size is 4194304) and can't be merged"),
    });
  });

  it('refuses what qemu-img refuses, with its words, and leaves the image unchanged', async () => {
    const file = base();
    const v2 = at('v2.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '8M']);
    const long = 'x'.repeat(1024);
    const refusals: Array<[string, string, Qcow2BitmapOp[], string[]]> = [
      [file, 'Bitmap already exists: b0', [{ op: 'add', name: 'b0' }], ['--add', file, 'b0']],
      [file, "Dirty bitmap 'nope' not found", [{ op: 'remove', name: 'nope' }], ['--remove', file, 'nope']],
      [file, "Dirty bitmap 'nope' not found", [{ op: 'merge', name: 'b0', source: 'nope' }], ['--merge', 'nope', file, 'b0']],
      [file, 'Granularity must be power of 2 and at least 512', [{ op: 'add', name: 'g', granularity: 256 }], ['--add', '-g', '256', file, 'g']],
      [file, 'Granularity must be power of 2 and at least 512', [{ op: 'add', name: 'g', granularity: 3000 }], ['--add', '-g', '3000', file, 'g']],
      [file, 'Bitmap name cannot be empty', [{ op: 'add', name: '' }], ['--add', file, '']],
      [file, 'Name length exceeds maximum (1023 characters)', [{ op: 'add', name: long }], ['--add', file, long]],
      [v2, 'Cannot store dirty bitmaps in qcow2 v2 files', [{ op: 'add', name: 'b' }], ['--add', v2, 'b']],
      // An op after a good one fails: ours changes nothing (qemu-img keeps the first).
      [
        file,
        "Dirty bitmap 'z' not found",
        [
          { op: 'add', name: 'y' },
          { op: 'clear', name: 'z' },
        ],
        ['--clear', file, 'z'],
      ],
    ];
    for (const [target, words, ops, args] of refusals) {
      const before = readFileSync(target);
      await expect(withStorage(FileStorage.open(target, { readOnly: false }), (s) => editQcow2Bitmaps(s, ops))).rejects.toMatchObject({ message: expect.stringContaining(words) });
      expect(readFileSync(target).equals(before)).toBe(true);
      // qemu-img on a copy (it may keep what came before the failing operation).
      copyFileSync(target, at('refused.qcow2'));
      const q = qemuImg(['bitmap', ...args.map((a) => (a === target ? at('refused.qcow2') : a))], { allowFail: true });
      expect(q.status).toBe(1);
      expect(q.stderr).toContain(words);
    }
  });

  it('works on images with lazy refcounts (left dirty too), an external data file, and a 1 TiB disk', async () => {
    const lazy = at('lazy.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', lazy, '8M']);
    qemuImg(['bitmap', '--add', lazy, 'b0']);
    qemuIo(lazy, 'qcow2', ['write 1M 64k']);
    const dirty = at('lazy-dirty.qcow2');
    copyFileSync(lazy, dirty);
    // A writer that stopped without closing leaves the dirty bit (incompatible bit 0) set.
    const bytes = readFileSync(dirty);
    bytes[79] = bytes[79]! | 1;
    writeFileSync(dirty, bytes);
    for (const file of [lazy, dirty]) {
      const { ours, theirs } = await both(
        [
          { op: 'add', name: 'n', granularity: 8192 },
          { op: 'merge', name: 'n', source: 'b0' },
        ],
        file,
      );
      expect(seen(ours)).toEqual(seen(theirs));
      expect(qemuInfo(ours, 'qcow2')['dirty-flag']).toBe(false);
      expect(qemuCheck(ours, 'qcow2').status).toBe(0);
    }
    const withData = at('data-file.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${at('data-file.raw')}`, withData, '8M']);
    await withStorage(FileStorage.open(withData, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op: 'add', name: 'd' }], { resolver: fileResolver }));
    expect(qemuBitmapList(withData).map((b) => b.name)).toEqual(['d']);
    expect(qemuCheck(withData, 'qcow2').status).toBe(0);
    // A bitmap of 256 MiB (1 TiB at 512 bytes a bit) is added without holding its bits; merging it is refused, bounded.
    const big = at('big.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', big, '1T']);
    await withStorage(FileStorage.open(big, { readOnly: false }), (s) =>
      editQcow2Bitmaps(s, [
        { op: 'add', name: 'fine', granularity: 512 },
        { op: 'add', name: 'coarse' },
      ]),
    );
    expect(qemuBitmapList(big).map((b) => [b.name, b.granularity])).toEqual([
      ['fine', 512],
      ['coarse', 65536],
    ]);
    expect(qemuCheck(big, 'qcow2').status).toBe(0);
    await expect(withStorage(FileStorage.open(big, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op: 'merge', name: 'coarse', source: 'fine' }]))).rejects.toMatchObject({ code: 'ERR_IMG_UNSUPPORTED' });
  });

  it('refuses to use a bitmap left in use, as qemu-img does, but removes it', async () => {
    const file = base();
    setQcow2BitmapInUse(file, 'b0');
    for (const op of ['clear', 'enable', 'disable'] as const) {
      const q = qemuImg(['bitmap', `--${op}`, file, 'b0'], { allowFail: true });
      expect(q.stderr).toContain("Bitmap 'b0' is inconsistent and cannot be used");
      await expect(withStorage(FileStorage.open(file, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op, name: 'b0' }]))).rejects.toMatchObject({
        code: 'ERR_IMG_INVALID_ARG',
        message: expect.stringContaining("Bitmap 'b0' is inconsistent and cannot be used"),
      });
    }
    await expect(withStorage(FileStorage.open(file, { readOnly: false }), (s) => editQcow2Bitmaps(s, [{ op: 'merge', name: 'b1', source: 'b0' }]))).rejects.toMatchObject({ message: expect.stringContaining("Bitmap 'b0' is inconsistent") });
    const { ours, theirs } = await both([{ op: 'remove', name: 'b0' }], file);
    expect(seen(ours)).toEqual(seen(theirs));
    expect(qemuCheck(ours, 'qcow2').status).toBe(0);
  });
});
