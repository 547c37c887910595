// img bitmap and img-convert --bitmaps run as a user would, each against the same qemu-img command on a copy: the
// bitmaps qemu-img info lists, their bits through qemu-nbd -B + nbdinfo --map, qemu-img check. And img's own writes
// (the Disk API, img-convert -n) keep enabled bitmaps current, granule for granule.
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { openQcow2 } from '@img/qcow2';
import { describeWith, qemuBitmapList, qemuCheck, qemuDirtyBitmap, qemuImg, qemuIo, setQcow2BitmapInUse, tempDir, type BitmapRun } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-bitmap-cli-');
afterAll(() => tmp.cleanup());
const at = (name: string) => join(tmp.path, name);

function seen(file: string) {
  return qemuBitmapList(file).map((b) => ({ ...b, runs: b.flags.includes('in-use') ? [] : qemuDirtyBitmap(file, b.name) }));
}

/** A 16 MiB image with data, and bitmaps b0 (64 KiB, dirty twice) and b1 (4 KiB, disabled, dirty once). */
function base(name = 'base.qcow2'): string {
  const file = at(name);
  qemuImg(['create', '-q', '-f', 'qcow2', file, '16M']);
  qemuIo(file, 'qcow2', ['write -P 1 0 1M']);
  qemuImg(['bitmap', '--add', '-g', '64k', file, 'b0']);
  qemuImg(['bitmap', '--add', '-g', '4k', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 2 2M 5000']);
  qemuImg(['bitmap', '--disable', file, 'b1']);
  qemuIo(file, 'qcow2', ['write -P 3 10M 100k']);
  return file;
}

/** The runs a bitmap of `size` bytes at `granularity` has when exactly the granules that `ranges` touch are dirty. */
function expectedRuns(size: number, granularity: number, ranges: Array<[number, number]>): BitmapRun[] {
  const dirty = new Set<number>();
  for (const [offset, length] of ranges) for (let g = Math.floor(offset / granularity); g * granularity < offset + length; g++) dirty.add(g);
  const out: BitmapRun[] = [];
  for (let g = 0; g * granularity < size; g++) {
    const d = dirty.has(g);
    const last = out[out.length - 1];
    const length = Math.min(granularity, size - g * granularity);
    if (last && last[2] === d) last[1] += length;
    else out.push([g * granularity, length, d]);
  }
  return out;
}

describeWith('nbdinfo', 'img bitmap and img-convert --bitmaps against qemu-img', () => {
  const cases: Array<[string, string[], string[]]> = [
    ['--add -g 128k --disabled', ['--add', '-g', '128k', '--disabled'], ['--add', '-g', '128k', '--disable']],
    ['--add --merge b0 --merge b1 --disable, in order', ['--add', '--merge', 'b0', '--merge', 'b1', '--disable'], ['--add', '--merge', 'b0', '--merge', 'b1', '--disable']],
  ];
  for (const [title, ours, theirs] of cases) {
    it(`${title}: the same as qemu-img bitmap`, () => {
      const file = base();
      copyFileSync(file, at('ours.qcow2'));
      copyFileSync(file, at('theirs.qcow2'));
      const r = run('img', ['bitmap', ...ours, at('ours.qcow2'), 'n']);
      expect(r.status, r.stderr).toBe(0);
      qemuImg(['bitmap', ...theirs, at('theirs.qcow2'), 'n']);
      expect(seen(at('ours.qcow2'))).toEqual(seen(at('theirs.qcow2')));
      expect(qemuCheck(at('ours.qcow2'), 'qcow2').status).toBe(0);
    });
  }

  it('--remove, --clear, --enable on one bitmap in one call, and --merge from another image (-b -F)', () => {
    const file = base();
    const other = at('other.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', other, '16M']);
    qemuImg(['bitmap', '--add', '-g', '32k', other, 'x']);
    qemuIo(other, 'qcow2', ['write 7M 70000']);
    for (const args of [['--clear', '--enable', '--merge', 'x', '-b', other, '-F', 'qcow2'], ['--merge', 'x', '-b', other], ['--remove']]) {
      copyFileSync(file, at('ours.qcow2'));
      copyFileSync(file, at('theirs.qcow2'));
      const r = run('img', ['bitmap', ...args, at('ours.qcow2'), 'b1']);
      expect(r.status, r.stderr).toBe(0);
      qemuImg(['bitmap', ...args, at('theirs.qcow2'), 'b1']);
      expect(seen(at('ours.qcow2')), args.join(' ')).toEqual(seen(at('theirs.qcow2')));
      expect(qemuCheck(at('ours.qcow2'), 'qcow2').status).toBe(0);
    }
  });

  it("refuses what qemu-img bitmap refuses, in qemu-img's words, with status 1", () => {
    const file = base();
    const raw = at('plain.raw');
    qemuImg(['create', '-q', '-f', 'raw', raw, '1M']);
    for (const args of [
      [file, 'b0'],
      ['--add', file],
      ['-g', '64k', '--remove', file, 'b0'],
      ['-b', file, '--add', file, 'b9'],
      ['--merge', 'b0', '-F', 'qcow2', file, 'b1'],
      ['--add', '-g', 'abc', file, 'b9'],
      ['--add', '-g', '1000', file, 'b9'],
      ['--add', file, 'b0'],
      ['--clear', file, 'b9'],
      ['--merge', 'b9', file, 'b0'],
      ['--remove', '-f', 'raw', raw, 'b0'],
    ]) {
      copyFileSync(file, at('refused.qcow2'));
      const q = qemuImg(['bitmap', ...args.map((a) => (a === file ? at('refused.qcow2') : a))], { allowFail: true });
      const ours = run('img', ['bitmap', ...args]);
      expect(ours.status, args.join(' ')).toBe(1);
      expect(q.status, args.join(' ')).toBe(1);
      // qemu-img's sentence, past its "qemu-img: " and what names the file.
      const words = q.stderr
        .split('\n')[0]!
        .replace(/^qemu-img: /, '')
        .replace(/^.*failed: /, '')
        .replace(/\.? You may use.*$/, '');
      expect(ours.stderr, args.join(' ')).toContain(words.replace(/^Invalid granularity specified$/, 'Invalid granularity specified.'));
    }
  });

  it('img-convert --bitmaps copies every bitmap as qemu-img convert --bitmaps does', () => {
    const file = base();
    let r = run('img-convert', ['-q', '--bitmaps', '-O', 'qcow2', file, at('conv-ours.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    qemuImg(['convert', '--bitmaps', '-O', 'qcow2', file, at('conv-theirs.qcow2')]);
    expect(seen(at('conv-ours.qcow2'))).toEqual(seen(at('conv-theirs.qcow2')));
    expect(seen(at('conv-ours.qcow2')).map((b) => b.name)).toEqual(['b0', 'b1']);
    expect(qemuCheck(at('conv-ours.qcow2'), 'qcow2').status).toBe(0);
    expect(qemuImg(['compare', file, at('conv-ours.qcow2')], { allowFail: true }).status).toBe(0);
    // Into an existing image (-n) too.
    qemuImg(['create', '-q', '-f', 'qcow2', at('into.qcow2'), '16M']);
    r = run('img', ['convert', '-q', '-n', '--bitmaps', '-O', 'qcow2', file, at('into.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    expect(seen(at('into.qcow2'))).toEqual(seen(at('conv-theirs.qcow2')));
  });

  it('img-convert --bitmaps refuses other formats and inconsistent bitmaps as qemu-img does; --skip-broken-bitmaps skips them', () => {
    const file = base();
    const refusals: Array<[string[], string]> = [
      [['--bitmaps', '-O', 'raw', file, at('x.raw')], "Format driver 'raw' does not support bitmaps"],
      [['--bitmaps', '-O', 'vpc', file, at('x.vhd')], "Format driver 'vpc' does not support bitmaps"],
      [['--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10', file, at('x.qcow2')], "Format driver 'qcow2' does not support bitmaps"],
      [['--skip-broken-bitmaps', '-O', 'qcow2', file, at('x.qcow2')], 'Use of --skip-broken-bitmaps requires --bitmaps'],
    ];
    for (const [args, words] of refusals) {
      const q = qemuImg(['convert', ...args], { allowFail: true });
      expect(q.stderr).toContain(words);
      const ours = run('img-convert', args);
      expect(ours.status, args.join(' ')).toBe(1);
      expect(ours.stderr).toContain(words);
    }
    // Left in use, as a writer that stopped without closing the image leaves it.
    const broken = at('broken.qcow2');
    copyFileSync(file, broken);
    setQcow2BitmapInUse(broken, 'b0');
    const q = qemuImg(['convert', '--bitmaps', '-O', 'qcow2', broken, at('b-theirs.qcow2')], { allowFail: true });
    expect(q.stderr).toContain("Cannot copy inconsistent bitmap 'b0'");
    let r = run('img-convert', ['--bitmaps', '-O', 'qcow2', broken, at('b-ours.qcow2')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("Cannot copy inconsistent bitmap 'b0'");
    expect(existsSync(at('b-ours.qcow2'))).toBe(false);
    qemuImg(['convert', '--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', broken, at('b-theirs.qcow2')]);
    r = run('img-convert', ['-q', '--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', broken, at('b-ours.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("Skipping inconsistent bitmap 'b0'");
    expect(seen(at('b-ours.qcow2'))).toEqual(seen(at('b-theirs.qcow2')));
    expect(seen(at('b-ours.qcow2')).map((b) => b.name)).toEqual(['b1']);
  });
});

describeWith('nbdinfo', "img's writes keep enabled bitmaps current", () => {
  it('through the Disk API: exactly the granules written, zeroed or discarded are dirty; a disabled bitmap stays as it was', async () => {
    const file = base('disk-api.qcow2');
    const before = seen(file);
    const ranges: Array<[number, number]> = [
      [100_000, 1000],
      [4 * 2 ** 20 - 10, 20],
      [6 * 2 ** 20, 300_000],
    ];
    const disk = await openQcow2(await FileStorage.open(file, { readOnly: false }), { readOnly: false });
    await disk.write(ranges[0]![0], new Uint8Array(ranges[0]![1]).fill(7));
    await disk.write(ranges[1]![0], new Uint8Array(ranges[1]![1]).fill(8));
    await disk.writeZeroes(ranges[2]![0], ranges[2]![1]);
    await disk.discard(12 * 2 ** 20, 65536);
    ranges.push([12 * 2 ** 20, 65536]);
    await disk.close();
    const after = seen(file);
    expect(after.map((b) => [b.name, b.flags])).toEqual([
      ['b0', ['auto']],
      ['b1', []],
    ]);
    // b0 had [2M, 2M+5000) and [10M, 10M+100k) dirty before.
    expect(after[0]!.runs).toEqual(expectedRuns(16 * 2 ** 20, 65536, [[2 * 2 ** 20, 5000], [10 * 2 ** 20, 100 * 1024], ...ranges]));
    expect(after[1]!.runs).toEqual(before[1]!.runs);
    expect(qemuCheck(file, 'qcow2').status).toBe(0);
  });

  it('through img-convert -n: the bitmap marks the range written, as qemu-img convert -n marks it', () => {
    const src = at('eight.raw');
    qemuImg(['create', '-q', '-f', 'raw', src, '8M']);
    qemuIo(src, 'raw', ['write -P 5 1M 100k']);
    qemuImg(['create', '-q', '-f', 'qcow2', at('n-ours.qcow2'), '16M']);
    qemuImg(['bitmap', '--add', '-g', '64k', at('n-ours.qcow2'), 'b0']);
    copyFileSync(at('n-ours.qcow2'), at('n-theirs.qcow2'));
    const r = run('img-convert', ['-q', '-n', '-O', 'qcow2', src, at('n-ours.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    qemuImg(['convert', '-n', '-O', 'qcow2', src, at('n-theirs.qcow2')]);
    expect(seen(at('n-ours.qcow2'))).toEqual(seen(at('n-theirs.qcow2')));
    expect(seen(at('n-ours.qcow2'))[0]!.runs).toEqual(expectedRuns(16 * 2 ** 20, 65536, [[0, 8 * 2 ** 20]]));
  });
});
